"""The regression gate: compare a current run with a baseline, cell by cell, and decide.

Plain module: no pytest import (the plugin calls ``gate_results``).

Why not a test on two runs' samples: on a shared CI box the median of a run drifts between runs
(measured here: 6.8 % coefficient of variation of run medians, a machine that flips between two
speed states, A/A median ratios up to 22 %), while the confidence interval of one run's median is
about +-0.5 % wide. A Mann-Whitney or bootstrap test on two separate runs calls that drift a
regression. The gate therefore cancels or measures drift, in three modes, best first:

``interleaved``  the baseline and current artifacts run in the SAME process in alternating
                 blocks (A B B A ...); each block pair gives a ratio of block medians, drift
                 common to both cancels, and the CI of the median of block ratios is
                 distribution-free (binomial order statistics).
``history``      the current median is judged against the spread of run medians stored for
                 this cell (``--history``): drift is measured, not assumed. Fewer than
                 ``MIN_HISTORY_RUNS`` runs -> the spread is unknown -> small changes are
                 ``inconclusive``.
``two-run``      only two runs: the within-run CI is widened by a drift allowance (default
                 20 %, above the worst A/A ratio of the design measurement; doubled when a run
                 was itself unstable); big changes are ``regression``, small ones
                 ``inconclusive``. Drift on a loaded box can exceed any fixed allowance: use
                 ``--interleave`` or ``--history`` for a gate you can trust.

The verdict rule, on the ratio current/baseline with interval [low, high] widened by drift:
``regression`` when low > 1 + threshold/2 and high > 1 + threshold (surely slower, and possibly
by the threshold or more); ``improvement`` symmetrically; ``unchanged`` when the whole interval
lies within [1/(1+threshold), 1+threshold]; otherwise ``inconclusive``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.spec import DeployBenchError, Result

REGRESSION, IMPROVEMENT, UNCHANGED, INCONCLUSIVE = "regression", "improvement", "unchanged", "inconclusive"
MODE_INTERLEAVED, MODE_HISTORY, MODE_TWO_RUN = "interleaved", "history", "two-run"

DEFAULT_THRESHOLD = 0.05
DEFAULT_MEMORY_THRESHOLD = 0.10
# Above the worst A/A median ratio measured on this class of machine (22 % / 1.2 < 1 + 5 % / 2).
DEFAULT_DRIFT_ALLOWANCE = 0.20
MIN_HISTORY_RUNS = 5
# A history band is the max of the stored run medians or 3 robust sigmas above their centre,
# whichever is wider; a 1 % floor keeps a too-quiet history from claiming no drift at all.
HISTORY_SIGMAS = 3.0
HISTORY_MIN_SPREAD = 0.01
CONFIDENCE = 0.99
# Absolute drop of the accuracy figure (metric, top-1 agreement, cosine) allowed per precision.
DEFAULT_ACCURACY_THRESHOLDS = {"fp32": 0.001, "fp16": 0.005, "bf16": 0.01, "int8": 0.01}


@dataclass
class Verdict:
    """One gated figure of one cell: ``verdict`` with the ratio current/baseline and its interval."""

    cell: str
    metric: str  # "latency", "memory" or "accuracy:<figure>"
    verdict: str
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    baseline: float | None = None
    current: float | None = None
    mode: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"cell": self.cell, "metric": self.metric, "verdict": self.verdict, "ratio": self.ratio,
                "ci": list(self.ci) if self.ci else None, "baseline": self.baseline, "current": self.current,
                "mode": self.mode, "reason": self.reason}


@dataclass
class GateSettings:
    threshold: float = DEFAULT_THRESHOLD
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD
    accuracy_thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ACCURACY_THRESHOLDS))
    drift_allowance: float = DEFAULT_DRIFT_ALLOWANCE
    confidence: float = CONFIDENCE
    min_history_runs: int = MIN_HISTORY_RUNS

    def __post_init__(self):
        for name in ("threshold", "memory_threshold", "drift_allowance"):
            value = getattr(self, name)
            if not 0 <= value < 10:
                raise DeployBenchError(f"{name.replace('_', '-')} {value} is out of range; give a fraction like 0.05 "
                                       "or a percentage like 5%")
        if not 0.5 <= self.confidence < 1:
            raise DeployBenchError(f"confidence {self.confidence} must lie in [0.5, 1), e.g. 0.99")


# ---------------------------------------------------------------------------------------------
# statistics (pure arithmetic)
# ---------------------------------------------------------------------------------------------

def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, low, high): the distribution-free CI of a median from binomial order statistics.

    With fewer values than the confidence allows, the interval is the full range of the values.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = x.size
    if n == 0:
        raise DeployBenchError("no values to take a median of")
    centre = float(np.median(x))
    if n < 3:
        return centre, float(x[0]), float(x[-1])
    from scipy.stats import binom

    # the largest k with P(Binom(n, 1/2) < k) <= (1 - confidence) / 2: [x_(k), x_(n-k+1)] covers the median
    tail = (1 - confidence) / 2
    k = int(binom.ppf(tail, n, 0.5))
    while k > 0 and binom.cdf(k - 1, n, 0.5) > tail:
        k -= 1
    k = max(k, 1)
    return centre, float(x[k - 1]), float(x[n - k])


def two_sample_ratio_ci(baseline: Sequence[float], current: Sequence[float],
                        confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median(current)/median(baseline), low, high) treating the two sample lists as independent.

    The interval combines each median's order-statistic CI on the log scale; it describes
    within-run noise only (drift between runs is added by the caller).
    """
    b_mid, b_lo, b_hi = median_ci(baseline, confidence)
    c_mid, c_lo, c_hi = median_ci(current, confidence)
    if b_mid <= 0 or c_mid <= 0:
        raise DeployBenchError("latency medians must be positive to be compared")
    ratio = c_mid / b_mid
    # each CI half-width in log space, combined in quadrature (independent runs)
    b_w = max(math.log(b_hi / b_mid) if b_lo > 0 else 0.0, math.log(b_mid / b_lo) if b_lo > 0 else 0.0)
    c_w = max(math.log(c_hi / c_mid) if c_lo > 0 else 0.0, math.log(c_mid / c_lo) if c_lo > 0 else 0.0)
    width = math.hypot(b_w, c_w)
    return ratio, ratio * math.exp(-width), ratio * math.exp(width)


