"""How a cell is measured: typed settings with one home for each default, and the command-line options
that set them, written once for both edges (``deploybench run`` and the pytest plugin).

``OPTIONS`` is read by argparse (the CLI) and by pytest's ``parser.addoption`` (the plugin), which
take the same keyword arguments; ``settings_from_options`` builds ``RunSettings`` from either.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploybench.harness.measure.process import DEFAULT_TIMEOUT_S
from deploybench.harness.measure.timing import TimingRules
from deploybench.spec import PRECISIONS, DeployBenchError

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


@dataclass
class RunSettings:
    """Everything that decides how the cells of a run are measured. Validated on creation.

    ``threads`` None lets each backend choose; ``dims`` sets the size of dynamic axes ({"batch": 8});
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

    def __post_init__(self):
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise DeployBenchError(f"threads {self.threads!r} must be a positive integer, or None to let "
                                   "each backend choose")
        if self.timeout_s <= 0:
            raise DeployBenchError(f"timeout {self.timeout_s} must be positive (seconds per stage of a cell)")
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

    def tolerance_overrides(self, precision: str, model_tolerances: Mapping[str, Mapping[str, float]]
                            ) -> dict[str, float]:
        """The criteria that override the defaults for ``precision``: the model's own, then this run's."""
        return {**model_tolerances.get(precision, {}), **self.tolerances.get(precision, {})}

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
    Option(("--threads",), ("--threads",), dict(dest="threads", type=positive_int, default=None,
                                                 help="threads per backend (default: the backend's own)")),
    Option(("--seed",), ("--deploybench-seed",), dict(dest="seed", type=int, default=0,
                                                       help="seed of the generated inputs (default: 0)")),
    Option(("--min-time",), ("--min-time",), dict(
        dest="min_time", type=positive_float, default=_TIMING.min_time_s, metavar="S",
        help=f"sample each cell for at least S seconds (default: {_TIMING.min_time_s:g})")),
    Option(("--min-samples",), ("--min-samples",), dict(
        dest="min_samples", type=positive_int, default=_TIMING.min_samples, metavar="N",
        help=f"and at least N timed calls (default: {_TIMING.min_samples})")),
    Option(("--max-time",), ("--max-time",), dict(
        dest="max_time", type=positive_float, default=_TIMING.max_time_s, metavar="S",
        help=f"stop sampling a cell after S seconds whatever the other rules say (default: {_TIMING.max_time_s:g})")),
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


def settings_from_options(get: Callable[[str], Any]) -> RunSettings:
    """``RunSettings`` from option values; ``get(dest)`` returns a value or None when not given.

    A missing value takes the default of ``OPTIONS``; every value is validated by the settings."""
    defaults = {option.dest: option.kwargs.get("default") for option in OPTIONS}

    def value(dest: str):
        given = get(dest)
        return defaults[dest] if given is None else given

    min_time, max_time = float(value("min_time")), float(value("max_time"))
    return RunSettings(
        threads=value("threads"), seed=int(value("seed")),
        timing=TimingRules(min_samples=int(value("min_samples")), min_time_s=min_time,
                           max_time_s=max(max_time, min_time)),
        memory=MemoryRules(enabled=not value("no_memory")),
        tolerances=parse_tolerances(value("tolerance")), timeout_s=float(value("cell_timeout")),
        max_memory_mb=float(value("max_memory")) if value("max_memory") else None,
        cache_dir=str(value("cache_dir")) if value("cache_dir") else None, in_process=bool(value("in_process")))


__all__ = ["DEFAULT_BACKENDS", "DEFAULT_MODELS", "DEFAULT_PRECISIONS", "DEFAULT_STAGE_TIMEOUT_S", "MemoryRules", "OPTIONS", "RunSettings", "TimingRules", "add_options",
           "parse_tolerances", "positive_float", "positive_int", "settings_from_options"]
