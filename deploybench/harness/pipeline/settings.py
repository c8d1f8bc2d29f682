"""How a cell is measured: typed settings with one home for each default, and the command-line options
that set them, written once for both edges (``deploybench run`` and the pytest plugin).

``OPTIONS`` is read by argparse (the CLI) and by pytest's ``parser.addoption`` (the plugin), which
take the same keyword arguments; ``settings_from_options`` builds ``RunSettings`` from either.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploybench.harness.measure.process import DEFAULT_TIMEOUT_S
from deploybench.harness.pipeline.sweep_options import counts, fractions, option_values
from deploybench.harness.measure.timing import DEFAULT_CAP_OVER_MIN_TIME, DEFAULT_SLOW_MODEL_CAP_S, TimingRules
from deploybench.spec import (DYNAMIC, INT8_PRECISIONS, PRECISIONS, SCENARIOS, SERVER, SINGLE_STREAM, STATIC, Cell,
                              DeployBenchError, parse_csv, parse_fraction)

# What a run measures when nothing is named (the CLI's defaults and the pytest plugin's).
DEFAULT_MODELS = ("digits_cnn",)
DEFAULT_BACKENDS = ("torch", "onnxruntime", "openvino")
DEFAULT_PRECISIONS = ("fp32",)

# Seconds each pipeline stage of a cell may take (a conversion, the memory child, the timed loop...).
DEFAULT_STAGE_TIMEOUT_S = DEFAULT_TIMEOUT_S

TOLERANCE_ALIASES = {"top1": "top1_agreement", "metric": "metric_value", "cos": "cosine"}
TOLERANCE_KEYS = ("atol", "rtol", "cosine", "top1_agreement", "metric_value", "map_drop")


@dataclass(frozen=True)
class MemoryRules:
    """Peak RSS of load + ``runs`` inferences, in a fresh process per cell (off: no memory figure)."""

    enabled: bool = True
    runs: int = 10

    def __post_init__(self):
        if self.runs < 1:
            raise DeployBenchError(f"memory runs {self.runs} must be at least 1, e.g. 10")


SHAPES = (STATIC, DYNAMIC)


@dataclass(frozen=True)
class Sweep:
    """What each planned cell is measured at; every combination is a cell of its own (``Cell.dims``,
    ``threads``, ``shapes``, ``scenario``, ``prune``, ``calibration``). Empty: one plain cell, at the model's
    default sizes. Calibration sizes apply to int8 cells only: on a precision that does not calibrate they
    would measure the very same artifact again under another id, so they are not planned there."""

    batch_sizes: tuple[int, ...] = ()
    dims: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (("seq", (16, 64, 256)),)
    threads: tuple[int, ...] = ()
    shapes: tuple[str, ...] = (STATIC,)
    scenarios: tuple[str, ...] = (SINGLE_STREAM,)
    prunes: tuple[float, ...] = (0.0,)
    calibrations: tuple[int, ...] = (0,)

    def __post_init__(self):
        if not self.prunes or any(not 0.0 <= p < 1.0 for p in self.prunes):
            raise DeployBenchError(f"prune amounts {list(self.prunes)} must be fractions in [0, 1), e.g. --prune 0,0.25,0.5")
        if not self.calibrations or any(not isinstance(n, int) or n < 0 for n in self.calibrations):
            raise DeployBenchError(f"calibration sizes {list(self.calibrations)} must be whole numbers (0: the "
                                   "converter's default), e.g. --calibration-samples 64,256")
        sizes = [*self.batch_sizes, *self.threads, *(n for _, values in self.dims for n in values)]
        if any(not isinstance(n, int) or n < 1 for n in sizes):
            raise DeployBenchError(f"sweep sizes {sizes} must be positive integers, e.g. --batch-sizes 1,8,32")
        for kind, values, known in (("shapes", self.shapes, SHAPES), ("scenario", self.scenarios, SCENARIOS)):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise DeployBenchError(f"unknown {kind} {unknown or values!r}; choose from: {', '.join(known)}")
        if "batch" in dict(self.dims) and self.batch_sizes:
            raise DeployBenchError("the batch is swept twice: use --batch-sizes or --dims batch=..., not both")

    def variants(self) -> list[dict[str, Any]]:
        """The keyword arguments of ``Cell`` for each combination, in sweep order."""
        axes = ([("batch", self.batch_sizes)] if self.batch_sizes else []) + list(self.dims)
        dims_options = list(itertools.product(*[[(name, n) for n in values] for name, values in axes]))
        return [dict(dims=dims, threads=threads, shapes=shapes, scenario=scenario, prune=prune, calibration=samples)
                for dims in dims_options for threads in (self.threads or (0,))
                for shapes in self.shapes for scenario in self.scenarios
                for prune in self.prunes for samples in self.calibrations]

    def expand(self, cells: list[Cell]) -> list[Cell]:
        """Each planned cell at every combination of the sweep (a calibration size only on an int8 cell)."""
        expanded = [dataclasses.replace(cell, **{**variant, **({} if cell.precision in INT8_PRECISIONS else
                                                                {"calibration": 0})})
                    for cell in cells for variant in self.variants()]
        return list(dict.fromkeys(expanded))


@dataclass(frozen=True)
class ServerRules:
    """The server scenario: the highest Poisson arrival rate whose p99 (arrival to completion) stays
    within ``p99_budget_ms``; each trial runs ``trial_s`` seconds (and enough queries to bound a p99),
    the whole search at most ``max_time_s``."""

    p99_budget_ms: float | None = None
    trial_s: float = 3.0
    max_time_s: float = 120.0

    def __post_init__(self):
        if self.p99_budget_ms is not None and not self.p99_budget_ms > 0:
            raise DeployBenchError(f"p99 budget {self.p99_budget_ms} must be a positive number of ms, e.g. 20")
        if not self.trial_s > 0 or self.max_time_s < self.trial_s:
            raise DeployBenchError(f"server trials of {self.trial_s} s within {self.max_time_s} s: both positive, "
                                   "the trial the shorter")


@dataclass
class RunSettings:
    """Everything that decides how the cells of a run are measured. Validated on creation.

    ``threads`` None lets each backend choose; ``dims`` sets the size of dynamic axes ({"batch": 8}) and a
    cell's own ``dims`` and ``threads`` (a ``sweep``) win over both;
    ``tolerances`` overrides the accuracy tolerances per precision ({"int8": {"top1_agreement": 0.97}});
    ``timeout_s`` bounds each stage of a cell; ``max_memory_mb`` the resident memory of a model's worker
    and everything it started; ``in_process`` runs model code in this process (for a debugger): a
    crash in a model or backend then ends the whole run, and no limit applies.
    """

    threads: int | None = None
    seed: int = 0
    dims: dict[str, int] = field(default_factory=dict)
    timing: TimingRules = field(default_factory=TimingRules)
    memory: MemoryRules = field(default_factory=MemoryRules)
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)
    timeout_s: float = DEFAULT_STAGE_TIMEOUT_S
    max_memory_mb: float | None = None
    cache_dir: str | None = None
    in_process: bool = False
    calibration_data: str | None = None
    sweep: Sweep = field(default_factory=Sweep)
    server: ServerRules = field(default_factory=ServerRules)

    def __post_init__(self):
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise DeployBenchError(f"threads {self.threads!r} must be a positive integer, or None to let "
                                   "each backend choose")
        if self.timeout_s <= 0:
            raise DeployBenchError(f"timeout {self.timeout_s} must be positive (seconds per stage of a cell)")
        if SERVER in self.sweep.scenarios and self.server.p99_budget_ms is None:
            raise DeployBenchError("the server scenario needs a latency budget: add --p99-budget-ms, e.g. 20")
        if self.calibration_data is not None and not Path(self.calibration_data).is_file():
            raise DeployBenchError(f"--calibration-data {self.calibration_data} is not a file: give an .npz with one "
                                   "array per model input, samples along axis 0")
        if self.max_memory_mb is not None and self.max_memory_mb <= 0:
            raise DeployBenchError(f"max memory {self.max_memory_mb} must be a positive number of MB, e.g. 4096")
        bad_dims = {k: v for k, v in self.dims.items() if not isinstance(v, int) or v < 1}
        if bad_dims:
            raise DeployBenchError(f"dims {bad_dims} must map axis names to positive integers, e.g. {{'batch': 8}}")
        unknown = set(self.tolerances) - set(PRECISIONS)
        if unknown:
            raise DeployBenchError(f"tolerances for unknown precision(s) {sorted(unknown)}; use {', '.join(PRECISIONS)}")
        for precision, rules in self.tolerances.items():
            bad_keys = set(rules) - set(TOLERANCE_KEYS)
            if bad_keys:
                raise DeployBenchError(f"unknown tolerance key(s) {sorted(bad_keys)} for {precision}; use "
                                       f"{', '.join(TOLERANCE_KEYS)} (or top1, cos, metric)")

    def for_cell(self, cell: Cell) -> RunSettings:
        """These settings with the cell's own dims and threads applied."""
        if not cell.dims and not cell.threads:
            return self
        return dataclasses.replace(self, dims={**self.dims, **cell.dim_sizes}, threads=cell.threads or self.threads)

    def tolerance_overrides(self, precision: str, model_tolerances: Mapping[str, Mapping[str, float]]
                            ) -> dict[str, float]:
        """The criteria that override the defaults for ``precision``: the model's own, then this run's (an
        ``int8ac`` cell takes the int8 ones too: it is judged as int8)."""
        from deploybench.spec.tolerances import precision_overrides

        return precision_overrides(precision, model_tolerances, self.tolerances)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_tolerances(entries) -> dict[str, dict[str, float]]:
    """['int8:top1=0.97', 'fp16:cosine=0.999'] -> {'int8': {'top1_agreement': 0.97}, ...}."""
    tolerances: dict[str, dict[str, float]] = {}
    for entry in entries or ():
        for part in str(entry).split(","):
            precision, _, rule = part.strip().partition(":")
            key, _, value = rule.partition("=")
            try:
                number = float(value)
            except ValueError:
                raise DeployBenchError(f"bad --tolerance {part!r}: write precision:key=value, "
                                       "e.g. int8:top1=0.97") from None
            key = TOLERANCE_ALIASES.get(key.strip(), key.strip())
            tolerances.setdefault(precision.strip(), {})[key] = number
    return tolerances


