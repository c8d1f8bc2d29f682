"""Agreement of a cell's outputs with a reference run, the task metric, and the tolerances per precision.

Every backend is fed the same seeded inputs; the reference is the fp32 PyTorch eager model, or for
a bring-your-own artifact with no PyTorch source, the fp32 run of its own format on its native
backend (``Accuracy.reference`` says which). Errors are computed in float64.

A classifier with real data of its own (``eval_data``, else ``calibration_data``) is compared on
``AGREEMENT_SAMPLES`` real held-out samples instead of seeded noise: Gaussian noise drives an image
network far off its input distribution (mobilenet_v3's logits spread ~140 on noise, ~2 on photo
crops), where absolute errors and int8 ranges calibrated on real data mean little.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from deploybench.harness.measure.tolerance import check_tolerance
from deploybench.spec import Accuracy, DeployBenchError, ModelSpec
from deploybench.tasks.metrics import cosine_similarity

# Relative errors divide by max(|reference|, REL_ERROR_FLOOR * max|reference of that output|):
# an element a thousand times smaller than the output's largest magnitude (a logit near zero)
# would otherwise turn a harmless absolute error into an enormous relative one.
REL_ERROR_FLOOR = 1e-3

# How many seeded samples top-1 agreement is computed over (when no eval set is given): with 64
# samples one disagreement moves it by 1.6 %, fine enough for the thresholds below.
AGREEMENT_SAMPLES = 64
AGREEMENT_SEED = 1000

Infer = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class Reference:
    """The reference run of a model: callable ``inputs -> {name: array}``, with ``name`` for ``Accuracy.reference``."""

    # Every cell of a model asks for the same seeded inputs: each is run once and remembered.
    MEMO_LIMIT = 256

    def __init__(self, infer: Infer, name: str, close: Callable[[], None] | None = None):
        self._infer, self.name, self._close = infer, name, close
        self._memo: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        key = _inputs_key(inputs)
        if key not in self._memo:
            outputs = {name: np.array(value, copy=True) for name, value in self._infer(inputs).items()}
            if len(self._memo) >= self.MEMO_LIMIT:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = outputs
        return dict(self._memo[key])

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


def _inputs_key(inputs: Mapping[str, np.ndarray] | np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha1()
    named = {"": inputs} if isinstance(inputs, np.ndarray) else inputs
    for name, value in named.items():
        array = np.require(value, requirements="C")  # a scalar stays a scalar
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def make_reference(spec: ModelSpec) -> Reference:
    """A ``Reference``: fp32 PyTorch eager for a model with a PyTorch source ("torch fp32 eager"),
    else the fp32 run of the artifact's own format on the first backend that runs it here."""
    if spec.factory is not None:
        module = spec.build()
        names = spec.output_names

        def torch_eager(inputs):
            return torch_outputs(module, inputs, names, spec.input_names)

        return Reference(torch_eager, "torch fp32 eager")
    from deploybench.converters import artifact_from_path
    from deploybench.engines import create_deployer

    engine = create_deployer(artifact_from_path(spec.source_path), precision="fp32")
    return Reference(engine.infer, f"{engine.backend} fp32 ({spec.source_format} file)", engine.close)


def reference_outputs(spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference outputs {name: array} for ``inputs``: fp32 PyTorch eager, or the artifact's own fp32 run."""
    reference = make_reference(spec)
    try:
        return reference(inputs)
    finally:
        reference.close()


def torch_outputs(module, inputs: Mapping[str, np.ndarray] | np.ndarray, output_names, input_names=None
                  ) -> dict[str, np.ndarray]:
    """Run an ``nn.Module`` in fp32 eager mode and name its outputs (tensor, tuple/list or dict)."""
    import torch

    if isinstance(inputs, np.ndarray):
        tensors = [torch.from_numpy(np.require(inputs, requirements="C"))]
    else:
        order = list(input_names) if input_names else list(inputs)
        tensors = [torch.from_numpy(np.require(inputs[n], requirements="C")) for n in order]
    with torch.inference_mode():
        raw = module(*tensors)
    if isinstance(raw, Mapping):
        values = [raw[n] for n in output_names] if all(n in raw for n in output_names) else list(raw.values())
    elif isinstance(raw, (list, tuple)):
        values = list(raw)
    else:
        values = [raw]
    names = list(output_names) if len(output_names) == len(values) else [f"output_{i}" for i in range(len(values))]
    out = {}
    for name, value in zip(names, values):
        array = value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) and \
            value.dtype.is_floating_point else np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor)
                                                          else value)
        out[name] = array
    return out


