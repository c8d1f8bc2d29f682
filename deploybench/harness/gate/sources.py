"""The two sides of a change, in whichever form a user has them: two git refs of their project (the
base checked out in a temporary worktree), two model files, or two results files whose artifacts
are on this machine. Each side says where its model code lives, so its workers resolve it there."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploybench.converters import SUFFIX_FORMATS
from deploybench.spec import DeployBenchError

WORKING_TREE = "."  # the side that is the checkout as it is, uncommitted changes included


@dataclass
class Side:
    """One side of a comparison. ``models``: the refs to build and measure, resolved in ``folder``
    (a worktree of ``commit``; None: here). ``results_file``: a side given as measured results."""

    name: str  # "base" or "head"
    label: str  # what the user named: a ref, a file
    models: list[str] = field(default_factory=list)
    folder: Path | None = None
    commit: str | None = None
    results_file: Path | None = None

    def describe(self) -> str:
        if self.commit:
            return f"{self.label} ({self.commit[:10]})"
        return self.label

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "commit": self.commit, "models": self.models,
                "results_file": str(self.results_file) if self.results_file else None}


def _git(args: Sequence[str], cwd: Path | str | None = None) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise DeployBenchError("git is not installed here; compare two model or results files instead") from None
    if done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise DeployBenchError(f"git {' '.join(args[:2])}: {message[-1] if message else f'exit {done.returncode}'}")
    return done.stdout.strip()


def _is_model_file(text: str) -> bool:
    path = text.partition("@")[0]
    if ".py:" in path:
        path = path.rpartition(":")[0]
    return Path(path).suffix.lower() in (*SUFFIX_FORMATS, ".py") and Path(path).exists()


def classify(base: str, head: str) -> str:
    """'results', 'models' or 'git': the form both sides are given in (they must agree)."""
    kinds = []
    for text in (base, head):
        if text.endswith(".json") and Path(text).is_file():
            kinds.append("results")
        elif _is_model_file(text):
            kinds.append("models")
        elif text.endswith(".json") or any(text.lower().endswith(s) for s in (*SUFFIX_FORMATS, ".py")):
            raise DeployBenchError(f"{text} does not exist (give two results files, two model files, or two git refs)")
        else:
            kinds.append("git")
    if kinds[0] != kinds[1]:
        raise DeployBenchError(f"BASE is a {kinds[0]} source and HEAD a {kinds[1]} one; give both in one form: "
                               "two git refs, two model files or two results files")
    return kinds[0]


def _commit(ref: str, top: Path) -> str:
    try:
        return _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=top)
    except DeployBenchError:
        raise DeployBenchError(f"{ref!r} is not a commit of {top} (a shallow CI checkout needs it fetched: "
                               f"git fetch --depth=1 origin {ref})") from None


def commit_of(ref: str, cwd: Path | str) -> str:
    """The commit ``ref`` names in the repository around ``cwd``; a one-line error when there is none."""
    top = Path(_git(["rev-parse", "--show-toplevel"], cwd=cwd))
    return _commit(ref, top)


@contextlib.contextmanager
def worktrees(refs: Sequence[str], cwd: Path | str | None = None) -> Iterator[list[tuple[Path, str | None]]]:
    """[(folder, commit)] for each ref, in order: a temporary worktree of that commit of the repository
    around ``cwd`` (default: here), at the same place inside it as ``cwd``; ``WORKING_TREE`` is ``cwd``
    itself (commit None). The worktrees are removed on the way out, whatever happened."""
    here = Path(cwd or os.getcwd()).resolve()
    top = Path(_git(["rev-parse", "--show-toplevel"], cwd=here))
    inside = here.relative_to(top.resolve())
    scratch = Path(tempfile.mkdtemp(prefix="deploybench-compare-"))
    added: list[Path] = []
    try:
        found: list[tuple[Path, str | None]] = []
        for index, ref in enumerate(refs):
            if ref == WORKING_TREE:
                found.append((here, None))
                continue
            commit = _commit(ref, top)
            tree = scratch / str(index)
            _git(["worktree", "add", "--detach", "--force", str(tree), commit], cwd=top)
            added.append(tree)
            found.append(((tree / inside).resolve(), commit))
        yield found
    finally:
        for tree in added:
            with contextlib.suppress(DeployBenchError):
                _git(["worktree", "remove", "--force", str(tree)], cwd=top)
        with contextlib.suppress(DeployBenchError):
            _git(["worktree", "prune"], cwd=top)
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def git_sides(base_ref: str, head_ref: str, models: Sequence[str]) -> Iterator[tuple[Side, Side]]:
    """The base (and head, unless it is the working tree) checked out in temporary worktrees of the
    repository this process runs in (``worktrees``)."""
    if not models:
        raise DeployBenchError("comparing two git refs needs --models: the models of your project to build on "
                               "each side, e.g. --models nets/model.py:build")
    with worktrees([base_ref, head_ref]) as found:
        sides = [Side(name, "working tree" if ref == WORKING_TREE else ref, list(models), folder=folder, commit=commit)
                 for (name, ref), (folder, commit) in zip((("base", base_ref), ("head", head_ref)), found)]
        yield sides[0], sides[1]


@contextlib.contextmanager
def open_sides(base: str, head: str, models: Sequence[str]) -> Iterator[tuple[Side, Side]]:
    """The two sides as the user gave them (see the module's docstring)."""
    kind = classify(base, head)
    if kind == "git":
        with git_sides(base, head, models) as sides:
            yield sides
        return
    if models:
        raise DeployBenchError(f"--models is for comparing two git refs; {base} and {head} are "
                               f"{'results' if kind == 'results' else 'model'} files already")
    if kind == "results":
        yield Side("base", base, results_file=Path(base)), Side("head", head, results_file=Path(head))
    else:
        yield Side("base", base, [base]), Side("head", head, [head])


__all__ = ["Side", "WORKING_TREE", "classify", "git_sides", "commit_of", "open_sides", "worktrees"]
