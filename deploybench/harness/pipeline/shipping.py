"""A cell measured on another machine (a target): what travels there, and the session it runs in there.

The model's code and the fp32 PyTorch reference stay on the host. For each cell the host's worker
converts the artifact (for the target's CPU, ``ship_cell``) and the artifact's files travel, named by
their content; the device's worker runs the rest of the one pipeline on them (availability, memory in a
fresh process, load, first inference, time, accuracy) in a ``ShippedSession``. Its reference asks the host
(``ask``): the device sends the very inputs it fed its engine and gets the reference's outputs back, so
accuracy is judged there, on identical inputs, whatever numpy the device has. A model's held-out data
(``eval_data``, or the calibration samples past those int8 was calibrated on) is computed on the host and
travels frozen, since making it may need libraries a device does not have.

A TensorRT plan is built on the device (it is specific to its GPU and TensorRT version): the ONNX file it
starts from travels instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.harness.pipeline.settings import RunSettings
from deploybench.harness.pipeline.stages import ModelSession, check_availability, convert
from deploybench.spec import Artifact, Cell, ModelSpec

# Built on the device from an ONNX file that travels: a plan is specific to the device's GPU and TensorRT.
BUILT_THERE = ("tensorrt",)


@dataclass
class Shipment:
    """A cell's artifact as converted here: its files (relative to ``root``) with their sha256, and
    ``digest``, the content address of the whole artifact (the folder it gets on the device)."""

    artifact: Artifact
    root: Path
    files: tuple[tuple[str, str], ...]
    digest: str

    def at(self, folder: str) -> Artifact:
        """The artifact as it sits on the device, in ``folder``."""
        def there(path: Path) -> Path:
            return Path(folder) / Path(path).relative_to(self.root)

        return dataclasses.replace(self.artifact, path=there(self.artifact.path),
                                   files=[there(f) for f in self.artifact.files])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package(artifact: Artifact) -> Shipment:
    """The artifact's files, hashed: an unchanged artifact gets the same digest, so it is sent once."""
    root = artifact.path.parent
    paths = sorted({p for f in (artifact.files or [artifact.path])
                    for p in ([f] if Path(f).is_file() else sorted(Path(f).rglob("*"))) if Path(p).is_file()})
    files = tuple((str(Path(p).relative_to(root)), _sha256(Path(p))) for p in paths)
    whole = hashlib.sha256("\n".join(f"{name} {digest}" for name, digest in files).encode()).hexdigest()
    return Shipment(artifact=artifact, root=root, files=files, digest=whole)


def ship_cell(session: ModelSession, cell: Cell, settings: RunSettings, cpu_flags: frozenset[str]) -> Shipment:
    """Here: the cell's artifact converted for the target's CPU (``cpu_flags``), packaged to travel."""
    settings = settings.for_cell(cell)
    if cell.format in BUILT_THERE:  # the ONNX file its plan is built from, as the tensorrt converter makes it
        from deploybench.converters import deploy_model

        int8 = {"precision": "int8", "activation_type": "QInt8", "reduce_range": False}
        return package(deploy_model(session.spec, "onnx", output_dir=settings.cache_dir,
                                    **(int8 if cell.precision == "int8" else {"precision": "fp32"})))
    return package(convert(session.spec, cell, settings, cpu_flags))


@dataclass
class FrozenEvalData:
    """A model's ``eval_data`` made on the host: ``()`` returns (inputs, labels) as it did there."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray

    def __call__(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return self.inputs, self.labels


@dataclass
class FrozenHeldOut:
    """The held-out tail of a model's ``calibration_data``: the device only ever reads the samples past the
    ``skip`` that int8 calibrated on (``held_out_samples``), so only those travel; the skipped ones read
    as empty."""

    skip: int
    samples: list[dict[str, np.ndarray]]

    def __call__(self, count: int) -> list[dict[str, np.ndarray]]:
        return ([{} for _ in range(min(count, self.skip))] + self.samples)[:count]


@dataclass
class ShippedModel:
    """What a device's worker opens instead of resolving a model: the spec without its code, and the
    name of the reference it will be compared with."""

    spec: ModelSpec
    reference_name: str
    ref: str


def device_model(session: ModelSession) -> ShippedModel:
    """Here: the model as it travels (no factory, its held-out data frozen), and its reference's name."""
    from deploybench.harness.measure.accuracy import AGREEMENT_SAMPLES

    spec = session.spec
    eval_data = calibration = None
    if spec.eval_data is not None:
        eval_data = FrozenEvalData(*spec.eval_data())
    elif spec.task == "classification" and spec.calibration_data is not None:
        from deploybench.converters.calibration import DEFAULT_SAMPLES

        calibration = FrozenHeldOut(DEFAULT_SAMPLES, [dict(s) for s in list(
            spec.calibration_data(DEFAULT_SAMPLES + AGREEMENT_SAMPLES))[DEFAULT_SAMPLES:]])
    travelling = dataclasses.replace(spec, factory=None, source_path=Path(spec.source_path or spec.name),
                                     source_format=spec.source_format, eval_data=eval_data,
                                     calibration_data=calibration, _module=None)
    return ShippedModel(spec=travelling, reference_name=session.reference().name, ref=spec.ref or spec.name)


class ShippedSession(ModelSession):
    """There: a model whose cells come with their artifact (``shipped``) and whose reference is the host's."""

    def __init__(self, model: ShippedModel, isolation: str, ask: Callable[[tuple], Any]):
        super().__init__(model.spec, None, isolation)
        self.model, self._ask = model, ask
        self.shipped: Artifact | None = None

    def artifact(self, cell: Cell, settings: RunSettings) -> Artifact:
        if cell.format in BUILT_THERE:
            from deploybench.converters.tensorrt import build_plan, read_artifact

            folder = Path(settings.cache_dir) / cell.format / f"{self.shipped.path.parent.name}-{cell.precision}"
            if (folder / "model.plan").is_file():
                return read_artifact(folder / "model.plan")
            folder.mkdir(parents=True, exist_ok=True)
            return build_plan(self.shipped, self.spec, folder, cell.precision)
        return self.shipped

    def reference(self):
        if self._reference is None:
            from deploybench.harness.measure.accuracy import Reference

            self._reference = Reference(lambda inputs: self._ask(("reference", dict(inputs))), self.model.reference_name)
        return self._reference


def availability_here(backend: str, precision: str) -> tuple[bool, str]:
    """There: whether ``backend`` runs ``precision`` on this machine, and its version or why not."""
    try:
        return True, check_availability(Cell("", "", backend, precision))
    except Exception as exc:  # CellStopped, PrecisionNotSupported: the reason is the answer
        return False, str(exc)


def device_settings(settings: RunSettings, cache_dir: str) -> RunSettings:
    """The run's settings as the device's worker takes them: its own cache folder, no host paths, and no
    memory watch from here (the host cannot see the device's processes: the worker there watches itself,
    ``serving.watch_memory``; the stage limits still hold)."""
    return dataclasses.replace(settings, cache_dir=cache_dir, calibration_data=None, max_memory_mb=None,
                               in_process=False)


__all__ = ["BUILT_THERE", "FrozenEvalData", "FrozenHeldOut", "ShippedModel", "ShippedSession", "Shipment",
           "availability_here", "device_model", "device_settings", "package", "ship_cell"]