def _positive(convert, noun: str, at_least_one: bool):
    """An argparse type: ``convert(text)``, refused with a message when not a number or not positive."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
        if value < 1 if at_least_one else not value > 0:  # `not >` also refuses nan
            raise argparse.ArgumentTypeError(f"{text!r} must be {'at least 1' if at_least_one else 'positive'}")
        return value

    return parse


positive_int = _positive(int, "whole number", at_least_one=True)
positive_float = _positive(float, "number", at_least_one=False)


def median_ci_fraction(text: str | float) -> float:
    """'2%' or 0.02 -> 0.02, the median's confidence half-width as a fraction of it (an argparse type)."""
    try:
        return parse_fraction(text, "--median-ci")
    except DeployBenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_ints(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32), each at least 1 and none twice (an argparse type)."""
    values = tuple(positive_int(part.strip()) for part in str(text).split(",") if part.strip())
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: write distinct whole numbers joined by commas, e.g. 1,8,32")
    return values


def parse_dim_sweep(text: str) -> tuple[str, tuple[int, ...]]:
    """'seq=16,64,256' -> ('seq', (16, 64, 256)): a dynamic axis and the sizes to measure it at."""
    name, _, sizes = str(text).partition("=")
    if not name.strip() or not sizes:
        raise argparse.ArgumentTypeError(f"{text!r}: write an axis name and its sizes, e.g. seq=16,64,256")
    return name.strip(), positive_ints(sizes)


def _choices(known: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(parse_csv(text))
        unknown = [v for v in values if v not in known]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(known)} (comma-separated)")
        return values

    return parse


@dataclass(frozen=True)
class Option:
    """One setting's command-line option: its flags on the CLI and under pytest, and argparse keywords."""

    cli: tuple[str, ...]
    pytest: tuple[str, ...]
    kwargs: dict[str, Any]

    @property
    def dest(self) -> str:
        return self.kwargs["dest"]


