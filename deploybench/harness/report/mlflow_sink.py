"""Log a matrix to MLflow: one parent run per matrix (with the results JSON), one child run per cell.

Off by default; ``deploybench run --mlflow URI`` calls ``log_matrix``. mlflow is an optional extra
(``pip install deploybench[mlflow]``), imported only here, only when logging.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from deploybench.harness.report.matrix import Matrix
from deploybench.spec import DeployBenchError, Result

_STATUS_TO_MLFLOW = {"ok": "FINISHED", "skipped": "FINISHED", "failed": "FAILED", "timeout": "FAILED"}
_MAX_TAG = 5000
_MAX_PARAM = 500
_MACHINE_PARAMS = ("machine_id", "cpu", "cores", "memory_gib", "os", "python")


def _mlflow():
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param, RunTag
    except ImportError:
        raise DeployBenchError("mlflow is not installed: pip install deploybench[mlflow], "
                               "or drop --mlflow") from None
    return MlflowClient, Metric, Param, RunTag


def _metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and space."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", name)


def cell_metrics(result: Result) -> dict[str, float]:
    """The figures of one cell as MLflow metrics ({key: value}); missing and non-finite figures left out."""
    values: dict[str, Any] = {}
    if result.latency_ms is not None:
        lat = result.latency_ms
        values.update({"latency_median_ms": lat.median, "latency_p99_ms": lat.p99, "latency_mean_ms": lat.mean,
                       "latency_iqr_ms": lat.iqr, "latency_cv": lat.cv, "latency_samples": lat.n})
    values.update({"throughput_ips": result.throughput_ips, "load_ms": result.load_ms,
                   "first_inference_ms": result.first_inference_ms, "peak_rss_mb": result.peak_rss_mb,
                   "baseline_rss_mb": result.baseline_rss_mb, "conversion_s": result.conversion_s,
                   "artifact_mb": result.artifact_bytes / 1e6 if result.artifact_bytes is not None else None})
    accuracy = result.accuracy
    if accuracy is not None:
        values.update({"max_abs_error": accuracy.max_abs_error, "mean_abs_error": accuracy.mean_abs_error,
                       "max_rel_error": accuracy.max_rel_error, "cosine": accuracy.cosine,
                       "top1_agreement": accuracy.top1_agreement})
        if accuracy.metric_value is not None:
            values[f"metric_{accuracy.metric or 'value'}"] = accuracy.metric_value
    return {_metric_key(k): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def cell_params(result: Result, machine: Mapping[str, Any] | None) -> dict[str, str]:
    """Cell fields and machine description as MLflow params ({key: str})."""
    params = {**result.cell.to_dict()}
    machine = dict(machine or {})
    machine_id = result.machine_id
    if machine_id and isinstance(machine.get(machine_id), Mapping):  # a merged matrix: {machine_id: machine}
        machine = dict(machine[machine_id])
    for key in _MACHINE_PARAMS:
        value = machine.get(key) if key != "machine_id" else (machine_id or machine.get(key))
        if value not in (None, ""):
            params[f"machine.{key}"] = value
    return {k: str(v)[:_MAX_PARAM] for k, v in params.items()}


def cell_tags(result: Result) -> dict[str, str]:
    tags = {"deploybench.status": result.status, "deploybench.cell": result.cell.id,
            "deploybench.unstable": str(bool(result.unstable)).lower()}
    if result.reason:
        tags["deploybench.reason"] = result.reason[:_MAX_TAG]
    if result.tolerance is not None:
        tags["deploybench.accuracy_passed"] = str(result.tolerance.passed).lower()
    if result.accuracy and result.accuracy.reference:
        tags["deploybench.reference"] = result.accuracy.reference
    return tags


def log_matrix(results: Sequence[Result], machine: Mapping[str, Any] | None, tracking_uri: str,
               experiment: str = "deploybench", settings: Mapping[str, Any] | None = None,
               run_name: str | None = None) -> list[str]:
    """Log every cell as an MLflow run under one parent run of the matrix; return the cell run ids in order.

    Params: the cell fields and the machine; metrics: latency, throughput, memory, size and accuracy
    figures; tags: status, reason; artifacts: the cell's result JSON (each run) and the whole matrix
    JSON (the parent run, whose id is the ``deploybench.parent`` tag of every cell run).
    """
    client_class, metric_class, param_class, tag_class = _mlflow()
    client = client_class(tracking_uri=tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    except Exception as exc:  # mlflow raises its own types for an unreachable or refusing server
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise DeployBenchError(f"cannot reach MLflow at {tracking_uri!r} ({first}); check --mlflow URI") from None
    results = list(results)
    machine = dict(machine or {})
    now = int(time.time() * 1000)
    ok = sum(r.ok for r in results)
    parent = client.create_run(experiment_id, run_name=run_name or f"matrix {time.strftime('%Y-%m-%d %H:%M')}",
                               tags={"deploybench.kind": "matrix"})
    parent_id = parent.info.run_id
    client.log_batch(parent_id,
                     metrics=[metric_class("cells", float(len(results)), now, 0),
                              metric_class("cells_ok", float(ok), now, 0)],
                     params=[param_class(f"machine.{k}", str(machine[k])[:_MAX_PARAM])
                             for k in _MACHINE_PARAMS if machine.get(k) not in (None, "")])
    client.log_dict(parent_id, Matrix(results, machine, dict(settings or {})).to_dict(), "results.json")
    run_ids = []
    for result in results:
        tags = {**cell_tags(result), "deploybench.parent": parent_id, "mlflow.parentRunId": parent_id}
        run = client.create_run(experiment_id, run_name=result.cell.id, tags=tags)
        run_id = run.info.run_id
        client.log_batch(run_id,
                         metrics=[metric_class(k, v, now, 0) for k, v in cell_metrics(result).items()],
                         params=[param_class(k, v) for k, v in cell_params(result, machine).items()])
        client.log_text(run_id, json.dumps(result.to_dict(), indent=1), "result.json")
        client.set_terminated(run_id, status=_STATUS_TO_MLFLOW.get(result.status, "FINISHED"))
        run_ids.append(run_id)
    client.set_terminated(parent_id, status="FINISHED")
    return run_ids