def compare_outputs(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
                    ) -> dict[str, dict[str, float]]:
    """Per output name: max_abs_error, mean_abs_error, max_rel_error, cosine, rtol_to_pass.

    Outputs are matched by name, or by position when the names differ (an artifact that renamed
    them). ``rtol_to_pass`` is the smallest rtol with which ``numpy.allclose(out, ref, rtol, atol=0)``
    holds (infinite if a reference zero is missed); with rtol=0 the smallest passing atol is
    ``max_abs_error``.
    """
    pairs = _pair_outputs(outputs, reference)
    report = {}
    for name, (got, want) in pairs.items():
        got64 = np.asarray(got, dtype=np.float64)
        want64 = np.asarray(want, dtype=np.float64)
        if got64.shape != want64.shape:
            if got64.size == want64.size:
                got64 = got64.reshape(want64.shape)
            else:
                raise DeployBenchError(f"output {name!r} has shape {list(got64.shape)}, the reference "
                                       f"{list(want64.shape)}: the cell computes something else")
        diff = np.abs(got64 - want64)
        magnitude = np.abs(want64)
        if diff.size == 0:
            report[name] = {"max_abs_error": 0.0, "mean_abs_error": 0.0, "max_rel_error": 0.0, "cosine": 1.0,
                            "rtol_to_pass": 0.0}
            continue
        floor = REL_ERROR_FLOOR * float(magnitude.max()) if magnitude.size else 0.0
        denominator = np.maximum(magnitude, floor)
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(diff == 0, 0.0, diff / denominator)
            strict = np.where(diff == 0, 0.0, diff / magnitude)
        report[name] = {
            "max_abs_error": float(diff.max()),
            "mean_abs_error": float(diff.mean()),
            "max_rel_error": float(relative.max()),
            "cosine": cosine_similarity(got64, want64),
            "rtol_to_pass": float(strict.max()),
        }
    return report


def top1_agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of rows whose argmax over the last axis equals the reference's."""
    got, want = np.asarray(outputs), np.asarray(reference)
    if got.shape != want.shape or got.ndim == 0 or got.shape[-1] < 2:
        raise DeployBenchError(f"top-1 agreement needs class scores on the last axis; got shapes "
                               f"{list(got.shape)} and {list(want.shape)}")
    return float(np.mean(got.reshape(-1, got.shape[-1]).argmax(-1) == want.reshape(-1, want.shape[-1]).argmax(-1)))


def classification_top1(infer: Infer, spec: ModelSpec) -> dict[str, Any]:
    """{"metric": "top1", "value": accuracy} of ``infer`` on ``spec.eval_data()``, one sample per call."""
    inputs, labels = spec.eval_data()
    labels = np.asarray(labels).ravel()
    correct = 0
    for i in range(len(labels)):
        sample = {name: array[i:i + 1] for name, array in inputs.items()}
        scores = np.asarray(next(iter(infer(sample).values())))
        correct += int(scores.reshape(-1, scores.shape[-1])[0].argmax() == labels[i])
    return {"metric": "top1", "value": correct / max(len(labels), 1), "samples": len(labels)}


def task_metric(infer: Infer, spec: ModelSpec) -> dict[str, Any] | None:
    """The task metric on held-out data ({"metric", "value", ...}), or None when the model has no eval data."""
    if spec.eval_data is None:
        return None
    try:
        from deploybench.tasks import evaluate
    except ImportError:
        evaluate = None
    if evaluate is not None:
        return evaluate(infer, spec)
    if spec.task == "classification":
        return classification_top1(infer, spec)
    return None


# Largest batch the agreement samples are sent in, when the artifact's batch axis is dynamic.
AGREEMENT_MAX_BATCH = 16


def agreement_batches(spec: ModelSpec, engine_inputs=None, samples: int = AGREEMENT_SAMPLES,
                      seed: int = AGREEMENT_SEED, dims: Mapping[str, int] | None = None
                      ) -> list[dict[str, np.ndarray]]:
    """Seeded input batches holding at least ``samples`` items in total.

    When every input of the engine (``engine_inputs``: its TensorSpecs) keeps the model's ``batch``
    axis dynamic, the samples go in batches of up to ``AGREEMENT_MAX_BATCH``; else at the model's
    batch size, one seeded batch after another.
    """
    dims = dict(dims or {})
    batched = bool(engine_inputs) and all(
        t.shape and t.shape[0] == "batch" for t in spec.inputs) and all(
        t.shape and isinstance(t.shape[0], str) for t in engine_inputs)
    if batched:
        dims["batch"] = min(samples, AGREEMENT_MAX_BATCH)
    batches, total, index = [], 0, 0
    while total < samples:
        batch = spec.make_inputs(seed=seed + index, dims=dims)
        batches.append(batch)
        first = next(iter(batch.values()))
        total += int(first.shape[0]) if first.ndim else 1
        index += 1
    return batches