_TIMING, _MEMORY = TimingRules(), MemoryRules()

OPTIONS: tuple[Option, ...] = (
    Option(("--threads",), ("--threads",), dict(
        dest="threads", type=positive_ints, default=None, metavar="N[,N...]",
        help="threads per backend (default: the backend's own); several, e.g. 1,2, measure each cell at each")),
    Option(("--batch-sizes",), ("--batch-sizes",), dict(
        dest="batch_sizes", type=positive_ints, default=None, metavar="N[,N...]",
        help="measure each cell at these batch sizes, e.g. 1,8,32 (ids end in -b8); a file fixed to another "
             "batch is a skipped cell")),
    Option(("--dims",), ("--dims",), dict(
        dest="dims", type=parse_dim_sweep, action="append", default=None, metavar="AXIS=N[,N...]",
        help="measure each cell at these sizes of a named dynamic axis, e.g. seq=16,64,256 (repeatable)")),
    Option(("--shapes",), ("--shapes",), dict(
        dest="shapes", type=_choices(SHAPES), default=None, metavar="static|dynamic",
        help="static (default): compile for the measured input shape, as a deployment with a fixed input "
             "does; dynamic: keep the artifact's dynamic axes (ids end in -dynamic); static,dynamic: both")),
    Option(("--seed",), ("--deploybench-seed",), dict(dest="seed", type=int, default=0,
                                                       help="seed of the generated inputs (default: 0)")),
    Option(("--min-time",), ("--min-time",), dict(
        dest="min_time", type=positive_float, default=_TIMING.min_time_s, metavar="S",
        help=f"sample each cell for at least S seconds (default: {_TIMING.min_time_s:g})")),
    Option(("--min-samples",), ("--min-samples",), dict(
        dest="min_samples", type=positive_int, default=_TIMING.min_samples, metavar="N",
        help=f"and at least N timed calls (default: {_TIMING.min_samples})")),
    Option(("--median-ci",), ("--median-ci",), dict(
        dest="median_ci", type=median_ci_fraction, default=_TIMING.median_ci, metavar="PCT",
        help=f"then keep sampling until the median's 95%% confidence interval lies within ±PCT of it, e.g. 1%% "
             f"(default: {_TIMING.median_ci * 100:g}%%)")),
    Option(("--max-time",), ("--max-time",), dict(
        dest="max_time", type=positive_float, default=None, metavar="S",
        help=f"stop sampling a cell after S seconds whatever the other rules say; a cell stopped there before its "
             f"median was pinned down is unstable (default: {DEFAULT_CAP_OVER_MIN_TIME} x --min-time, and "
             f"{DEFAULT_SLOW_MODEL_CAP_S:g} s for a model too slow to reach --min-samples before)")),
    Option(("--timeout", "--cell-timeout"), ("--cell-timeout",), dict(
        dest="cell_timeout", type=positive_float, default=DEFAULT_STAGE_TIMEOUT_S, metavar="S",
        help=f"seconds each stage of a cell may take (conversion, memory child, timing...) before the cell is "
             f"a timeout and its worker is killed (default: {DEFAULT_STAGE_TIMEOUT_S:g})")),
    Option(("--max-memory",), ("--max-memory",), dict(
        dest="max_memory", type=positive_float, default=None, metavar="MB",
        help="fail a cell whose worker (and what it started) holds more than MB of resident memory, instead "
             "of letting it take the machine down (default: no limit)")),
    Option(("--no-memory",), ("--no-memory",), dict(
        dest="no_memory", action="store_true", default=False,
        help="skip the peak-memory measurement (one fresh process per cell)")),
    Option(("--tolerance",), ("--tolerance",), dict(
        dest="tolerance", action="append", default=None, metavar="PREC:KEY=VALUE",
        help="accuracy tolerance override, e.g. int8:top1=0.97 or fp32:atol=1e-3 (repeatable)")),
    Option(("--cache-dir",), ("--deploybench-cache",), dict(
        dest="cache_dir", default=None, metavar="DIR",
        help="conversion cache (default: $DEPLOYBENCH_CACHE or .deploybench-cache)")),
    Option(("--scenarios",), ("--scenarios",), dict(
        dest="scenarios", type=_choices(SCENARIOS), default=None, metavar="NAME[,NAME...]",
        help="how requests arrive, as MLPerf LoadGen names it: single-stream (default: one at a time, latency), "
             "offline (all at once: the highest throughput, with the backend's own parallel requests), server "
             "(Poisson arrivals: the highest rate whose p99 stays under --p99-budget-ms)")),
    Option(("--p99-budget-ms",), ("--p99-budget-ms",), dict(
        dest="p99_budget_ms", type=positive_float, default=None, metavar="MS",
        help="the server scenario's latency budget: p99 from arrival to completion, queueing included")),
    Option(("--calibration-data",), ("--calibration-data",), dict(
        dest="calibration_data", default=None, metavar="FILE.npz",
        help="calibrate int8 on these samples: one array per model input, samples along axis 0 (default: the "
             "model's own calibration data, else seeded random inputs, which every report then points out)")),
    Option(("--prune",), ("--prune",), dict(
        dest="prune", type=fractions("--prune"), default=None, metavar="F[,F...]",
        help="measure each cell of a PyTorch model at these structured prune amounts (the fraction of conv "
             "channels removed; 0 keeps the model), e.g. 0,0.25,0.5 (ids end in -pr25); accuracy is still "
             "judged against the unpruned fp32 model")),
    Option(("--calibration-samples",), ("--calibration-samples",), dict(
        dest="calibration_samples", type=counts("--calibration-samples"), default=None, metavar="N[,N...]",
        help="calibrate each int8 cell on these numbers of samples, e.g. 64,256 (ids end in -cal256; default: "
             "the converter's, 64); not planned for precisions that do not calibrate")),
    Option(("--in-process",), ("--in-process",), dict(
        dest="in_process", action="store_true", default=False,
        help="run model code in this process, for a debugger: gives up isolation, so a model or backend "
             "that crashes ends the whole run")),
)


