"""Plots of the offline and server scenarios: latency against throughput per cell, and the server curve
(p99 against offered rate, with the budget line and the rate found)."""

from __future__ import annotations

from collections.abc import Sequence

from deploybench.spec import OFFLINE, SERVER, SINGLE_STREAM, Result


def latency_throughput_svg(results: Sequence[Result], title: str) -> str:
    """Each ok cell of a model as a point: median latency per call against items per second; a single-stream
    cell and its offline twin joined by a line, so the price of throughput in latency shows."""
    from deploybench.harness.report.plots import BACKEND_COLORS, _FALLBACK_COLOR, _pyplot, _to_svg, mpl_text

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    points: dict[tuple, dict[str, tuple[float, float]]] = {}
    for r in results:
        if r.ok and r.latency_ms and r.throughput_ips and r.cell.scenario in (SINGLE_STREAM, OFFLINE):
            key = (r.cell.format, r.cell.backend, r.cell.precision, r.cell.dims, r.cell.threads, r.cell.shapes)
            points.setdefault(key, {})[r.cell.scenario] = (r.throughput_ips, r.latency_ms.median)
    for (fmt, backend, precision, *_), by_scenario in points.items():
        color = BACKEND_COLORS.get(backend, _FALLBACK_COLOR)
        ordered = [by_scenario[s] for s in (SINGLE_STREAM, OFFLINE) if s in by_scenario]
        ax.plot([x for x, _ in ordered], [y for _, y in ordered], color=color, alpha=0.5)
        for scenario, (x, y) in by_scenario.items():
            ax.scatter([x], [y], color=color, marker="o" if scenario == SINGLE_STREAM else "s", s=36,
                       label=mpl_text(f"{fmt}/{backend}/{precision} {scenario}"))
    ax.set_xlabel("throughput (items/s)")
    ax.set_ylabel("median latency per call (ms)")
    ax.set_title(mpl_text(title))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return _to_svg(fig)


def server_curve_svg(results: Sequence[Result], title: str) -> str:
    """p99 (arrival to completion) against offered rate for each server cell's trials, the budget as a line,
    overloaded trials hollow: where each curve crosses the line is the rate the cell reports."""
    from deploybench.harness.report.plots import BACKEND_COLORS, _FALLBACK_COLOR, _pyplot, _to_svg, mpl_text

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    budgets, seen = set(), {}
    for r in results:
        figures = r.scenario_figures
        if r.cell.scenario != SERVER or not figures.get("trials"):
            continue
        budgets.add(figures["p99_budget_ms"])
        trials = sorted(figures["trials"], key=lambda t: t["rate_per_s"])
        color = BACKEND_COLORS.get(r.cell.backend, _FALLBACK_COLOR)
        label = mpl_text(f"{r.cell.format}/{r.cell.backend}/{r.cell.precision}")
        nth = seen[r.cell.backend] = seen.get(r.cell.backend, -1) + 1  # one colour per backend, dashes apart
        ax.plot([t["rate_per_s"] for t in trials], [t["p99_ms"] for t in trials], color=color, label=label,
                linestyle=("-", "--", "-.", ":")[nth % 4])
        for t in trials:
            ax.scatter([t["rate_per_s"]], [t["p99_ms"]], color=color, s=30,
                       facecolors="none" if t.get("overloaded") else color)
        if figures.get("max_rate_per_s"):
            ax.axvline(figures["max_rate_per_s"], color=color, linestyle=":", linewidth=1)
    for budget in budgets:
        ax.axhline(budget, color="#444444", linestyle="--", linewidth=1, label=f"p99 budget {budget:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (requests/s, Poisson arrivals)")
    ax.set_ylabel("p99 latency, queueing included (ms)")
    ax.set_title(mpl_text(title))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return _to_svg(fig)


__all__ = ["latency_throughput_svg", "server_curve_svg"]
