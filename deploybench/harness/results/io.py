"""Reading the JSON files a run leaves behind (matrices, merges, pytest-benchmark history)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploybench.spec import DeployBenchError


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """The parsed JSON of ``path``. A missing, unreadable or malformed file raises one line naming
    ``what`` it should have been, the file, and ``fix`` (how to get a good one); nothing is written."""
    path = Path(path)
    if not path.is_file():
        raise DeployBenchError(f"{what} {str(path)!r} does not exist; {fix}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DeployBenchError(f"{what} {str(path)!r} is not valid JSON ({first}); {fix}") from None
