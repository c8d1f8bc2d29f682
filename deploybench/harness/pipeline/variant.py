"""What a cell changes in its model and its conversion beyond format and precision: a structured prune amount
(``Cell.prune``) and an int8 calibration size (``Cell.calibration``).

The pruned model is a model of its own (other weights, other shapes), so its conversions are cache entries
of their own: the cache keys a conversion by the model's fingerprint. The reference a cell is judged
against stays the session's unpruned model, which is the point of measuring pruning at all.
"""

from __future__ import annotations

from typing import Any

from deploybench.spec import INT8_PRECISIONS, Cell, ModelSpec, NotSupported

# The pruning a prune amount runs: whole conv channels, so the artifact and the work shrink (zeroed weights
# would leave both as they are on every dense backend measured here).
PRUNE_METHOD = "structured"

# A few pruned models per worker: the cells of one prune amount (formats x backends x precisions) share one.
_PRUNED: dict[tuple[int, float], tuple[ModelSpec, ModelSpec]] = {}
_KEEP = 4


def cell_model(spec: ModelSpec, cell: Cell) -> ModelSpec:
    """The model the cell converts: ``spec`` itself, or ``spec`` pruned by ``cell.prune``. A model file has no
    network to prune: that cell is a skip that says so."""
    if not cell.prune:
        return spec
    if spec.factory is None:
        raise NotSupported(f"{spec.name} is a {spec.source_format} file; pruning needs its PyTorch "
                           "network (give the model as a zoo name or file.py:factory)")
    key = (id(spec), cell.prune)
    if key not in _PRUNED:
        from deploybench.converters.prepare import optimize_model_for_deployment

        prepared = optimize_model_for_deployment(spec, "onnx", fuse=False, prune=cell.prune, prune_method=PRUNE_METHOD)
        if len(_PRUNED) >= _KEEP:
            _PRUNED.pop(next(iter(_PRUNED)))
        _PRUNED[key] = (spec, prepared.spec)  # the spec is kept so its id() is not reused while cached
    return _PRUNED[key][1]


def calibration_options(cell: Cell) -> dict[str, Any]:
    """The converter option that sizes the cell's calibration set; none for the converter's default. A size
    on a precision or a format that does not calibrate is a skip that says so (the planner never makes one;
    a results file or an API caller can)."""
    from deploybench.converters.calibration import CALIBRATION_SIZE_OPTION, DEFAULT_SAMPLES

    if not cell.calibration:
        return {}
    if cell.precision not in INT8_PRECISIONS:
        raise NotSupported(f"{cell.precision} is not calibrated; a calibration size applies to "
                           f"{' and '.join(INT8_PRECISIONS)} cells")
    option = CALIBRATION_SIZE_OPTION.get(cell.format)
    if option is None:
        raise NotSupported(f"the {cell.format} converter does not calibrate int8; its calibration "
                           "size cannot be chosen")
    # the default size asked for by name is the default's artifact: one cache entry, not two
    return {} if cell.calibration == DEFAULT_SAMPLES else {option: cell.calibration}


__all__ = ["PRUNE_METHOD", "calibration_options", "cell_model"]
