"""Whether a cell's accuracy passes: the default criteria per precision (and for detectors), and the
verdict with a message that says by how much a criterion was missed. Plain arithmetic on ``Accuracy``.
"""

from __future__ import annotations

from collections.abc import Mapping

from deploybench.spec import Accuracy, DeployBenchError
from deploybench.spec.tolerances import DETECTION_TOLERANCES, JUDGED_AS, TOLERANCES, precision_overrides

# The tables live in ``spec.tolerances`` (an accuracy-aware quantizer holds the same criteria); they are
# re-exported here, where the harness judges by them.


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


__all__ = ["DETECTION_TOLERANCES", "JUDGED_AS", "TOLERANCES", "check_tolerance", "precision_overrides"]