def ratio_verdict(low: float, high: float, threshold: float) -> str:
    """The verdict of a ratio interval [low, high] (current/baseline, bigger is worse) against ``threshold``."""
    upper, half = 1 + threshold, 1 + threshold / 2
    if low > half and high > upper:
        return REGRESSION
    if high < 1 / half and low < 1 / upper:
        return IMPROVEMENT
    if low >= 1 / upper and high <= upper:
        return UNCHANGED
    return INCONCLUSIVE


def history_band(run_medians: Sequence[float]) -> tuple[float, float, float]:
    """(centre, low, high) of the run medians a history holds: where an unchanged run's median falls."""
    medians = np.asarray([m for m in run_medians if m and m > 0], dtype=np.float64)
    if medians.size == 0:
        raise DeployBenchError("no run medians in the history")
    logs = np.log(medians)
    centre = float(np.median(logs))
    spread = max(1.4826 * float(np.median(np.abs(logs - centre))), HISTORY_MIN_SPREAD)
    low = min(float(logs.min()), centre - HISTORY_SIGMAS * spread)
    high = max(float(logs.max()), centre + HISTORY_SIGMAS * spread)
    return math.exp(centre), math.exp(low), math.exp(high)


def compare_interleaved(block_ratios: Sequence[float], threshold: float = DEFAULT_THRESHOLD,
                        confidence: float = CONFIDENCE) -> tuple[str, float, float, float]:
    """(verdict, median block ratio, low, high) of block ratios current/baseline from ``interleave``."""
    ratio, low, high = median_ci(block_ratios, confidence)
    return ratio_verdict(low, high, threshold), ratio, low, high


def _unstable(samples: Sequence[float]) -> bool:
    from deploybench.harness.measure.stats import is_unstable, latency_stats

    return len(samples) >= 5 and is_unstable(latency_stats(samples))