def add_options(add: Callable[..., Any], edge: str) -> None:
    """Register every setting's option with ``add`` (argparse's add_argument or pytest's addoption)."""
    for option in OPTIONS:
        add(*(option.cli if edge == "cli" else option.pytest), **option.kwargs)


def pyproject_defaults(root: Path) -> dict[str, Any]:
    """The ``[tool.deploybench]`` table of ``root/pyproject.toml``: option defaults (empty when absent
    or unreadable, so that a broken pyproject never stops a test session)."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return dict(data.get("tool", {}).get("deploybench", {}) or {})


def _sizes(value, what: str) -> tuple[int, ...]:
    """Sizes as given on a command line ('1,8'), or in ``[tool.deploybench]`` (8, or [1, 8])."""
    return option_values(value, positive_ints, what)


def settings_from_options(get: Callable[[str], Any]) -> RunSettings:
    """``RunSettings`` from option values; ``get(dest)`` returns a value or None when not given.

    A missing value takes the default of ``OPTIONS``; every value is validated by the settings."""
    defaults = {option.dest: option.kwargs.get("default") for option in OPTIONS}

    def value(dest: str):
        given = get(dest)
        return defaults[dest] if given is None else given

    min_time, max_time = float(value("min_time")), value("max_time")
    threads = _sizes(value("threads"), "threads")
    dims = value("dims") or ()
    dims = tuple((name, _sizes(sizes, name)) for name, sizes in (dims.items() if isinstance(dims, Mapping) else dims))
    sweep = Sweep(batch_sizes=_sizes(value("batch_sizes"), "batch sizes"), dims=dims,
                  threads=threads if len(threads) > 1 else (),
                  # a command line's tuple, or a [tool.deploybench] string or list: Sweep validates the names
                  shapes=tuple(parse_csv(value("shapes"))) or (STATIC,),
                  scenarios=tuple(parse_csv(value("scenarios"))) or (SINGLE_STREAM,),
                  prunes=option_values(value("prune"), fractions("--prune")) or (0.0,),
                  calibrations=option_values(value("calibration_samples"), counts("--calibration-samples")) or (0,))
    budget = value("p99_budget_ms")
    return RunSettings(
        threads=threads[0] if len(threads) == 1 else None, seed=int(value("seed")), sweep=sweep,
        server=ServerRules(p99_budget_ms=float(budget) if budget else None),
        timing=TimingRules(min_samples=int(value("min_samples")), min_time_s=min_time,
                           max_time_s=None if max_time is None else max(float(max_time), min_time),
                           median_ci=parse_fraction(value("median_ci"), "--median-ci")),
        memory=MemoryRules(enabled=not value("no_memory")),
        tolerances=parse_tolerances(value("tolerance")), timeout_s=float(value("cell_timeout")),
        max_memory_mb=float(value("max_memory")) if value("max_memory") else None,
        cache_dir=str(value("cache_dir")) if value("cache_dir") else None, in_process=bool(value("in_process")),
        calibration_data=str(Path(value("calibration_data")).resolve()) if value("calibration_data") else None)


__all__ = ["DEFAULT_BACKENDS", "DEFAULT_MODELS", "DEFAULT_PRECISIONS", "DEFAULT_STAGE_TIMEOUT_S", "MemoryRules", "OPTIONS", "RunSettings", "SHAPES", "ServerRules", "Sweep", "TimingRules", "add_options",
           "parse_dim_sweep", "parse_tolerances", "positive_float", "positive_int", "positive_ints", "settings_from_options"]
