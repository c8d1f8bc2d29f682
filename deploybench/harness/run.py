"""The public API that runs a matrix and compares its backends: ``run_deployment_benchmark`` (the cells
through the pipeline, in workers, returned as a ``Matrix``) and ``compare_backends``. Above both the
pipeline and the report, so neither imports the other."""

from __future__ import annotations

from collections.abc import Sequence

from deploybench.harness.pipeline.matrix import matrix_machine, run_matrix
from deploybench.harness.pipeline.settings import DEFAULT_BACKENDS, DEFAULT_PRECISIONS, RunSettings
from deploybench.harness.report.compare import Comparison, compare_backends
from deploybench.harness.report.matrix import Matrix


def run_deployment_benchmark(models, backends: Sequence[str] = DEFAULT_BACKENDS,
                             precisions: Sequence[str] = DEFAULT_PRECISIONS, settings: RunSettings | None = None,
                             progress: bool = True, shard: tuple[int, int] | None = None,
                             formats: Sequence[str] | None = None, verbose: bool = False,
                             resume: Matrix | None = None, targets: Sequence = ()) -> Matrix:
    """Run every compatible cell of ``models`` x ``backends`` x ``precisions`` and return the ``Matrix``
    (``matrix.table()`` prints it; ``matrix.save(path)`` writes the JSON).

    ``models``: zoo names, refs (``file.py:factory@1x3x64x64``, a model file) or ``ModelSpec`` objects
    (``model_from_module``); each is resolved and run in a worker process of its own, so a model that
    crashes fails its own cells only. ``shard=(index, count)`` runs one shard of the cells, numbered
    from 1. ``resume``: the matrix of an earlier, interrupted run: its cells are kept and only the
    missing ones run. Ctrl-C returns the cells finished so far, with ``incomplete`` saying so.
    ``targets``: machines to measure on (``deploybench.harness.remote.targets.Target``, ``None`` for this
    one); their cells carry the target (``Cell.target``) and the target's machine (``Result.machine_id``),
    and the matrix keeps each machine's block as a merged matrix does.
    """
    from deploybench.harness.measure.machine import machine_info

    run = run_matrix(models, backends, precisions, settings=settings, progress=progress, shard=shard,
                     formats=formats, verbose=verbose, resume=resume.results if resume is not None else (),
                     targets=targets)
    machine = matrix_machine(run.results, machine_info(), run.devices)
    return Matrix(results=run.results, machine=machine, settings=run.settings, incomplete=run.incomplete)


__all__ = ["Comparison", "Matrix", "compare_backends", "run_deployment_benchmark"]
