"""The on-disk conversion cache, keyed by a content hash of weights, graph, options and tool versions.

Each entry is a directory ``<model>-<format>-<precision>-<key>/`` holding the artifact's files and
an ``artifact.json`` sidecar. A conversion writes into a temporary sibling directory and renames
it into place, so two processes filling the cache at once never see a half-written entry: the
loser of the race discards its copy and uses the winner's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..spec import Artifact, DeployBenchError, ModelSpec

# Packages whose version changes what a conversion to each format writes.
FORMAT_TOOLS = {
    "torch": ("torch",),
    "onnx": ("torch", "onnx", "onnxscript", "onnxruntime"),
    "openvino": ("torch", "onnx", "openvino", "nncf"),
    "tflite": ("torch", "litert-torch", "ai-edge-litert", "onnx2tf", "tensorflow"),
    "coreml": ("torch", "coremltools"),
    "tensorrt": ("torch", "onnx", "tensorrt"),
}

CACHE_FORMAT_VERSION = "1"


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEPLOYBENCH_CACHE", ".deploybench-cache"))


def tool_versions(fmt: str) -> dict[str, str]:
    versions = {}
    for package in FORMAT_TOOLS.get(fmt, ()):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def model_fingerprint(spec: ModelSpec) -> str:
    """A hash of what the model is: its weights and graph (PyTorch), or its file's bytes (an artifact)."""
    digest = hashlib.sha256()
    if spec.factory is None:
        path = Path(spec.source_path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if path.suffix == ".xml":
            files.append(path.with_suffix(".bin"))
        for f in files:
            if f.exists():
                digest.update(f.read_bytes())
    else:
        module = spec.build()
        digest.update(repr(module).encode())  # the graph's structure and hyper-parameters
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes()
                          if tensor.dtype.is_floating_point or tensor.dtype.is_signed
                          else tensor.detach().cpu().to(dtype=tensor.dtype).numpy().tobytes())
    digest.update(json.dumps([t.to_dict() for t in spec.inputs], sort_keys=True).encode())
    digest.update(json.dumps(list(spec.output_names)).encode())
    return digest.hexdigest()


def conversion_key(spec: ModelSpec, fmt: str, precision: str, options: dict[str, Any]) -> str:
    payload = json.dumps({
        "cache": CACHE_FORMAT_VERSION, "model": model_fingerprint(spec), "format": fmt, "precision": precision,
        "options": {k: repr(v) for k, v in sorted(options.items())}, "tools": tool_versions(fmt),
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ConversionCache:
    def __init__(self, root: Path):
        # Absolute, so an entry's files are relocated once (a relative root was prefixed twice).
        self.root = Path(root).absolute()

    def entry_dir(self, spec: ModelSpec, fmt: str, precision: str, options: dict[str, Any]) -> Path:
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)
        return self.root / f"{safe_name}-{fmt}-{precision}-{conversion_key(spec, fmt, precision, options)}"

    def get_or_convert(self, spec: ModelSpec, fmt: str, precision: str, options: dict[str, Any],
                       convert: Callable[..., Artifact], use_cache: bool = True) -> Artifact:
        final = self.entry_dir(spec, fmt, precision, options)
        if use_cache:
            cached = self.load(final)
            if cached is not None:
                return cached
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        try:
            start = time.perf_counter()
            artifact = convert(spec, work, precision, **options)
            artifact.conversion_s = time.perf_counter() - start
            artifact.metadata.setdefault("tools", tool_versions(fmt))
            artifact.metadata.setdefault("model", spec.name)
            artifact.metadata.setdefault("task", spec.task)
            artifact.metadata.setdefault("task_config", spec.task_config)
            self._write_sidecar(artifact, work)
            if not use_cache and final.exists():
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(work, final)
            except OSError:  # another process won the race: its entry is as good as ours
                shutil.rmtree(work, ignore_errors=True)
                cached = self.load(final)
                if cached is None:
                    raise DeployBenchError(f"conversion cache entry {final} is unreadable; delete it and rerun")
                return cached
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self._relocate(self.load(final, mark_cached=False), final)

    @staticmethod
    def _write_sidecar(artifact: Artifact, work: Path) -> None:
        data = artifact.to_dict()
        # Paths are stored relative to the entry so the entry can be renamed into place.
        data["path"] = str(artifact.path.relative_to(work))
        data["files"] = [str(Path(f).relative_to(work)) for f in artifact.files]
        (work / "artifact.json").write_text(json.dumps(data, indent=1, default=str))

    def load(self, entry: Path, mark_cached: bool = True) -> Artifact | None:
        sidecar = entry / "artifact.json"
        if not sidecar.exists():
            return None
        try:
            data = json.loads(sidecar.read_text())
            artifact = Artifact.from_dict(data)
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is converted again
        artifact = self._relocate(artifact, entry)
        if not all(Path(f).exists() for f in artifact.files):
            return None
        artifact.cached = mark_cached
        return artifact

    @staticmethod
    def _relocate(artifact: Artifact, entry: Path) -> Artifact:
        if not artifact.path.is_absolute():
            artifact.path = entry / artifact.path
            artifact.files = tuple(entry / f for f in artifact.files)
        return artifact