def compare_two_runs(baseline_samples: Sequence[float], current_samples: Sequence[float],
                     threshold: float = DEFAULT_THRESHOLD, drift_allowance: float = DEFAULT_DRIFT_ALLOWANCE,
                     confidence: float = CONFIDENCE) -> tuple[str, float, float, float]:
    """(verdict, ratio of medians, low, high): the within-run CI widened by the unknown drift between runs.

    A run that was itself unstable (``stats.is_unstable``: contention while it ran) doubles the
    allowance: the box that disturbed its samples moves its median too. ``unchanged`` is never
    claimed here (two runs cannot show the drift is small); a small change is ``inconclusive``.
    """
    ratio, low, high = two_sample_ratio_ci(baseline_samples, current_samples, confidence)
    if _unstable(baseline_samples) or _unstable(current_samples):
        drift_allowance *= 2
    low, high = low / (1 + drift_allowance), high * (1 + drift_allowance)
    verdict = ratio_verdict(low, high, threshold)
    return (INCONCLUSIVE if verdict == UNCHANGED and drift_allowance > threshold else verdict), ratio, low, high


def compare_with_history(history_medians: Sequence[float], current_samples: Sequence[float],
                         threshold: float = DEFAULT_THRESHOLD, confidence: float = CONFIDENCE,
                         min_runs: int = MIN_HISTORY_RUNS,
                         drift_allowance: float = DEFAULT_DRIFT_ALLOWANCE) -> tuple[str, float, float, float]:
    """(verdict, ratio to the history's centre, low, high) of the current samples against stored run medians.

    The interval is the current median's CI divided by the history band; with fewer than
    ``min_runs`` stored medians the spread is unknown and the two-run drift allowance applies.
    """
    centre, band_low, band_high = history_band(history_medians)
    current, c_low, c_high = median_ci(current_samples, confidence)
    ratio = current / centre
    if len(history_medians) < min_runs:
        low, high = ratio * (c_low / current) / (1 + drift_allowance), ratio * (c_high / current) * (1 + drift_allowance)
        verdict = ratio_verdict(low, high, threshold)
        return (INCONCLUSIVE if verdict == UNCHANGED else verdict), ratio, low, high
    low, high = c_low / band_high, c_high / band_low
    verdict = ratio_verdict(low, high, threshold)
    if verdict == INCONCLUSIVE and c_low >= band_low / (1 + threshold) and c_high <= band_high * (1 + threshold):
        verdict = UNCHANGED  # inside what the history shows an unchanged run does
    return verdict, ratio, low, high


# ---------------------------------------------------------------------------------------------
# interleaving (runs the two artifacts; imports engines lazily)
# ---------------------------------------------------------------------------------------------

def interleave(run_baseline: Callable[[], Any], run_current: Callable[[], Any], blocks: int = 30,
               block_s: float = 0.03, min_block_calls: int = 5, warmup_s: float = 0.2) -> list[float]:
    """Block ratios current/baseline of two callables run alternately in this process.

    Each of ``blocks`` pairs times one block of each callable (the order flips every pair, A B B A,
    so a linear drift cancels too); a block is ``max(min_block_calls, block_s / call time)`` calls
    and its statistic is the median call time. Returns the list of ratios.
    """
    clock = time.perf_counter

    def timed_block(fn: Callable[[], Any], calls: int) -> float:
        samples = []
        for _ in range(calls):
            start = clock()
            fn()
            samples.append(clock() - start)
        return float(np.median(samples))

    for fn in (run_baseline, run_current):  # warm both, and measure a call for the block size
        end = clock() + warmup_s
        fn()
        while clock() < end:
            fn()
    pilot = max(timed_block(run_baseline, 3), timed_block(run_current, 3), 1e-6)
    calls = max(min_block_calls, int(block_s / pilot))
    ratios = []
    for index in range(blocks):
        if index % 2 == 0:
            base = timed_block(run_baseline, calls)
            cur = timed_block(run_current, calls)
        else:
            cur = timed_block(run_current, calls)
            base = timed_block(run_baseline, calls)
        ratios.append(cur / base)
    return ratios


