"""The figures a recommendation weighs for each cell, read once from its ``Result``: latency, throughput,
accuracy drop against the fp32 reference, peak memory and artifact size.

The accuracy drop is on the task metric when the cell has one (held-out top-1 for ``digits_cnn``,
mAP@0.5 for the detector): the reference's value minus the cell's. A detector records its reference's
mAP itself; a classifier's reference value is the torch fp32 cell's of the same model (its eager run
*is* the reference), else the best fp32 cell's, which makes every drop the larger, never the smaller.
A cell without a task metric falls back to cosine similarity with the reference (``1 - cosine``), or to
top-1 agreement when asked; the figure used is named in every table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deploybench.harness.recommend.budgets import AGREEMENT, AUTO, COSINE, METRIC, Budgets
from deploybench.spec import Result

REFERENCE_PRECISION = "fp32"


def group_key(result: Result) -> tuple[str, tuple[tuple[str, int], ...], str]:
    """The deployment a recommendation answers for: a model at its input sizes, on one machine. Threads,
    static or dynamic compiles, formats, backends and precisions are the choices within it; a batch of 8
    is another deployment than a batch of 1 (its latency is not comparable), so is another machine."""
    return result.cell.model, result.cell.dims, result.machine_id or ""


def group_name(key: tuple[str, tuple[tuple[str, int], ...], str]) -> str:
    """'resnet18', 'resnet18 b8', 'resnet18 @ machine-a'."""
    model, dims, machine = key
    sizes = " ".join(f"b{size}" if name == "batch" else f"{name}{size}" for name, size in dims)
    name = " ".join(filter(None, (model, sizes)))
    return f"{name} @ {machine}" if machine else name


@dataclass(frozen=True)
class AccuracyDrop:
    """How far a cell's accuracy fell below the reference's, on a 0..1 scale (None: not measured), the figure
    it was measured on, and in words how (``top1_accuracy 0.981 against 0.993 of torch fp32``)."""

    value: float | None
    figure: str
    basis: str
    task_metric: bool


@dataclass(frozen=True)
class CellFigures:
    """One ok cell's figures as a recommendation weighs them; None where the result has none."""

    result: Result
    median_ms: float | None
    p99_ms: float | None
    throughput_ips: float | None
    peak_mb: float | None
    size_mb: float | None
    drop: AccuracyDrop

    @property
    def cell_id(self) -> str:
        return self.result.cell.id


def reference_metric(rows: Sequence[Result]) -> tuple[float, str] | None:
    """(the reference's task metric, where it came from) among one group's cells, or None when no fp32 cell
    measured it: the torch fp32 cell's value, else the highest of the unpruned fp32 cells'."""
    fp32 = [r for r in rows if r.ok and r.cell.precision == REFERENCE_PRECISION and not r.cell.prune
            and r.accuracy is not None and r.accuracy.metric_value is not None]  # a pruned model is no reference
    torch = [r for r in fp32 if r.cell.format == "torch" and r.cell.backend == "torch"]
    if torch:
        return float(torch[0].accuracy.metric_value), f"the torch fp32 cell ({torch[0].cell.id})"
    if fp32:
        best = max(fp32, key=lambda r: r.accuracy.metric_value)
        return float(best.accuracy.metric_value), f"the best fp32 cell ({best.cell.id}; no torch fp32 cell)"
    return None


def accuracy_drop(result: Result, reference: tuple[float, str] | None, figure: str = AUTO) -> AccuracyDrop:
    """The ``AccuracyDrop`` of one cell: on the task metric (``figure`` auto or metric) when the cell has
    one and the reference's value is known, else on ``1 - cosine`` (auto, cosine) or ``1 - top-1
    agreement`` (agreement). A figure the cell lacks is a drop of None, said in ``basis``."""
    accuracy = result.accuracy
    if accuracy is None:
        return AccuracyDrop(None, figure if figure != AUTO else "accuracy", "no accuracy measured", False)
    name = accuracy.metric or "metric"
    if figure in (AUTO, METRIC) and accuracy.metric_value is not None:
        detection = accuracy.per_output.get("detection") or {}
        if detection.get("reference_map50") is not None and detection.get("map50_drop") is not None:
            reference_value = float(detection["reference_map50"])
            return AccuracyDrop(float(detection["map50_drop"]), name,
                                f"{name} {accuracy.metric_value:.4g} against the reference's {reference_value:.4g} "
                                f"on {detection.get('images', 'the')} held-out images", True)
        if reference is not None:
            value, source = reference
            return AccuracyDrop(value - float(accuracy.metric_value), name,
                                f"{name} {accuracy.metric_value:.4g} against {value:.4g} of {source}", True)
    if figure == METRIC:
        why = "no fp32 cell measured the reference's" if accuracy.metric_value is not None else "the cell has none"
        return AccuracyDrop(None, name, f"no task metric drop: {why}", False)
    if figure == AGREEMENT:
        if accuracy.top1_agreement is None:
            return AccuracyDrop(None, "top-1 agreement", "no top-1 agreement measured", False)
        return AccuracyDrop(1.0 - accuracy.top1_agreement, "top-1 agreement",
                            f"top-1 agreement {accuracy.top1_agreement:.4g} with {accuracy.reference or 'the reference'}",
                            False)
    if accuracy.cosine is None:
        return AccuracyDrop(None, COSINE, "no cosine similarity measured", False)
    fallback = "" if figure == COSINE or accuracy.metric_value is None else " (no fp32 cell measured the task metric)"
    return AccuracyDrop(max(0.0, 1.0 - accuracy.cosine), COSINE,
                        f"cosine {accuracy.cosine:.6g} with {accuracy.reference or 'the reference'}{fallback}", False)


def cell_figures(rows: Iterable[Result], budgets: Budgets) -> list[CellFigures]:
    """``CellFigures`` of the ok cells of one group that measured ``budgets.scenario``."""
    rows = list(rows)
    reference = reference_metric(rows)
    figures = []
    for r in rows:
        if not r.ok or r.cell.scenario != budgets.scenario:
            continue
        latency = r.latency_ms
        figures.append(CellFigures(
            result=r, median_ms=latency.median if latency else None, p99_ms=latency.p99 if latency else None,
            throughput_ips=r.throughput_ips, peak_mb=r.peak_rss_mb,
            size_mb=r.artifact_bytes / 1e6 if r.artifact_bytes is not None else None,
            drop=accuracy_drop(r, reference, budgets.accuracy_figure)))
    return figures


__all__ = ["AccuracyDrop", "CellFigures", "REFERENCE_PRECISION", "accuracy_drop", "cell_figures", "group_key",
           "group_name", "reference_metric"]
