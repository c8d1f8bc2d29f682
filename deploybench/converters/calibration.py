"""The calibration samples every int8 converter shares (ONNX Runtime, NNCF, TFLite, TensorRT).

Real data comes first: ``spec.calibration_data(n)`` when the model has it. Only a model without
any gets seeded random inputs, and ``Calibration.source`` says so. The samples are cached on disk
(an ``.npz`` under the conversion cache, keyed by the model's fingerprint, ``n`` and ``seed``), so
every backend calibrates on exactly the same samples and a second run does not rebuild them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..spec import DeployBenchError, ModelSpec
from .cache import default_cache_dir, model_fingerprint

DEFAULT_SAMPLES = 64
SOURCE_REAL = "real (model calibration data)"
SOURCE_RANDOM = "random (model has no calibration data)"
# Random calibration inputs are drawn from seeds far from those a cell is judged on (the run's seed,
# 0 by default, and the agreement samples' 1000 onwards), so no judged input shaped the int8 ranges.
RANDOM_CALIBRATION_SEED = 50_000
# The real samples right past the first DEFAULT_SAMPLES are what the harness judges a classifier on (64) and
# what int8ac validates on (64): a larger calibration set skips them, so calibrating on more samples never
# calibrates on the samples that judge the result.
RESERVED_PAST_DEFAULT = 128
# The converters that calibrate int8, and the option that sizes their calibration set.
CALIBRATION_SIZE_OPTION = {"onnx": "calibration_size", "openvino": "calibration_size",
                           "tflite": "calibration_samples", "tensorrt": "calibration_samples"}


@dataclass
class Calibration:
    """Calibration samples (one ``{input name: array}`` per sample, batch of the model's default dims)
    and where they came from: ``SOURCE_REAL`` or ``SOURCE_RANDOM``."""

    samples: list[dict[str, np.ndarray]]
    source: str
    seed: int = 0

    @property
    def is_real(self) -> bool:
        return self.source != SOURCE_RANDOM

    def describe(self) -> dict[str, object]:
        """What a converter records in its artifact's metadata."""
        return {"calibration": self.source, "calibration_samples": len(self.samples), "calibration_seed": self.seed}


def calibration_inputs(spec: ModelSpec, n: int = DEFAULT_SAMPLES, seed: int = 0,
                       cache_dir: str | Path | None = None) -> Calibration:
    """Up to ``n`` calibration samples for ``spec`` as a ``Calibration(samples, source)``.

    Real data from ``spec.calibration_data(n)`` when the model has it, else ``n`` seeded random
    inputs (``spec.make_inputs(RANDOM_CALIBRATION_SEED + seed + i)``). Cached under ``cache_dir`` (default: the conversion
    cache) so every int8 converter of the same model sees the same samples.
    """
    if n < 1:
        raise DeployBenchError(f"calibration sample count {n} for model {spec.name!r}: use at least 1")
    path = _cache_path(spec, n, seed, cache_dir)
    cached = _load(path)
    if cached is not None:
        return cached
    calibration = _build(spec, n, seed)
    _save(path, calibration)
    return calibration


def _build(spec: ModelSpec, n: int, seed: int) -> Calibration:
    if spec.calibration_data is not None:
        samples = real_calibration_samples(spec, n)
        if samples:
            names = set(spec.input_names)
            for sample in samples:
                if set(sample) != names:
                    raise DeployBenchError(f"model {spec.name!r}: calibration_data returned inputs {sorted(sample)}; "
                                           f"it must return dicts with {sorted(names)}")
            source = f"real ({spec.calibration_source})" if spec.calibration_source else SOURCE_REAL
            return Calibration([{k: np.asarray(v) for k, v in s.items()} for s in samples], source, seed)
    samples = [spec.make_inputs(seed=RANDOM_CALIBRATION_SEED + seed + i) for i in range(n)]
    return Calibration(samples, SOURCE_RANDOM, seed)


def real_calibration_samples(spec: ModelSpec, n: int = DEFAULT_SAMPLES) -> list:
    """The samples of ``spec.calibration_data`` that calibrating on ``n`` takes (a set larger than the default
    skips the ``RESERVED_PAST_DEFAULT`` samples that judge and validate int8)."""
    if n <= DEFAULT_SAMPLES:
        return list(spec.calibration_data(n))[:n]
    skip = DEFAULT_SAMPLES + RESERVED_PAST_DEFAULT
    data = list(spec.calibration_data(skip + n - DEFAULT_SAMPLES))
    return data[:DEFAULT_SAMPLES] + data[skip:skip + n - DEFAULT_SAMPLES]


def use_calibration_file(spec: ModelSpec, path: str | Path) -> None:
    """Calibrate ``spec``'s int8 artifacts on the samples of ``path``: an ``.npz`` with one array per input,
    samples along axis 0 (``input_ids`` of shape [256, 32] is 256 samples of [1, 32]). The file's digest
    becomes part of the conversion cache key, so other data never reuse an artifact calibrated on these."""
    path = Path(path)
    try:
        data = path.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DeployBenchError(f"--calibration-data {path}: not a readable .npz of arrays ({type(exc).__name__}: "
                               f"{exc})".splitlines()[0]) from None
    if set(arrays) != set(spec.input_names):
        raise DeployBenchError(f"--calibration-data {path} holds arrays {sorted(arrays)}; model {spec.name!r} "
                               f"takes inputs {sorted(spec.input_names)}")
    counts = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise DeployBenchError(f"--calibration-data {path}: every array needs the same number of samples along "
                               f"axis 0, got {sorted(counts)}")
    count = counts.pop()
    samples = [{name: array[i:i + 1] for name, array in arrays.items()} for i in range(count)]
    spec.calibration_data = lambda n: samples[:n]
    spec.calibration_source = f"{path.name}, {count} samples, sha256 {hashlib.sha256(data).hexdigest()[:12]}"


def _cache_path(spec: ModelSpec, n: int, seed: int, cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    layout = [RESERVED_PAST_DEFAULT] if n > DEFAULT_SAMPLES else []  # larger sets once took the judged samples
    key = hashlib.sha256(json.dumps([model_fingerprint(spec), n, seed, spec.calibration_source,
                                     RANDOM_CALIBRATION_SEED, *layout]).encode()).hexdigest()[:16]
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)
    return root / "calibration" / f"{safe_name}-n{n}-s{seed}-{key}.npz"


def _save(path: Path, calibration: Calibration) -> None:
    arrays = {f"{i}/{name}": array for i, sample in enumerate(calibration.samples) for name, array in sample.items()}
    arrays["__meta__"] = np.array(json.dumps({"source": calibration.source, "seed": calibration.seed,
                                              "count": len(calibration.samples)}))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed so a concurrent reader never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> Calibration | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            samples: list[dict[str, np.ndarray]] = [{} for _ in range(meta["count"])]
            for key in data.files:
                if key == "__meta__":
                    continue
                index, _, name = key.partition("/")
                samples[int(index)][name] = data[key]
    except (OSError, ValueError, KeyError, IndexError):
        return None  # a damaged file is rebuilt
    return Calibration(samples, meta["source"], meta["seed"])


__all__ = ["CALIBRATION_SIZE_OPTION", "Calibration", "DEFAULT_SAMPLES", "RESERVED_PAST_DEFAULT", "SOURCE_RANDOM", "SOURCE_REAL",
           "calibration_inputs", "real_calibration_samples", "use_calibration_file"]