def interleave_until_decided(run_baseline: Callable[[], Any], run_current: Callable[[], Any],
                             threshold: float = DEFAULT_THRESHOLD, confidence: float = CONFIDENCE,
                             blocks: int = 30, max_blocks: int = 90) -> list[float]:
    """Block ratios from ``interleave``, extended by ``blocks`` more while the verdict is inconclusive.

    A noisy box widens the CI of the first 30 pairs; more pairs narrow it. The extension cannot
    turn an A/A comparison into a regression: that needs the CI's low end above 1 + threshold/2.
    """
    ratios = interleave(run_baseline, run_current, blocks=blocks)
    while len(ratios) < max_blocks and compare_interleaved(ratios, threshold, confidence)[0] == INCONCLUSIVE:
        ratios += interleave(run_baseline, run_current, blocks=min(blocks, max_blocks - len(ratios)),
                             warmup_s=0.05)
    return ratios


def _engine_for(result: Result, threads: int | None):
    """A loaded engine and seeded inputs for the artifact a Result measured (rebuilt if not on disk)."""
    from deploybench.converters import artifact_from_path, deploy_model
    from deploybench.engines import create_deployer
    from deploybench.models import resolve_ref

    extra = result.extra or {}
    path = extra.get("artifact_path")
    cell = result.cell
    if cell.format == "torch" or not path or not Path(path).exists():
        ref = extra.get("model_ref") or cell.model
        spec = resolve_ref(ref)
        if cell.format == "torch":
            engine = create_deployer(spec, backend=cell.backend, precision=cell.precision, threads=threads)
            return engine, spec.make_inputs(seed=int(extra.get("seed", 0)))
        artifact = deploy_model(spec, cell.format, precision=cell.precision)
        inputs = spec.make_inputs(seed=int(extra.get("seed", 0)))
    else:
        artifact = artifact_from_path(Path(path))
        rng = np.random.default_rng(int(extra.get("seed", 0)))
        inputs = {t.name: t.random(rng) for t in artifact.inputs}
    engine = create_deployer(artifact, backend=cell.backend, precision=cell.precision, threads=threads)
    return engine, inputs


def interleave_results(baseline: Result, current: Result, threads: int | None = None,
                       blocks: int = 30, threshold: float = DEFAULT_THRESHOLD) -> list[float]:
    """Block ratios of the current cell's artifact against the baseline's, run interleaved here."""
    base_engine, base_inputs = _engine_for(baseline, threads)
    try:
        cur_engine, cur_inputs = _engine_for(current, threads)
        try:
            return interleave_until_decided(lambda: base_engine.infer(base_inputs),
                                            lambda: cur_engine.infer(cur_inputs), threshold=threshold,
                                            blocks=blocks, max_blocks=3 * blocks)
        finally:
            cur_engine.close()
    finally:
        base_engine.close()


# ---------------------------------------------------------------------------------------------
# gating two sets of results
# ---------------------------------------------------------------------------------------------

def _median_of(result: Result) -> float | None:
    if result.samples_ms:
        return float(np.median(result.samples_ms))
    return result.latency_ms.median if result.latency_ms else None


def _latency_verdict(cell_id: str, base: Result, cur: Result, settings: GateSettings,
                     history: Sequence[float] | None, block_ratios: Sequence[float] | None) -> Verdict | None:
    base_median, cur_median = _median_of(base), _median_of(cur)
    if base_median is None or cur_median is None:
        return None
    if block_ratios:
        verdict, ratio, low, high = compare_interleaved(block_ratios, settings.threshold, settings.confidence)
        return Verdict(cell_id, "latency", verdict, ratio, (low, high), base_median, cur_median, MODE_INTERLEAVED,
                       f"{len(block_ratios)} interleaved block pairs")
    cur_samples = cur.samples_ms or [cur_median]
    if history:
        verdict, ratio, low, high = compare_with_history(history, cur_samples, settings.threshold,
                                                         settings.confidence, settings.min_history_runs,
                                                         settings.drift_allowance)
        note = f"against {len(history)} stored runs"
        if len(history) < settings.min_history_runs:
            note += (f" (fewer than {settings.min_history_runs}: drift unknown, "
                     f"allowance {settings.drift_allowance:.0%})")
        return Verdict(cell_id, "latency", verdict, ratio, (low, high), base_median, cur_median, MODE_HISTORY, note)
    base_samples = base.samples_ms or [base_median]
    verdict, ratio, low, high = compare_two_runs(base_samples, cur_samples, settings.threshold,
                                                 settings.drift_allowance, settings.confidence)
    note = f"two runs: drift allowance {settings.drift_allowance:.0%}"
    if verdict == INCONCLUSIVE:
        note += "; use --interleave or --history to decide a small change"
    return Verdict(cell_id, "latency", verdict, ratio, (low, high), base_median, cur_median, MODE_TWO_RUN, note)


