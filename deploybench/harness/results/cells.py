"""What every reader of a run's cells shares: the one ``SCHEMA`` name of a run's JSON, the one rule for
the best cell, and the one median a stored cell is compared by."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from deploybench.spec import SINGLE_STREAM, Result

SCHEMA = "deploybench.matrix/1"


def best_cell(results: Iterable[Result], model: str | None = None) -> Result | None:
    """The ok cell (of ``model`` when given) with the lowest median latency among those that pass
    accuracy (``Result.passes_accuracy``), or None. A fast cell whose outputs are wrong is no choice.
    Among offline and server cells only, the one with the highest throughput: their question is how
    many items per second, not how long one takes."""
    candidates = [r for r in results if r.ok and r.passes_accuracy and (model is None or r.cell.model == model)]
    if candidates and all(r.cell.scenario != SINGLE_STREAM for r in candidates):
        return max((r for r in candidates if r.throughput_ips), key=lambda r: r.throughput_ips, default=None)
    timed = [r for r in candidates if r.latency_ms is not None and r.latency_ms.median is not None]
    return min(timed, key=lambda r: r.latency_ms.median, default=None)


def median_ms(result: Result) -> float | None:
    """The median latency of a cell in ms: of its samples when it kept them (a stored run's figure the
    gate compares), else its ``latency_ms.median``; None when it has neither."""
    if result.samples_ms:
        return float(np.median(result.samples_ms))
    return result.latency_ms.median if result.latency_ms else None


__all__ = ["SCHEMA", "best_cell", "median_ms"]
