"""The on-disk conversion cache, keyed by a content hash of weights, graph, options and tool versions.

Each entry is a directory ``<model>-<format>-<precision>-<key>/`` holding the artifact's files and
an ``artifact.json`` sidecar. Readers take no lock: an entry appears whole, by one rename of a
temporary sibling ``.<entry>.*`` that was written and fsynced first, so ``kill -9`` at any moment
leaves no entry or a complete one. A writer holds an exclusive ``flock`` on ``<entry>.lock`` and
looks again before converting, so processes asking for the same entry at once convert it once and
the others wait for it. The kernel drops the lock of a process that dies, so a killed run blocks
nobody; the temporary directory it leaves is never read as an entry and is removed by the next
writer of that entry. An entry whose sidecar is unreadable or whose files are missing counts as
missing: it is converted again and replaced, and nothing else is touched.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..spec import INT8_PRECISIONS, Artifact, DeployBenchError, ModelSpec
from ._paths import stays_inside

try:
    import fcntl
except ImportError:  # Windows: no flock; the atomic rename alone still keeps entries whole
    fcntl = None

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
# How long a writer waits for another process converting the same entry: a cold int8 calibration
# of a large model takes tens of minutes, and a lock outliving its process is released by the kernel.
LOCK_TIMEOUT_S = 3600.0


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
        elif path.suffix == ".onnx":  # weights kept beside the graph change the model as much as the graph
            from .onnx import external_data_files

            files.extend(external_data_files(path))
        for f in files:
            if f.exists():
                digest.update(f.read_bytes())
    else:
        module = spec.build()
        digest.update(repr(module).encode())  # the graph's structure and hyper-parameters
        digest.update(module_code_fingerprint(module).encode())
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes()
                          if tensor.dtype.is_floating_point or tensor.dtype.is_signed
                          else tensor.detach().cpu().to(dtype=tensor.dtype).numpy().tobytes())
    digest.update(json.dumps([t.to_dict() for t in spec.inputs], sort_keys=True).encode())
    digest.update(json.dumps(list(spec.output_names)).encode())
    return digest.hexdigest()


def module_code_fingerprint(module: Any) -> str:
    """What ``repr`` and the weights do not show: the code of every non-torch module class and the
    plain attributes its instances hold. A ``forward`` edited between two commits, or a flag set in
    ``__init__``, changes the export; without this the cache would hand back the old artifact and a
    regression gate would compare a change with itself."""
    digest = hashlib.sha256()
    for name, sub in module.named_modules():
        cls = type(sub)
        digest.update(f"{name}:{cls.__qualname__}".encode())  # not the module: a user file's is named by its path
        if not cls.__module__.startswith("torch."):  # torch's own classes are covered by its version
            digest.update(_class_code(cls))
        plain = {k: repr(v) for k, v in vars(sub).items()
                 if not k.startswith("_") and isinstance(v, (bool, int, float, str, bytes, tuple, list, type(None)))}
        digest.update(json.dumps(plain, sort_keys=True).encode())
    return digest.hexdigest()


def _class_code(cls: type) -> bytes:
    """The source file of a class defined in a file (helpers beside it change the export too), else
    the bytecode and constants of its methods (a class defined in a notebook or sent by cloudpickle)."""
    try:
        source = inspect.getsourcefile(cls)
    except (TypeError, OSError):
        source = None
    if source and Path(source).is_file():
        return Path(source).read_bytes()
    module = sys.modules.get(cls.__module__)
    if module is not None and getattr(module, "__file__", None) and Path(module.__file__).is_file():
        return Path(module.__file__).read_bytes()
    parts = []
    for klass in cls.__mro__:
        if klass.__module__.startswith(("torch.", "builtins")):
            continue
        for attr, value in sorted(vars(klass).items()):
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None:
                parts.append(attr.encode() + _code_bytes(code))
    return b"".join(parts)


def _code_bytes(code: Any) -> bytes:
    consts = b"".join(_code_bytes(c) if hasattr(c, "co_code") else repr(c).encode() for c in code.co_consts)
    return code.co_code + consts + repr(code.co_names).encode()


_converter_digest: str | None = None


def converter_code_digest() -> str:
    """A digest of deploybench's own converter sources: a changed converter (an upgrade, a fix) makes new
    artifacts instead of reusing what the old code made under the same model and tool versions."""
    global _converter_digest
    if _converter_digest is None:
        digest = hashlib.sha256()
        for source in sorted(Path(__file__).parent.glob("*.py")):
            digest.update(source.name.encode() + source.read_bytes())
        _converter_digest = digest.hexdigest()[:16]
    return _converter_digest


def conversion_key(spec: ModelSpec, fmt: str, precision: str, options: dict[str, Any]) -> str:
    payload = {
        "cache": CACHE_FORMAT_VERSION, "converters": converter_code_digest(),
        "model": model_fingerprint(spec), "format": fmt, "precision": precision,
        "options": {k: repr(v) for k, v in sorted(options.items())}, "tools": tool_versions(fmt),
    }
    if precision in INT8_PRECISIONS and spec.calibration_source:  # a user's calibration file: another artifact
        payload["calibration"] = spec.calibration_source
    payload = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ConversionCache:
    def __init__(self, root: Path, lock_timeout: float = LOCK_TIMEOUT_S):
        # Absolute, so an entry's files are relocated once (a relative root was prefixed twice).
        self.root = Path(root).absolute()
        self.lock_timeout = lock_timeout

    def entry_dir(self, spec: ModelSpec, fmt: str, precision: str, options: dict[str, Any]) -> Path:
        name = "-".join(_safe(part) for part in (spec.name, fmt, precision))
        return self.root / f"{name}-{conversion_key(spec, fmt, precision, options)}"

    def get_or_convert(self, spec: ModelSpec, fmt: str, precision: str, options: dict[str, Any],
                       convert: Callable[..., Artifact], use_cache: bool = True) -> Artifact:
        final = self.entry_dir(spec, fmt, precision, options)
        if use_cache:
            cached = self.load(final)
            if cached is not None:
                return cached
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(final.with_name(f"{final.name}.lock"), self.lock_timeout):
            if use_cache:  # the process we waited for has most likely written it
                cached = self.load(final)
                if cached is not None:
                    return cached
            # Holding the lock, no live process writes this entry: what is left beside it is a killed run's.
            for leftover in self.root.glob(f".{glob.escape(final.name)}.*"):
                shutil.rmtree(leftover, ignore_errors=True)
            self._convert_into(final, spec, fmt, precision, options, convert)
            artifact = self.load(final, mark_cached=False)
        if artifact is None:
            raise DeployBenchError(f"the {fmt} converter wrote an entry {final} that lists files it did not write; "
                                   "fix the converter's Artifact.files")
        return artifact

    def _convert_into(self, final: Path, spec: ModelSpec, fmt: str, precision: str, options: dict[str, Any],
                      convert: Callable[..., Artifact]) -> None:
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        replaced = final.with_name(f".{final.name}.replaced")
        try:
            start = time.perf_counter()
            artifact = convert(spec, work, precision, **options)
            artifact.conversion_s = time.perf_counter() - start
            artifact.metadata.setdefault("tools", tool_versions(fmt))
            artifact.metadata.setdefault("model", spec.name)
            artifact.metadata.setdefault("task", spec.task)
            artifact.metadata.setdefault("task_config", spec.task_config)
            self._write_sidecar(artifact, work)
            _fsync_tree(work)
            if final.exists():  # damaged, or converted anew (cache=False): moved aside, never deleted half-way
                os.rename(final, replaced)
            os.rename(work, final)
            _fsync(self.root)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(replaced, ignore_errors=True)

    @staticmethod
    def _write_sidecar(artifact: Artifact, work: Path) -> None:
        data = artifact.to_dict()
        # Paths are stored relative to the entry so the entry can be renamed into place.
        data["path"] = str(artifact.path.relative_to(work))
        data["files"] = [str(Path(f).relative_to(work)) for f in artifact.files]
        (work / "artifact.json").write_text(json.dumps(data, indent=1, default=str))

    def load(self, entry: Path, mark_cached: bool = True) -> Artifact | None:
        """The entry's Artifact, or None when it is missing or damaged (unreadable sidecar, missing files).

        ``artifact_from_path`` also reads a sidecar found beside a user's file: one naming files
        outside its folder is no entry.
        """
        sidecar = entry / "artifact.json"
        if not sidecar.is_file():  # not a pipe or a device beside a user's file: reading those never ends
            return None
        try:
            artifact = Artifact.from_dict(json.loads(sidecar.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, DeployBenchError):
            return None
        for name in (artifact.path, *artifact.files):
            if not stays_inside(entry, name) or not (entry / name).exists():
                return None
        artifact.path, artifact.files = entry / artifact.path, tuple(entry / f for f in artifact.files)
        artifact.cached = mark_cached
        return artifact


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on ``path``, removed on release so the cache keeps no lock files.

    The holder removes the file before releasing it: a waiter that then gets the lock of the removed
    file sees it is no longer at ``path`` and locks the file there now.
    """
    if fcntl is None:
        yield
        return
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _wait_for_flock(fd, path, deadline, timeout)
            if _still_at(fd, path):
                try:
                    yield
                finally:
                    path.unlink(missing_ok=True)
                return
        finally:
            os.close(fd)


def _wait_for_flock(fd: int, path: Path, deadline: float, timeout: float) -> None:
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise DeployBenchError(f"conversion cache lock {path} is still held after {timeout:g} s by another "
                                       "process converting the same model; let it finish or stop it, then rerun"
                                       ) from None
        except OSError as exc:
            raise DeployBenchError(f"cannot lock {path} ({exc.strerror}): its file system has no flock; put the "
                                   "cache on a local disk with DEPLOYBENCH_CACHE=<dir>") from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _still_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part)


def _fsync_tree(directory: Path) -> None:
    """Flush every file and folder below ``directory`` to disk, so the renamed entry survives a crash whole."""
    for folder, _, names in os.walk(directory):
        for name in names:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a dangling symlink: nothing to flush
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; its files are flushed already
        pass
    finally:
        os.close(fd)
