"""Whether a cell's accuracy passes: the default criteria per precision (and for detectors), and the
verdict with a message that says by how much a criterion was missed. Plain arithmetic on ``Accuracy``.
"""

from __future__ import annotations

from collections.abc import Mapping

from deploybench.spec import Accuracy, DeployBenchError

# Default pass criteria per precision. fp32 must match the fp32 reference to float rounding:
# atol 1e-4 holds for CNN logits of order 1-10 (reordered sums differ by ~1e-6 relative). Lower
# precisions change every value, so they are judged on what a user sees: the direction of the
# output (cosine) and the predicted class (top-1 agreement).
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"atol": 1e-4, "cosine": 0.99999},
    "fp16": {"cosine": 0.999, "top1_agreement": 0.98},
    "bf16": {"cosine": 0.99, "top1_agreement": 0.95},
    "int8": {"cosine": 0.98, "top1_agreement": 0.90},
}

# A detector's raw outputs (score heatmaps, box distances in pixels) are not what a user sees: a
# detector is judged on the drop of its mAP@0.5 against the reference's (``map_drop``: reference
# minus cell, <=). fp32 must reproduce the reference's mAP; lower precisions may lose a little.
DETECTION_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"map_drop": 0.005},
    "fp16": {"map_drop": 0.01},
    "bf16": {"map_drop": 0.02},
    "int8": {"map_drop": 0.03},
}

def check_tolerance(accuracy: Accuracy, precision: str, overrides: Mapping[str, float] | None = None
                    ) -> tuple[bool, str]:
    """(passed, message): ``accuracy`` against ``TOLERANCES[precision]`` updated by ``overrides``.

    A detector's accuracy (one with ``per_output["detection"]``) is judged against
    ``DETECTION_TOLERANCES[precision]`` instead: its mAP@0.5 drop against the reference.

    Keys: ``atol`` (max_abs_error <=), ``rtol`` (max_rel_error <=), ``cosine`` (>=),
    ``top1_agreement`` (>=), ``metric_value`` (>=), ``map_drop`` (a detector's mAP@0.5 drop <=). A
    figure the accuracy lacks, or a key set to None, is not judged. The failure message names each criterion missed and by how much.
    """
    if precision not in TOLERANCES and not overrides:
        raise DeployBenchError(f"no tolerance for precision {precision!r}; choose from {', '.join(TOLERANCES)} "
                               "or pass overrides")
    detection = accuracy.per_output.get("detection") or {}
    defaults = DETECTION_TOLERANCES if "map50_drop" in detection else TOLERANCES
    rules = {**defaults.get(precision, {}), **dict(overrides or {})}
    unknown = set(rules) - {"atol", "rtol", "cosine", "top1_agreement", "metric_value", "map_drop"}
    if unknown:
        raise DeployBenchError(f"unknown tolerance key(s) {sorted(unknown)}; use atol, rtol, cosine, "
                               "top1_agreement, metric_value, map_drop")
    checks = [("atol", "max_abs_error", "<="), ("rtol", "max_rel_error", "<="), ("cosine", "cosine", ">="),
              ("top1_agreement", "top1_agreement", ">="), ("metric_value", "metric_value", ">="),
              ("map_drop", "map50_drop", "<=")]
    misses, passes = [], []
    for key, field_name, direction in checks:
        if rules.get(key) is None:  # absent, or switched off for this model / run
            continue
        limit = float(rules[key])
        value = detection.get(field_name) if key == "map_drop" else getattr(accuracy, field_name)
        if value is None:
            continue
        good = value <= limit if direction == "<=" else value >= limit
        if good:
            passes.append(f"{field_name} {value:.6g} {direction} {limit:.6g}")
        elif direction == "<=":
            misses.append(f"{field_name} {value:.3g} exceeds {key} {limit:.3g} by {value - limit:.3g} "
                          f"({value / limit:.1f}x)" if limit > 0 else f"{field_name} {value:.3g} exceeds {limit:.3g}")
        else:
            misses.append(f"{field_name} {value:.6g} is below {limit:.6g} by {limit - value:.3g}")
    if misses:
        return False, f"{precision}: " + "; ".join(misses)
    return True, f"{precision}: " + ("; ".join(passes) if passes else "nothing to judge")


__all__ = ["DETECTION_TOLERANCES", "TOLERANCES", "check_tolerance"]
