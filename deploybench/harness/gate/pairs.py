"""The cells two runs share, and what the gate does with each pair: byte-identical artifacts are
unchanged without timing; the others are re-run interleaved in one worker process. Shared by
``deploybench gate`` (two results files) and ``deploybench compare`` (two sources built here)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from deploybench.harness.gate.interleave import Interleaved, interleave_results
from deploybench.harness.gate.statistics import REGRESSION
from deploybench.harness.gate.verdict import GateSettings, Verdict, verdict_summary, verdict_table
from deploybench.resolve import is_rebuildable_ref
from deploybench.spec import SINGLE_STREAM, DeployBenchError, Result

Pair = tuple[Result, Result]


class NothingCompared(DeployBenchError):
    """No cell is in both runs: a gate that compared nothing must not pass (a renamed model would)."""


def _some(ids: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(sorted(ids)[:limit])
    return (shown + f" and {len(ids) - limit} more") if len(ids) > limit else shown or "none"


def check_overlap(baseline: Sequence[Result], current: Sequence[Result], base_label: str, cur_label: str) -> None:
    """Raise ``NothingCompared``, naming the cell ids seen on each side, when the runs share no cell."""
    base_ids, cur_ids = {r.cell.id for r in baseline}, {r.cell.id for r in current}
    if not base_ids & cur_ids:
        raise NothingCompared(f"no cell is in both runs, so nothing was compared: {base_label} has "
                              f"{_some(list(base_ids))}; {cur_label} has {_some(list(cur_ids))}")


def shared_pairs(baseline: Iterable[Result], current: Iterable[Result]) -> list[Pair]:
    """(baseline, current) of every cell that ran in both."""
    base_by_id = {r.cell.id: r for r in baseline if r.ok}
    return [(base_by_id[r.cell.id], r) for r in current if r.ok and r.cell.id in base_by_id]


def _artifact_files(path: str | None) -> list[Path]:
    if not path or not Path(path).exists():
        return []
    root = Path(path)
    if root.is_dir():
        return sorted(p for p in root.rglob("*") if p.is_file())
    files = [root]
    if root.suffix == ".xml":
        files.append(root.with_suffix(".bin"))
    elif root.suffix == ".onnx":
        files += sorted(p for p in root.parent.iterdir() if p.is_file() and p != root and p.suffix == ".data")
    return [f for f in files if f.is_file()]


def artifact_digest(path: str | None) -> str | None:
    """A SHA-256 of an artifact's files (an IR's .bin, an ONNX file's external data included), or None
    when the artifact is not a file here (a torch cell, or a file that is gone)."""
    files = _artifact_files(path)
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _identity(result: Result) -> str | None:
    """What makes two cells' artifacts the same: the files' digest, or for a torch cell (no file) the
    model's fingerprint (code, attributes and weights: ``converters.cache.model_fingerprint``)."""
    if result.cell.format == "torch":
        notes = result.extra.get("artifact") or {}
        return f"torch:{notes['fingerprint']}" if notes.get("fingerprint") else None
    return artifact_digest(result.artifact_path)


def same_artifact_ids(pairs: Iterable[Pair]) -> set[str]:
    """Cells whose two artifacts are byte-identical: the same model, nothing to time."""
    same = set()
    for base, cur in pairs:
        base_identity = _identity(base)
        if base_identity is not None and base_identity == _identity(cur):
            same.add(cur.cell.id)
    return same


def can_interleave(result: Result) -> bool:
    """Whether this machine can load the cell's artifact again: its file is here, or (a torch cell)
    its model can be rebuilt from its ref. An offline or server cell is not re-run: one request at a
    time says nothing of its figure."""
    if result.cell.scenario != SINGLE_STREAM:
        return False
    if result.cell.format == "torch":
        return is_rebuildable_ref(result.model_ref)
    return bool(_artifact_files(result.artifact_path))


def pairs_to_interleave(baseline: Iterable[Result], current: Iterable[Result], require_files: bool = True
                        ) -> list[Pair]:
    """The pairs to re-run interleaved: every shared cell, or (``require_files``) those whose two
    artifacts can both be loaded here."""
    pairs = [p for p in shared_pairs(baseline, current) if p[0].cell.scenario == SINGLE_STREAM]
    return [p for p in pairs if not require_files or (can_interleave(p[0]) and can_interleave(p[1]))]


def interleave_pairs(pairs: Sequence[Pair], settings: GateSettings, threads: int | None = None,
                     log: Callable[[str], Any] = print, folders: tuple[Any, Any] = (None, None),
                     on_pair: Callable[[str], Any] | None = None) -> dict[str, Interleaved]:
    """{cell id: Interleaved} for each pair, all run in one worker process; a pair that cannot be
    re-run (its worker crashed, an artifact will not load) is logged and judged without it."""
    from deploybench.harness.pipeline.settings import RunSettings
    from deploybench.harness.pipeline.worker import Worker

    found: dict[str, Interleaved] = {}
    if not pairs:
        return found
    worker = Worker(None, RunSettings(threads=threads))
    try:
        for base, cur in pairs:
            if on_pair is not None:
                on_pair(cur.cell.id)
            try:
                found[cur.cell.id] = interleave_results(base, cur, threads=threads, threshold=settings.threshold,
                                                        confidence=settings.confidence, worker=worker,
                                                        folders=folders)
            except DeployBenchError as exc:
                log(f"{cur.cell.id}: cannot interleave ({exc}); judged without it")
    finally:
        worker.close()
    return found


def print_verdicts(verdicts: Sequence[Verdict], prog: str) -> int:
    """Print the verdict table and a summary; the exit code: 1 when anything regressed, else 0."""
    print(verdict_table(verdicts))
    regressed = {v.cell for v in verdicts if v.verdict == REGRESSION}
    print(f"{prog}: {verdict_summary(verdicts)}; {len(regressed)} of {len({v.cell for v in verdicts})} cell(s) "
          "regressed")
    return 1 if regressed else 0


__all__ = ["NothingCompared", "Pair", "artifact_digest", "can_interleave", "check_overlap", "interleave_pairs",
           "pairs_to_interleave", "print_verdicts", "same_artifact_ids", "shared_pairs"]
