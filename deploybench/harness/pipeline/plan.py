"""Planning: which cells a run has. Which backend runs which format is asked of each engine class, so a
backend registered by another package plans cells exactly like a built-in one. Nothing is built here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deploybench.spec import PRECISIONS, STATIC, Cell, DeployBenchError, ModelSpec


@dataclass(frozen=True)
class ModelInfo:
    """What the parent knows of a model: enough to plan and name its cells, nothing that runs it."""

    name: str
    ref: str | None = None
    torch_source: bool = True  # a PyTorch network (else a model file of ``source_format``)
    source_format: str = "torch"
    task: str = "generic"

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelInfo:
        return cls(name=spec.name, ref=spec.ref, torch_source=spec.factory is not None,
                   source_format=spec.source_format if spec.factory is None else "torch", task=spec.task)


def check_backends(backends: Sequence[str]) -> None:
    """A one-line error naming an unknown backend and the registered ones."""
    from deploybench.engines import ENGINES

    known = ENGINES.names()
    for backend in backends:
        if backend not in known:
            raise DeployBenchError(f"unknown backend {backend!r}; choose from: {', '.join(known)}")


def check_precisions(precisions: Sequence[str]) -> None:
    for precision in precisions:
        if precision not in PRECISIONS:
            raise DeployBenchError(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")


def cell_formats(model: ModelInfo, backend: str) -> tuple[str, ...]:
    """The formats ``backend`` runs for ``model``, in the engine's order: from a PyTorch source, each of
    its formats a converter produces; from a file, the file's own format and what the file converts to."""
    from deploybench.converters import CONVERSIONS_FROM_FILE, CONVERTERS
    from deploybench.engines import engine_class

    try:
        runs = engine_class(backend).formats
    except DeployBenchError:
        raise
    except Exception:  # the engine's module is broken: no cell can run it, and `backends` says why
        return ()
    if model.torch_source:
        producible = set(CONVERTERS.names())
    else:
        producible = {model.source_format, *CONVERSIONS_FROM_FILE.get(model.source_format, ())}
    return tuple(fmt for fmt in runs if fmt in producible)


def plan_cells(models: Iterable[ModelInfo | ModelSpec], backends: Sequence[str], precisions: Sequence[str],
               formats: Sequence[str] | None = None, include_unsupported: bool = False, sweep=None) -> list[Cell]:
    """Every compatible cell, in model / backend / format / precision order, each at every combination of
    ``sweep`` (a ``settings.Sweep``: batch sizes, dims, threads, shapes) when given.

    Precisions a backend's engine class does not offer are left out, unless ``include_unsupported``:
    then they stay, for the pipeline to report as skipped with the reason (a full matrix shows every
    asked cell). An unknown backend or precision is a one-line ``DeployBenchError``.
    """
    from deploybench.engines import engine_class

    check_backends(backends)
    check_precisions(precisions)
    cells: list[Cell] = []
    for model in models:
        info = model if isinstance(model, ModelInfo) else ModelInfo.of(model)
        for backend in backends:
            try:
                offered = engine_class(backend).precisions
            except Exception:  # broken engine module: cell_formats plans nothing for it
                offered = ()
            for fmt in cell_formats(info, backend):
                if formats is not None and fmt not in formats:
                    continue
                cells.extend(Cell(info.name, fmt, backend, precision) for precision in precisions
                             if include_unsupported or precision in offered)
    cells = list(dict.fromkeys(cells))
    if sweep is None:
        return cells
    # A backend that runs the artifact's own shapes has no dynamic variant: it would measure the same twice.
    compiles = {backend: _compiles_for_shapes(backend) for backend in backends}
    return [c for c in sweep.expand(cells) if c.shapes == STATIC or compiles[c.backend]]


def _compiles_for_shapes(backend: str) -> bool:
    from deploybench.engines import engine_class

    try:
        return bool(engine_class(backend).compiles_for_shapes)
    except Exception:  # a broken engine module plans no cell anyway
        return False


def select_shard(cells: Sequence[Cell], index: int, count: int, universe: Iterable[str] = ()) -> list[Cell]:
    """The cells of shard ``index`` of ``count``, numbered from 1 as CI matrices number their jobs.

    The cells are ordered by a stable hash of ``cell.id`` and dealt round-robin, so shard sizes differ
    by at most one, a cell's shard depends only on the set of planned cells (never on the machine or
    the order they were planned in), and the shards partition the cells. The shard keeps the planned
    order of its cells. ``universe`` adds cell ids dealt as if planned: two sides of a comparison that
    plan different cells (a backend new in one of them) deal their union, so a cell planned on both
    lands in the same shard on both."""
    if count < 1 or not 1 <= index <= count:
        raise DeployBenchError(f"shard {index}/{count} is out of range: use 1 <= index <= count, e.g. 1/4")
    ids = {c.id for c in cells} | set(universe)
    ranked = sorted(ids, key=lambda cid: (hashlib.sha256(cid.encode()).hexdigest(), cid))
    mine = {cid for rank, cid in enumerate(ranked) if rank % count == index - 1}
    return [c for c in cells if c.id in mine]


def parse_shard(text: str) -> tuple[int, int]:
    """'1/4' -> (1, 4): shard i of n, 1 <= i <= n; a one-line error for anything else.

    The CLI's ``--shard`` and the pytest plugin's ``--shard`` both read it, so a CI matrix job
    numbered i runs the same cells whichever of the two it calls."""
    index, _, count = str(text).partition("/")
    try:
        pair = int(index), int(count)
    except ValueError:
        pair = (0, 0)
    if pair[1] < 1 or not 1 <= pair[0] <= pair[1]:
        raise DeployBenchError(f"bad --shard {text!r}: write i/n with 1 <= i <= n, e.g. 1/4")
    return pair


__all__ = ["ModelInfo", "cell_formats", "check_backends", "check_precisions", "parse_shard", "plan_cells",
           "select_shard"]