def held_out_samples(spec: ModelSpec | None, samples: int = AGREEMENT_SAMPLES) -> list[dict[str, np.ndarray]]:
    """Up to ``samples`` real inputs of a classifier, one sample each, that int8 was not calibrated on:
    the first of ``eval_data``, else ``calibration_data`` past the samples the converters calibrate
    on. Empty when the model has no real data (a generic model, a bring-your-own file)."""
    if spec is None or spec.task != "classification":
        return []
    if spec.eval_data is not None:
        inputs, _ = spec.eval_data()
        count = min(samples, min(len(a) for a in inputs.values()))
        return [{name: array[i:i + 1] for name, array in inputs.items()} for i in range(count)]
    if spec.calibration_data is not None:
        from deploybench.converters.calibration import DEFAULT_SAMPLES

        return [dict(s) for s in list(spec.calibration_data(DEFAULT_SAMPLES + samples))[DEFAULT_SAMPLES:]]
    return []


def any_batch(engine) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """``engine.infer`` for inputs of any batch size. An engine compiled for a static batch (a cell measures
    the shape it deploys) gets chunks of exactly that batch, the last padded with copies of its final
    sample whose outputs are dropped; the outputs are joined on the batch axis."""
    shapes = engine.static_shapes() if getattr(engine, "compiles_for_shapes", False) else None
    fixed = next((shapes[t.name][axis] for t in engine.inputs for axis, name in t.dynamic_axes.items()
                  if name == "batch" and axis == 0), None) if shapes else None
    if fixed is None:
        return engine.infer

    def infer(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(inputs.values())))
        if count == fixed:
            return engine.infer(inputs)
        pieces: dict[str, list[np.ndarray]] = {}
        for start in range(0, count, fixed):
            chunk = {name: array[start:start + fixed] for name, array in inputs.items()}
            real = len(next(iter(chunk.values())))
            chunk = {name: np.concatenate([a, np.repeat(a[-1:], fixed - real, axis=0)]) for name, a in chunk.items()}
            for name, value in engine.infer(chunk).items():
                pieces.setdefault(name, []).append(np.asarray(value)[:real])
        return {name: np.concatenate(values) for name, values in pieces.items()}

    return infer


def takes(engine, sample: Mapping[str, np.ndarray]) -> bool:
    """False when ``engine`` was compiled for static shapes that ``sample`` misses on an axis other than
    the batch (held-out sequences of 32 tokens cannot run on a cell measured at 16)."""
    shapes = engine.static_shapes() if getattr(engine, "compiles_for_shapes", False) else None
    return not shapes or all(tuple(np.shape(array)[1:]) == tuple(shapes[name][1:])
                             for name, array in sample.items() if name in shapes)


