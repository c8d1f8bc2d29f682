"""Whether the accuracy behind a recommendation is confirmed on held-out data that calibration never saw.

What a results file records: the task metric (``Accuracy.metric``) is computed on the model's
``eval_data``, and an int8 cell's artifact notes say where its calibration samples came from. What it
does not record is whether those two sets share a sample. For a built-in model that is checked here,
by content: every held-out input is hashed and looked up among the first ``CALIBRATION_POOL`` samples
the model's ``calibration_data`` yields (calibration takes the first 64; accuracy-aware int8's
validation takes the next ones), so "confirmed" is a measured statement, not an assumption. Only the
zoo's data functions run here (no model code); a model from a user's file is not imported in this
process, and its recommendation says it was not checked.

A cell judged without a task metric (no labels: ``resnet18``'s seeded head) has agreement with the fp32
reference as its figure. That is confirmed the same way when the cell recorded it on real held-out inputs
(``Accuracy.held_out_inputs``): those inputs, by content, against the calibration samples. On seeded
inputs, or for a model from a user's file, it is not confirmed, and the recommendation says so.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.harness.recommend.figures import CellFigures
from deploybench.harness.report.notes import calibration_source
from deploybench.spec import DeployBenchError

# How many samples of a model's calibration data the held-out set is checked against: the converters'
# 64 calibration samples, the harness's 64 agreement samples and accuracy-aware int8's 64 validation
# samples all come from its first 192.
CALIBRATION_POOL = 256


@dataclass(frozen=True)
class HeldOut:
    """``confirmed``: the accuracy figure is a task metric on ``samples`` held-out samples, none of which
    calibration could have seen; ``text`` says so, or why not, in one sentence."""

    confirmed: bool
    samples: int | None
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"confirmed": self.confirmed, "samples": self.samples, "text": self.text}


def confirm_held_out(figures: CellFigures, settings: Mapping[str, Any] | None = None) -> HeldOut:
    """The ``HeldOut`` of one cell's accuracy figure. ``settings``: the run's settings from the results file
    (a ``--calibration-data`` file is checked when it is still on this machine)."""
    result, drop = figures.result, figures.drop
    spec = _zoo_spec(result.model_ref or result.cell.model)
    if not drop.task_metric:
        inputs = result.accuracy.held_out_inputs if result.accuracy is not None else None
        if not inputs or spec is None:
            return HeldOut(False, None, f"not confirmed on held-out data: judged on {drop.basis}, "
                                        f"{_agreement_data(result.cell.model)}")
        # no labels, but real inputs: the agreement with the fp32 reference is what is confirmed
        # the agreement inputs lie just past the calibration samples, so the pool is exactly what was calibrated on
        return _against_calibration(result, settings, spec, _agreement_digests(spec.name, inputs),
                                    f"{drop.figure} agreement with fp32; no labels, so not a task accuracy",
                                    "held-out real inputs", exact=True)
    if spec is None or spec.eval_data is None:
        return HeldOut(False, None, f"not confirmed here: {drop.figure} was computed on {result.cell.model}'s own "
                                    "held-out data, which is not a built-in model's, so its overlap with "
                                    "calibration was not checked")
    return _against_calibration(result, settings, spec, _held_out_digests(spec.name), drop.figure, "held-out samples")


def _against_calibration(result, settings, spec, held_out: frozenset[str], figure: str, what: str,
                         exact: bool = False) -> HeldOut:
    """Confirmed when none of the ``held_out`` samples (digests) is among those the cell was calibrated on:
    the samples its calibration size takes (``exact``), else the whole pool any calibration may draw from."""
    count = len(held_out)
    source = calibration_source(result)
    if source is None:
        return HeldOut(True, count, f"confirmed on {count} {what} ({figure}); "
                                    f"{result.cell.precision} needs no calibration")
    file = (settings or {}).get("calibration_data")
    if file and Path(str(file)).name in source:
        if not Path(str(file)).is_file():
            return HeldOut(False, count, f"not confirmed: {figure} on {count} held-out samples, but the "
                                         f"calibration file {file} is not on this machine to check it against")
        pool, where = _file_digests(str(file)), f"the {Path(str(file)).name} samples it was calibrated on"
    elif source.startswith("random"):
        return HeldOut(True, count, f"confirmed on {count} {what} ({figure}); calibration used "
                                    "seeded random inputs, so its ranges are not the ones a real deployment gets")
    elif exact:
        pool = _calibrated_digests(spec.name, result.cell.calibration)
        where = f"the {len(pool)} samples it was calibrated on"
    else:
        pool = _calibration_digests(spec.name, _pool_size(result.cell.calibration))
        where = f"the first {len(pool)} samples of its calibration data"
    shared = len(held_out & pool)
    if shared:
        return HeldOut(False, count, f"not confirmed: {shared} of the {count} {what} ({figure}) are "
                                     f"also among {where}")
    return HeldOut(True, count, f"confirmed on {count} {what} ({figure}), none of them among {where}")


def _agreement_data(model: str) -> str:
    """Where the agreement samples of a model without labels came from, as the accuracy stage picks them."""
    spec = _zoo_spec(model)
    if spec is None:
        return "on the inputs the run fed it (no labelled data known here)"
    if spec.calibration_data is not None:
        from deploybench.converters.calibration import DEFAULT_SAMPLES
        from deploybench.harness.measure.accuracy import AGREEMENT_SAMPLES

        return (f"on {AGREEMENT_SAMPLES} real inputs past the {DEFAULT_SAMPLES} calibration ones, without labels: "
                "a drop in task accuracy cannot be measured")
    return "on seeded random inputs: a drop in task accuracy cannot be measured"


def _zoo_spec(ref: str):
    """The built-in model named ``ref`` (its spec only: nothing is built), else None."""
    from deploybench.models import MODELS

    if ref not in MODELS.names():
        return None
    from deploybench.resolve import get_model

    return get_model(ref)


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    """A sample's identity by content: every input's name, dtype, shape (batch axis dropped) and bytes."""
    digest = hashlib.sha1()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        array = array[0] if array.ndim and array.shape[0] == 1 else array
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@functools.cache
def _held_out_digests(model: str) -> frozenset[str]:
    inputs, _ = _zoo_spec(model).eval_data()
    count = min(len(a) for a in inputs.values())
    return frozenset(_digest({name: array[i:i + 1] for name, array in inputs.items()}) for i in range(count))


@functools.cache
def _agreement_digests(model: str, count: int) -> frozenset[str]:
    """The real inputs a model without labels is judged on (``held_out_samples``), by content."""
    from deploybench.harness.measure.accuracy import held_out_samples

    return frozenset(_digest(sample) for sample in held_out_samples(_zoo_spec(model), count))


@functools.cache
def _calibrated_digests(model: str, calibration: int) -> frozenset[str]:
    from deploybench.converters.calibration import DEFAULT_SAMPLES, real_calibration_samples

    return frozenset(_digest(s) for s in real_calibration_samples(_zoo_spec(model), calibration or DEFAULT_SAMPLES))


@functools.cache
def _calibration_digests(model: str, size: int = CALIBRATION_POOL) -> frozenset[str]:
    spec = _zoo_spec(model)
    return frozenset(_digest(sample) for sample in spec.calibration_data(size))


def _pool_size(calibration: int) -> int:
    """How many samples of the calibration data a cell calibrated on ``calibration`` samples may have drawn
    from: a set larger than the default skips the judged and validation samples and ends that much later."""
    from deploybench.converters.calibration import DEFAULT_SAMPLES, RESERVED_PAST_DEFAULT

    return max(CALIBRATION_POOL, calibration + RESERVED_PAST_DEFAULT if calibration > DEFAULT_SAMPLES else 0)


@functools.cache
def _file_digests(path: str) -> frozenset[str]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise DeployBenchError(f"calibration file {path}: cannot be read to check held-out data ({exc})") from None
    count = min((len(a) for a in arrays.values()), default=0)
    return frozenset(_digest({name: array[i:i + 1] for name, array in arrays.items()}) for i in range(count))


__all__ = ["CALIBRATION_POOL", "HeldOut", "confirm_held_out"]