def _memory_verdict(cell_id: str, base: Result, cur: Result, settings: GateSettings) -> Verdict | None:
    if not base.peak_rss_mb or not cur.peak_rss_mb:
        return None
    ratio = cur.peak_rss_mb / base.peak_rss_mb
    limit = 1 + settings.memory_threshold
    verdict = REGRESSION if ratio > limit else IMPROVEMENT if ratio < 1 / limit else UNCHANGED
    return Verdict(cell_id, "memory", verdict, ratio, None, base.peak_rss_mb, cur.peak_rss_mb, "",
                   f"peak RSS MB, threshold +{settings.memory_threshold:.0%}")


_ACCURACY_FIGURES = ("metric_value", "top1_agreement", "cosine")


def _accuracy_verdicts(cell_id: str, base: Result, cur: Result, settings: GateSettings) -> list[Verdict]:
    if base.accuracy is None or cur.accuracy is None:
        return []
    allowed = settings.accuracy_thresholds.get(cur.cell.precision,
                                               DEFAULT_ACCURACY_THRESHOLDS.get(cur.cell.precision, 0.01))
    verdicts = []
    for figure in _ACCURACY_FIGURES:
        before, after = getattr(base.accuracy, figure), getattr(cur.accuracy, figure)
        if before is None or after is None:
            continue
        drop = before - after
        name = cur.accuracy.metric if figure == "metric_value" and cur.accuracy.metric else figure
        verdict = REGRESSION if drop > allowed else IMPROVEMENT if drop < -allowed else UNCHANGED
        verdicts.append(Verdict(cell_id, f"accuracy:{name}", verdict, (after / before) if before else None, None,
                                before, after, "", f"drop {drop:+.4f}, allowed {allowed:g} for {cur.cell.precision}"))
    return verdicts


def gate_results(baseline: Iterable[Result], current: Iterable[Result], settings: GateSettings | None = None,
                 history: Mapping[str, Sequence[float]] | None = None,
                 block_ratios: Mapping[str, Sequence[float]] | None = None) -> list[Verdict]:
    """Verdicts for every cell measured (status ok) in both ``baseline`` and ``current``.

    ``history`` maps a cell id to stored run medians (ms); ``block_ratios`` maps a cell id to the
    ratios of an interleaved re-run. Latency, memory and each accuracy figure get a verdict.
    """
    settings = settings or GateSettings()
    base_by_id = {r.cell.id: r for r in baseline if r.ok}
    verdicts: list[Verdict] = []
    for cur in current:
        cell_id = cur.cell.id
        base = base_by_id.get(cell_id)
        if base is None or not cur.ok:
            continue
        latency = _latency_verdict(cell_id, base, cur, settings, (history or {}).get(cell_id),
                                   (block_ratios or {}).get(cell_id))
        if latency:
            verdicts.append(latency)
        memory = _memory_verdict(cell_id, base, cur, settings)
        if memory:
            verdicts.append(memory)
        verdicts.extend(_accuracy_verdicts(cell_id, base, cur, settings))
    return verdicts


def has_regression(verdicts: Iterable[Verdict]) -> bool:
    return any(v.verdict == REGRESSION for v in verdicts)


