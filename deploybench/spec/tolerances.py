"""The default accuracy criteria per precision: shared data, so the harness judges a cell by them and an
accuracy-aware quantizer (a converter, which never imports the harness) holds the very same ones."""

from __future__ import annotations

from collections.abc import Mapping

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

# A precision judged by another's criteria. Accuracy-aware int8 (``int8ac``) exists to meet the int8
# tolerance that plain int8 misses, so it is held to int8's, a model's int8 overrides included.
JUDGED_AS: dict[str, str] = {"int8ac": "int8"}
for _precision, _base in JUDGED_AS.items():
    TOLERANCES[_precision] = TOLERANCES[_base]
    DETECTION_TOLERANCES[_precision] = DETECTION_TOLERANCES[_base]


def precision_overrides(precision: str, *override_maps: Mapping[str, Mapping[str, float | None]]
                        ) -> dict[str, float | None]:
    """The criteria that override ``precision``'s defaults, merged from ``override_maps`` in order (a
    model's own, then a run's); within each map the criteria of the precision it is judged as come first,
    so ``{"int8": {"top1_agreement": None}}`` also holds for ``int8ac`` unless ``int8ac`` says otherwise."""
    base = JUDGED_AS.get(precision)
    merged: dict[str, float | None] = {}
    for overrides in override_maps:
        if base is not None:
            merged.update(overrides.get(base, {}))
        merged.update(overrides.get(precision, {}))
    return merged


__all__ = ["DETECTION_TOLERANCES", "JUDGED_AS", "TOLERANCES", "precision_overrides"]
