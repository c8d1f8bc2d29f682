"""What accuracy-aware int8 (``int8ac``) holds and on which samples: shared by the OpenVINO pass (NNCF's
``quantize_with_accuracy_control``) and the ONNX Runtime pass (``onnx_int8``'s sensitivity search).

Plain int8 quantizes every layer it can; int8ac keeps the layers that break the int8 tolerance in
floating point. It holds the very criteria the harness judges an int8 cell by (``spec.tolerances``:
cosine >= 0.98 to the fp32 reference, top-1 agreement >= 0.90 for a classifier, a model's own int8
overrides included; a detector's mAP@0.5 drop, ``map_drop``, in their place, as the harness judges a
detector), on validation samples that neither calibration nor the harness's judgement sees: a quantizer
tuned on the samples it is judged on would pass by construction. Since the judge's samples are other
samples, a quarter of each criterion's headroom (``HEADROOM_MARGIN``) is held on top.

A detector's validation samples have no ground truth (calibration data is images only), so the
reference's detections at the deployment score threshold stand in for it: ``map_drop`` on them is the
reference's mAP@0.5 minus the quantized model's, both post-processed as the harness does
(``tasks.detection.postprocess``, the eval score threshold for ranking), scored by
``tasks.metrics.mean_average_precision``; ``detection_agreement``'s counts are recorded beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..spec import DeployBenchError, ModelSpec
from ..spec.tolerances import DETECTION_TOLERANCES, TOLERANCES, precision_overrides
from ..tasks.metrics import cosine_similarity
from .calibration import DEFAULT_SAMPLES, RESERVED_PAST_DEFAULT

INT8AC = "int8ac"
VALIDATION_SAMPLES = 64
# How many real samples past DEFAULT_SAMPLES the harness judges a classifier on
# (``harness.measure.accuracy.AGREEMENT_SAMPLES``, which this room cannot import):
# validation starts after them. tests/test_accuracy_aware.py checks the three sets stay apart.
HARNESS_HELD_OUT = 64
# Seeded inputs for a model without real data: apart from calibration's (seed + i, i < n) and the
# judge's (settings.seed, and 1000 + i).
VALIDATION_SEED = 20_000
# The share of each criterion's headroom (1 - limit) held above the limit on the validation samples.
HEADROOM_MARGIN = 0.25
# The criteria a quantizer can hold: the ones measured against the reference. cosine and top-1 agreement
# are bounded by 1 (higher is better); a detector's mAP@0.5 drop by 0 (lower is better).
HELD_CRITERIA = ("cosine", "top1_agreement", "map_drop")
LOWER_IS_BETTER = ("map_drop",)

Outputs = list[np.ndarray]  # one sample's outputs, in the model's output order


def int8_criteria(spec: ModelSpec, overrides: Mapping[str, float | None] | None = None) -> dict[str, float]:
    """The criteria an int8ac artifact of ``spec`` holds: int8's defaults (a detector's: ``map_drop``, as
    ``check_tolerance`` judges a detector) with ``overrides`` (default: the model's own; the harness passes
    the model's and the run's) applied, a criterion set to None not held, restricted to ``HELD_CRITERIA``;
    top-1 agreement only for a classifier and the mAP drop only for a detector, as the harness judges them."""
    if overrides is None:
        overrides = precision_overrides(INT8AC, spec.tolerances)
    defaults = DETECTION_TOLERANCES if spec.task == "detection" else TOLERANCES
    rules = {**defaults[INT8AC], **overrides}
    held = {key: float(rules[key]) for key in HELD_CRITERIA if rules.get(key) is not None}
    if spec.task != "classification":
        held.pop("top1_agreement", None)
    if spec.task != "detection":
        held.pop("map_drop", None)
    if not held:
        raise DeployBenchError(f"model {spec.name!r} switches off every int8 criterion an accuracy-aware quantizer "
                               f"can hold ({', '.join(HELD_CRITERIA)}); int8ac has nothing to keep: use int8")
    return held


@dataclass(frozen=True)
class AccuracyTarget:
    """The criteria to hold (``{"cosine": 0.98, ...}``) and the margin above them on validation samples;
    for ``map_drop`` also how to post-process the outputs: ``output_names`` (the model's output order) and
    ``task_config`` (the detector's, ``tasks.detection.postprocess``'s). ``accuracy_target`` makes one."""

    criteria: Mapping[str, float]
    margin: float = HEADROOM_MARGIN
    output_names: tuple[str, ...] = ()
    task_config: Mapping[str, Any] | None = None

    def __post_init__(self):
        if "map_drop" in self.criteria and (not self.task_config or not self.output_names):
            raise DeployBenchError("map_drop is a detector's criterion: give the AccuracyTarget the detector's "
                                   "output_names and task_config (accuracy_target(spec) does)")

    def required(self, key: str) -> float:
        """The figure to reach on validation samples: the limit moved ``margin`` of its headroom (to 1 for
        a higher-is-better criterion, to 0 for a drop) towards perfect."""
        limit = self.criteria[key]
        if key in LOWER_IS_BETTER:
            return limit - self.margin * limit
        return limit + self.margin * (1.0 - limit)

    def figures(self, outputs: Sequence[Outputs], references: Sequence[Outputs]) -> dict[str, float]:
        """The held figures of ``outputs`` against ``references`` over all samples, as the harness computes
        them: cosine of each whole output (the lowest over outputs), top-1 agreement of the first output."""
        figures: dict[str, float] = {}
        if "cosine" in self.criteria:
            figures["cosine"] = min(cosine_similarity(np.concatenate([o[i] for o in outputs]),
                                                      np.concatenate([r[i] for r in references]))
                                    for i in range(len(references[0])))
        if "top1_agreement" in self.criteria:
            got = np.concatenate([o[0] for o in outputs])
            want = np.concatenate([r[0] for r in references])
            figures["top1_agreement"] = float(np.mean(got.reshape(-1, got.shape[-1]).argmax(-1)
                                                      == want.reshape(-1, want.shape[-1]).argmax(-1)))
        if "map_drop" in self.criteria:
            figures.update(detection_figures(outputs, references, self.output_names, self.task_config or {}))
        return figures

    def margin_of(self, figures: Mapping[str, float]) -> float:
        """The smallest distance of a figure past what is required, in the criterion's good direction: >= 0
        when every criterion holds."""
        return min(self.required(key) - figures[key] if key in LOWER_IS_BETTER else figures[key] - self.required(key)
                   for key in self.criteria)

    def describe(self, figures: Mapping[str, float]) -> str:
        return ", ".join(f"{key} {figures[key]:.4f} (holds {'<=' if key in LOWER_IS_BETTER else '>='} "
                         f"{self.required(key):.4f})" for key in self.criteria)


def accuracy_target(spec: ModelSpec, criteria: Mapping[str, float] | None = None,
                    margin: float = HEADROOM_MARGIN) -> AccuracyTarget:
    """The target an int8ac converter of ``spec`` holds: ``criteria`` (default ``int8_criteria(spec)``),
    with the detector's post-processing when the mAP drop is among them."""
    criteria = dict(criteria or int8_criteria(spec))
    if "map_drop" not in criteria:
        return AccuracyTarget(criteria, margin)
    return AccuracyTarget(criteria, margin, tuple(spec.output_names), dict(spec.task_config))


def detection_figures(outputs: Sequence[Outputs], references: Sequence[Outputs], names: Sequence[str],
                      config: Mapping[str, Any]) -> dict[str, float]:
    """A detector's figures on unlabeled samples, the reference's detections at the deployment threshold
    standing in for ground truth: ``map_drop`` (reference's mAP@0.5 minus the outputs', each ranked at the
    eval threshold, as ``harness.measure.detection`` does), ``map50``, ``reference_map50`` and
    ``detection_agreement``'s ``matched`` / ``lost`` / ``added`` at the deployment threshold."""
    from ..tasks.detection import postprocess, score_thresholds
    from ..tasks.metrics import detection_agreement, mean_average_precision

    ranking, deployed = score_thresholds(config)

    def detect(sample: Outputs, threshold: float):
        return postprocess(dict(zip(names, sample)), config, score_threshold=threshold)

    truth = [detect(r, deployed) for r in references]
    reference_map = mean_average_precision([detect(r, ranking) for r in references], truth)["map50"]
    found_map = mean_average_precision([detect(o, ranking) for o in outputs], truth)["map50"]
    agreement = detection_agreement([detect(o, deployed) for o in outputs], truth)
    return {"map_drop": reference_map - found_map, "map50": found_map, "reference_map50": reference_map,
            **{key: float(agreement[key]) for key in ("matched", "lost", "added")}}


def per_sample_cosine(outputs: Sequence[Outputs], references: Sequence[Outputs]) -> list[float]:
    """Each sample's lowest output cosine: a smooth per-sample score for ranking layers."""
    return [min(cosine_similarity(o, r) for o, r in zip(out, ref)) for out, ref in zip(outputs, references)]


def validation_samples(spec: ModelSpec, calibration_size: int = DEFAULT_SAMPLES, count: int = VALIDATION_SAMPLES
                       ) -> tuple[list[dict[str, np.ndarray]], str]:
    """(samples, where they came from): ``count`` inputs that calibration never saw and the harness does
    not judge on. Real data past both (``calibration_data``), else seeded random inputs."""
    if count < 1:
        raise DeployBenchError(f"validation_size {count} for model {spec.name!r}: use at least 1")
    # a calibration set larger than the default ends RESERVED_PAST_DEFAULT samples later (calibration.py)
    skip = calibration_size + RESERVED_PAST_DEFAULT if calibration_size > DEFAULT_SAMPLES else \
        DEFAULT_SAMPLES + HARNESS_HELD_OUT
    if spec.calibration_data is not None:
        samples = list(spec.calibration_data(skip + count))[skip:skip + count]
        if samples:
            return ([{k: np.asarray(v) for k, v in s.items()} for s in samples],
                    f"real: {len(samples)} samples past the {skip} used for calibration and judgement")
    samples = [spec.make_inputs(seed=VALIDATION_SEED + i) for i in range(count)]
    return samples, f"random: {count} seeded inputs (model has no calibration data past {skip} samples)"


def reference_outputs(spec: ModelSpec, samples: Sequence[Mapping[str, np.ndarray]],
                      fp32_run: Callable[[Mapping[str, np.ndarray]], Outputs]) -> tuple[list[Outputs], str]:
    """(outputs per sample, which reference): fp32 PyTorch eager as the harness judges, else ``fp32_run``
    (the fp32 graph on the quantizing runtime, for a model file without a PyTorch source)."""
    if spec.factory is None:
        return [fp32_run(sample) for sample in samples], "fp32 graph"
    import torch

    module = spec.build()
    outputs = []
    with torch.inference_mode():
        for sample in samples:
            raw = module(*(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in spec.input_names))
            values = list(raw.values()) if isinstance(raw, Mapping) else list(raw) if isinstance(raw, (list, tuple)) \
                else [raw]
            outputs.append([v.detach().float().numpy() if v.dtype.is_floating_point else v.numpy() for v in values])
    return outputs, "torch fp32 eager"


def describe(target: AccuracyTarget, source: str, reference: str, before: Mapping[str, float],
             after: Mapping[str, float], kept: Sequence[str], method: str) -> dict[str, Any]:
    """What an int8ac converter records in its artifact's metadata (``ops_in_fp32`` the reports show)."""
    return {
        "quantization": (f"accuracy-aware int8 ({method}): {len(kept)} op(s) kept in fp32; validation "
                         f"{'met' if target.margin_of(after) >= 0 else 'NOT met'}: {target.describe(after)}; "
                         f"plain int8 there: {target.describe(before)}"),
        "ops_in_fp32": list(kept), "accuracy_criteria": dict(target.criteria), "accuracy_margin": target.margin,
        "validation": source, "validation_reference": reference,
        "validation_plain_int8": dict(before), "validation_int8ac": dict(after),
        "validation_met": target.margin_of(after) >= 0,
    }


__all__ = ["AccuracyTarget", "HEADROOM_MARGIN", "INT8AC", "VALIDATION_SAMPLES", "accuracy_target", "describe",
           "detection_figures", "int8_criteria", "per_sample_cosine", "reference_outputs", "validation_samples"]