def verdict_table(verdicts: Sequence[Verdict], markdown: bool = False) -> str:
    """The verdicts as a text (or GitHub Markdown) table, regressions first."""
    from tabulate import tabulate

    order = {REGRESSION: 0, INCONCLUSIVE: 1, IMPROVEMENT: 2, UNCHANGED: 3}
    rows = []
    for v in sorted(verdicts, key=lambda v: (order.get(v.verdict, 4), v.cell, v.metric)):
        ratio = "–" if v.ratio is None else f"{v.ratio:.3f}"
        if v.ci:
            ratio += f" [{v.ci[0]:.3f}, {v.ci[1]:.3f}]"
        rows.append([v.cell, v.metric, v.verdict, ratio, _fmt(v.baseline), _fmt(v.current), v.mode, v.reason])
    headers = ["cell", "figure", "verdict", "ratio [CI]", "baseline", "current", "mode", "note"]
    return tabulate(rows, headers=headers, tablefmt="github" if markdown else "simple")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


# ---------------------------------------------------------------------------------------------
# reading runs, and the CLI
# ---------------------------------------------------------------------------------------------

def load_run(ref: str, storage: str | Path = ".benchmarks") -> tuple[list[Result], Path]:
    """(results, path) of a pytest-benchmark JSON, a ``deploybench run`` JSON, or a storage id like ``0001``."""
    path = Path(ref)
    if not path.is_file() and ref.isdigit():
        from deploybench.harness.results.history import find_run

        path = find_run(ref, storage)
    from deploybench.harness.report.render import load_results_file

    results, _machine, _settings = load_results_file(path)
    return results, path


def history_medians(storage: str | Path, exclude: Iterable[Path] = (), machine: str | None = None
                    ) -> dict[str, list[float]]:
    """{cell id: [median ms per stored run, oldest first]} of the runs in ``storage`` except ``exclude``.

    With ``machine``, only that machine's runs count: another machine's speed is not drift.
    """
    from deploybench.harness.results.history import list_runs

    skip = {Path(p).resolve() for p in exclude}
    medians: dict[str, list[float]] = {}
    for run in list_runs(storage, warn=False):
        if Path(run.path).resolve() in skip or (machine and run.machine and run.machine != machine):
            continue
        for result in run.results():
            median = _median_of(result) if result.ok else None
            if median:
                medians.setdefault(result.cell.id, []).append(median)
    return medians


def _machine_of(path: Path, storage: str | Path) -> str | None:
    from deploybench.harness.results.history import list_runs

    for run in list_runs(path, warn=False):
        folder = Path(path).resolve().parent
        if folder.parent == Path(storage).resolve():
            return folder.name  # a pytest-benchmark storage file: its machine folder
        return run.machine or None
    return None


