"""A torch-free "device" Python for tests: a real virtual environment holding only what
``pip install 'deploybench[runtime]' onnxruntime openvino`` would put on a Raspberry Pi.

Installing from a registry at test time is neither offline nor fast, so the environment borrows the
distributions this (host) environment already has: ``venv.create`` makes the interpreter, and each
distribution the device needs is symlinked into its site-packages (its top-level packages and its
``.dist-info``, read from the distribution's RECORD), as pip would have unpacked them. What the device
needs is computed, not listed: the base ``dependencies`` of pyproject.toml plus the named runtimes,
closed over their ``Requires-Dist`` with environment markers evaluated. Anything not in that closure is
absent for real, so ``import torch`` there fails the way it would on the device.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import tomllib
import venv
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# What must never reach the device; finding one in the closure means the packaging is wrong.
FORBIDDEN = frozenset({"torch", "onnx", "scikit-learn", "scipy", "matplotlib", "opencv-python-headless", "pytest"})


class DeviceEnvError(RuntimeError):
    """The device environment cannot be built as asked (a forbidden or missing distribution)."""


def base_requirements() -> list[Requirement]:
    """The base ``dependencies`` of the repo's pyproject.toml: what ``deploybench[runtime]`` installs."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [Requirement(text) for text in project["dependencies"] + extras.get("runtime", [])
            if not Requirement(text).name.startswith("deploybench")]


def closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Every installed distribution ``requirements`` need, by canonical name, markers evaluated here."""
    found: dict[str, metadata.Distribution] = {}
    pending = [(req, "") for req in requirements]
    seen: set[tuple[str, str]] = set()
    while pending:
        req, extra = pending.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in FORBIDDEN:
            raise DeviceEnvError(f"the device closure pulls {name} (via {req}): the runtime install must stay without it")
        extras = sorted(req.extras) or [""]
        if all((name, e) in seen for e in extras):
            continue
        seen.update((name, e) for e in extras)
        try:
            dist = found.get(name) or metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise DeviceEnvError(f"{req.name} is needed on the device but not installed on this host") from None
        found[name] = dist
        for text in dist.requires or []:
            for e in extras:
                pending.append((Requirement(text), e))
    return found


def _link(source: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        return
    target.symlink_to(source, target_is_directory=source.is_dir())


def link_distribution(dist: metadata.Distribution, site: Path) -> None:
    """Symlink the distribution's top-level entries (packages, modules, ``*.libs``, its ``.dist-info``)."""
    origin = Path(dist.locate_file(""))
    tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
    tops.discard("__pycache__")
    for top in sorted(tops):
        source = origin / top
        if not source.exists():
            continue
        if source.is_dir() and not (source / "__init__.py").exists() and not top.endswith((".dist-info", ".libs")):
            # a namespace package shared with other distributions: link only this one's entries
            (site / top).mkdir(exist_ok=True)
            seconds = {Path(str(f)).parts[1] for f in dist.files if Path(str(f)).parts[0] == top
                       and len(Path(str(f)).parts) > 1}
            for second in seconds - {"__pycache__"}:
                _link(source / second, site / top / second)
            continue
        _link(source, site / top)


def device_venv(root: Path, runtimes: tuple[str, ...] = ("onnxruntime", "openvino")) -> Path:
    """A venv at ``root`` with deploybench's base dependencies, ``runtimes`` (distribution names) and
    their closure linked in, and deploybench itself on the path as an editable install puts it; its python."""
    root = Path(root)
    python = root / "bin" / "python"
    if not python.exists():
        venv.create(root, with_pip=False, symlinks=True)
    site = next((root / "lib").glob("python3*/site-packages"))
    for dist in closure(base_requirements() + [Requirement(r) for r in runtimes]).values():
        link_distribution(dist, site)
    (site / "deploybench-editable.pth").write_text(f"{REPO}\n")
    return python


if __name__ == "__main__":  # python tests/device_env.py DIR [RUNTIME ...]: a device Python to try by hand
    print(device_venv(Path(sys.argv[1]), tuple(sys.argv[2:]) or ("onnxruntime", "openvino")))