def _run_samples(engine, infer: Callable, reference_run: Callable, samples: list[dict[str, np.ndarray]]
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(engine outputs, reference outputs) for ``samples``, concatenated on the batch axis; the samples go in
    batches of up to ``AGREEMENT_MAX_BATCH`` when the engine keeps a dynamic batch axis, else one by one."""
    batched = all(t.shape and isinstance(t.shape[0], str) for t in getattr(engine, "inputs", ()) or ())
    size = AGREEMENT_MAX_BATCH if batched and getattr(engine, "inputs", None) else 1
    actual: dict[str, list[np.ndarray]] = {}
    expected: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(samples), size):
        chunk = samples[start:start + size]
        batch = {name: np.concatenate([s[name] for s in chunk]) for name in chunk[0]}
        for store, outputs in ((actual, infer(batch)), (expected, reference_run(batch))):
            for name, value in outputs.items():
                store.setdefault(name, []).append(np.asarray(value))
    return ({n: np.concatenate(v) for n, v in actual.items()}, {n: np.concatenate(v) for n, v in expected.items()})


def benchmark_precision(engine, reference_outputs: Mapping[str, np.ndarray] | Callable, inputs,
                        spec: ModelSpec | None = None, tolerance: str | Mapping[str, float] | None = None,
                        dims: Mapping[str, int] | None = None) -> Accuracy:
    """Return an ``Accuracy`` of ``engine`` against the reference: errors, cosine, tolerances that pass, top-1.

    ``reference_outputs`` is either the reference's outputs for ``inputs`` ({name: array}) or a
    ``Reference`` / callable ``inputs -> outputs``; with a callable and a classification ``spec``,
    top-1 agreement is computed over ``AGREEMENT_SAMPLES`` seeded samples, else over ``inputs``; a
    classifier with real data is compared (errors and agreement) on its ``held_out_samples`` instead.
    With ``spec.eval_data``, the task metric (top-1 or mAP) is computed on the held-out set; for a
    detector with a callable reference, ``per_output`` also gets ``detection`` (mAP@0.5 and @0.5:0.95,
    the reference's and the drops) and ``detection_agreement`` (``detection_quality.detection_quality``).
    ``tolerance`` (a precision name of ``TOLERANCES`` or a dict of criteria overriding the engine's
    precision's) makes a miss raise ``DeployBenchError`` with ``check_tolerance``'s message.
    """
    reference_run = reference_outputs if callable(reference_outputs) else None
    infer = any_batch(engine)
    real = held_out_samples(spec) if reference_run is not None else []
    # Held-out data of another shape than the cell's: judged on seeded inputs at the cell's shape only.
    held_out_fits = not real or takes(engine, real[0])
    real = real if held_out_fits else []
    if real:
        actual, expected = _run_samples(engine, infer, reference_run, real)
    else:
        expected = reference_run(inputs) if reference_run else dict(reference_outputs)
        actual = infer(inputs)
    per_output = compare_outputs(actual, expected)
    values = list(per_output.values())
    accuracy = Accuracy(
        max_abs_error=max(v["max_abs_error"] for v in values) if values else None,
        mean_abs_error=float(np.mean([v["mean_abs_error"] for v in values])) if values else None,
        max_rel_error=max(v["max_rel_error"] for v in values) if values else None,
        cosine=min(v["cosine"] for v in values) if values else None,
        atol_to_pass=max(v["max_abs_error"] for v in values) if values else None,
        rtol_to_pass=max(v["rtol_to_pass"] for v in values) if values else None,
        reference=getattr(reference_outputs, "name", None) or ("given outputs" if reference_run is None
                                                               else "given reference"),
        per_output=per_output,
        held_out_inputs=len(real) or None,
    )
    if _is_classifier(spec):
        first = next(iter(_pair_outputs(actual, expected)))
        if reference_run is not None and spec is not None and not real:
            agree, count = 0.0, 0
            for batch in agreement_batches(spec, engine_inputs=getattr(engine, "inputs", None), dims=dims):
                got = next(iter(_pair_outputs(infer(batch), reference_run(batch)).values()))
                rows = int(np.prod(np.shape(got[1])[:-1])) or 1
                agree += top1_agreement(*got) * rows
                count += rows
            accuracy.top1_agreement = agree / count
        else:
            got, want = _pair_outputs(actual, expected)[first]
            accuracy.top1_agreement = top1_agreement(got, want)
    if spec is not None and spec.task == "detection" and reference_run is not None and spec.eval_data is not None:
        from deploybench.harness.measure.detection import detection_quality

        figures = detection_quality(infer, reference_run, spec)
        accuracy.metric, accuracy.metric_value = "map50", figures["detection"]["map50"]
        accuracy.per_output.update(figures)
    elif spec is not None and held_out_fits:
        metric = task_metric(infer, spec)
        if metric:
            accuracy.metric, accuracy.metric_value = metric.get("metric"), float(metric.get("value"))
    if tolerance is not None:
        precision = tolerance if isinstance(tolerance, str) else getattr(engine, "precision", "fp32")
        passed, message = check_tolerance(accuracy, precision, None if isinstance(tolerance, str) else tolerance)
        if not passed:
            raise DeployBenchError(f"{engine!r} misses the tolerance: {message}")
    return accuracy


def _is_classifier(spec: ModelSpec | None) -> bool:
    return spec is not None and spec.task == "classification"


def _pair_outputs(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if set(reference) <= set(outputs):
        return {name: (outputs[name], reference[name]) for name in reference}
    if len(outputs) != len(reference):
        raise DeployBenchError(f"the cell returned outputs {list(outputs)}, the reference {list(reference)}: "
                               "they cannot be matched by name or position")
    return {name: (got, reference[name]) for name, got in zip(reference, outputs.values())}


__all__ = ["AGREEMENT_SAMPLES", "REL_ERROR_FLOOR", "Reference", "benchmark_precision", "compare_outputs",
           "cosine_similarity", "held_out_samples", "make_reference", "reference_outputs", "top1_agreement",
           "torch_outputs"]