def parse_fraction(text: str | float) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; a one-line error otherwise."""
    if isinstance(text, (int, float)):
        return float(text)
    raw = str(text).strip()
    try:
        return float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise DeployBenchError(f"threshold {text!r} is not a number; write 5% or 0.05") from None


def parse_accuracy_thresholds(text: str | None) -> dict[str, float]:
    """'0.02' (every precision) or 'int8=0.02,fp16=0.005' -> {precision: allowed drop}."""
    thresholds = dict(DEFAULT_ACCURACY_THRESHOLDS)
    if not text:
        return thresholds
    for part in str(text).split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return {p: parse_fraction(key) for p in thresholds}
        thresholds[key.strip()] = parse_fraction(value)
    return thresholds


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", help="pytest-benchmark JSON, `deploybench run` JSON, or a storage id like 0001")
    parser.add_argument("current", help="the run to judge, in the same forms")
    parser.add_argument("--threshold", default="5%", help="latency slowdown that counts (default 5%%)")
    parser.add_argument("--memory-threshold", default="10%", help="peak RSS growth that counts (default 10%%)")
    parser.add_argument("--accuracy-threshold", default=None,
                        help="allowed accuracy drop: one value, or per precision 'int8=0.02,fp16=0.005'")
    parser.add_argument("--drift-allowance", default=f"{DEFAULT_DRIFT_ALLOWANCE:.0%}",
                        help="run-to-run drift assumed between two runs without history (default 20%%)")
    parser.add_argument("--interleave", action="store_true",
                        help="re-run both artifacts interleaved in this process to cancel drift")
    parser.add_argument("--blocks", type=int, default=30,
                        help="block pairs for --interleave (default 30; up to 3x while inconclusive)")
    parser.add_argument("--threads", type=int, default=None, help="threads per engine for --interleave")
    parser.add_argument("--history", default=None, metavar="STORAGE",
                        help="pytest-benchmark storage whose stored runs measure the drift (e.g. .benchmarks)")
    parser.add_argument("--storage", default=".benchmarks", help="where storage ids are looked up")
    parser.add_argument("--markdown", default=None, metavar="PATH", help="write the verdict table as Markdown")


def run_gate(baseline_ref: str, current_ref: str, settings: GateSettings, storage: str | Path = ".benchmarks",
             history_storage: str | Path | None = None, interleaved: bool = False, blocks: int = 30,
             threads: int | None = None, log: Callable[[str], Any] = print) -> list[Verdict]:
    """Load two runs and gate them (see the module docstring for the modes); returns the verdicts."""
    baseline, base_path = load_run(baseline_ref, storage)
    current, cur_path = load_run(current_ref, storage)
    history = (history_medians(history_storage, exclude=[cur_path], machine=_machine_of(cur_path, history_storage))
               if history_storage else None)
    ratios = None
    if interleaved:
        ratios = {}
        base_by_id = {r.cell.id: r for r in baseline if r.ok}
        for cur in current:
            base = base_by_id.get(cur.cell.id)
            if base is None or not cur.ok:
                continue
            try:
                ratios[cur.cell.id] = interleave_results(base, cur, threads=threads, blocks=blocks,
                                                         threshold=settings.threshold)
            except DeployBenchError as exc:
                log(f"deploybench gate: {cur.cell.id}: cannot interleave ({exc}); judged without it")
    return gate_results(baseline, current, settings, history=history, block_ratios=ratios)


def gate_command(args: argparse.Namespace) -> int:
    """`deploybench gate`: 0 when nothing regressed, 1 on a regression, 2 on bad input."""
    try:
        settings = GateSettings(threshold=parse_fraction(args.threshold),
                                memory_threshold=parse_fraction(args.memory_threshold),
                                accuracy_thresholds=parse_accuracy_thresholds(args.accuracy_threshold),
                                drift_allowance=parse_fraction(getattr(args, "drift_allowance", "20%")))
        verdicts = run_gate(args.baseline, args.current, settings, storage=getattr(args, "storage", ".benchmarks"),
                            history_storage=getattr(args, "history", None),
                            interleaved=getattr(args, "interleave", False), blocks=getattr(args, "blocks", 30),
                            threads=getattr(args, "threads", None))
    except DeployBenchError as exc:
        print(f"deploybench gate: {exc}", file=sys.stderr)
        return 2
    if not verdicts:
        print("deploybench gate: no cell was measured in both runs", file=sys.stderr)
    print(verdict_table(verdicts))
    if getattr(args, "markdown", None):
        Path(args.markdown).write_text(markdown_verdicts(verdicts))
    regressed = [v for v in verdicts if v.verdict == REGRESSION]
    print(f"deploybench gate: {len(regressed)} regression(s) in {len({v.cell for v in verdicts})} cell(s)")
    return 1 if regressed else 0


def markdown_verdicts(verdicts: Sequence[Verdict]) -> str:
    """A Markdown section: a one-line summary and the verdict table."""
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no comparable cells"
    return f"## deploybench gate\n\n**{summary}**\n\n{verdict_table(verdicts, markdown=True)}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploybench gate", description="Gate a run against a baseline.")
    add_gate_arguments(parser)
    return gate_command(parser.parse_args(argv))


__all__ = ["GateSettings", "Verdict", "add_gate_arguments", "compare_interleaved", "compare_two_runs",
           "compare_with_history", "gate_command", "gate_results", "has_regression", "history_band",
           "interleave", "interleave_until_decided", "load_run", "median_ci", "parse_fraction", "ratio_verdict", "run_gate", "verdict_table"]

if __name__ == "__main__":
    sys.exit(main())
