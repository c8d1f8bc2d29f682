"""Where a file named by a file we did not write (ONNX external data, an .mlpackage manifest, a cache
sidecar) may be: inside the folder it came from, so a model file never makes deploybench read elsewhere."""

from __future__ import annotations

from pathlib import Path


def stays_inside(folder: Path, location: str | Path) -> bool:
    """Whether ``location``, relative to ``folder``, lies inside ``folder`` once ``..`` and symlinks are
    followed; an absolute or empty location never does. Nothing is opened: only names and links are read."""
    if not str(location) or Path(location).is_absolute():
        return False
    try:
        return (folder / location).resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: nowhere to read from
        return False
