"""The MLflow sink against a real local tracking server (SQLite store); skipped when mlflow is missing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from deploybench.spec import Accuracy, Cell, DeployBenchError, LatencyStats, Result


def test_missing_mlflow_is_one_line_with_the_fix(monkeypatch):
    from deploybench.harness.report import mlflow_sink

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(DeployBenchError, match=r"pip install deploybench\[mlflow\]"):
        mlflow_sink.log_matrix([], {}, "http://127.0.0.1:1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path):
    """A real ``mlflow server`` on a free loopback port with a SQLite backend store; stopped afterwards."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install deploybench[mlflow])")
    port = _free_port()
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group: it and its workers
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _ok(model: str, backend: str, median: float, peak: float, error: float, metric: float) -> Result:
    latency = LatencyStats(n=30, mean=median, median=median, p90=median * 1.1, p95=median * 1.2, p99=median * 1.5,
                           min=median * 0.9, max=median * 2, stdev=median * 0.1, cv=0.1, iqr=median * 0.08)
    return Result(Cell(model, "onnx", backend, "fp32"), latency_ms=latency, peak_rss_mb=peak, throughput_ips=1000 / median,
                  accuracy=Accuracy(max_abs_error=error, metric="top1", metric_value=metric, reference="torch fp32"),
                  samples_ms=[median] * 3)


@pytest.mark.slow  # the server alone takes 20-60 s to start (SQLite migrations) on 2 shared cores
def test_log_matrix_to_a_real_tracking_server(tracking_server):
    from mlflow import MlflowClient

    from deploybench.harness.report.mlflow_sink import log_matrix

    results = [_ok("digits_cnn", "onnxruntime", 0.25, 180.0, 2e-6, 0.975),
               _ok("digits_cnn", "openvino", 0.5, 260.0, 3e-5, 0.97),
               Result(Cell("digits_cnn", "tflite", "tflite", "fp32"), status="skipped",
                      reason="ai_edge_litert is not installed")]
    machine = {"machine_id": "ci-1", "cpu": "TestCPU", "cores": 2, "os": "Linux"}
    run_ids = log_matrix(results, machine, tracking_server, experiment="deploybench-test")
    assert len(run_ids) == 3 and len(set(run_ids)) == 3

    client = MlflowClient(tracking_uri=tracking_server)
    first = client.get_run(run_ids[0]).data
    assert first.metrics["latency_median_ms"] == pytest.approx(0.25)
    assert first.metrics["latency_p99_ms"] == pytest.approx(0.375)
    assert first.metrics["peak_rss_mb"] == pytest.approx(180.0)
    assert first.metrics["max_abs_error"] == pytest.approx(2e-6)
    assert first.metrics["metric_top1"] == pytest.approx(0.975)
    assert first.params["backend"] == "onnxruntime" and first.params["machine.machine_id"] == "ci-1"
    assert first.tags["deploybench.status"] == "ok"
    second = client.get_run(run_ids[1]).data
    assert second.metrics["latency_median_ms"] == pytest.approx(0.5) and second.params["backend"] == "openvino"
    skipped = client.get_run(run_ids[2])
    assert skipped.data.tags["deploybench.status"] == "skipped"
    assert skipped.data.tags["deploybench.reason"] == "ai_edge_litert is not installed"
    assert "latency_median_ms" not in skipped.data.metrics
    artifacts = [a.path for a in client.list_artifacts(run_ids[0])]
    assert artifacts == ["result.json"]
    parent_id = first.tags["deploybench.parent"]
    assert [a.path for a in client.list_artifacts(parent_id)] == ["results.json"]
    experiment = client.get_experiment_by_name("deploybench-test")
    assert len(client.search_runs([experiment.experiment_id])) == 4  # the matrix run and three cells
