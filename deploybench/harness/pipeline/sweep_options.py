"""The argparse types of the sweep options that are not sizes: ``--prune`` amounts and ``--calibration-samples``
counts, and reading either from ``[tool.deploybench]``. Each error names its option and shows a valid value."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from deploybench.spec import DeployBenchError


def fractions(option: str) -> Callable[[str], tuple[float, ...]]:
    """An argparse type: '0,0.25,0.5' -> (0.0, 0.25, 0.5), each in [0, 1), none twice."""
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(part) for part in str(text).split(",") if part.strip())
        except ValueError:
            values = ()
        if not values or len(set(values)) != len(values) or any(not 0.0 <= v < 1.0 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: write distinct fractions in [0, 1) joined by commas, "
                                             f"e.g. {option} 0,0.25,0.5")
        return values

    return parse


def counts(option: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: '64,256' -> (64, 256), distinct whole numbers of at least 1."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in str(text).split(",") if part.strip())
        except ValueError:
            values = ()
        if not values or len(set(values)) != len(values) or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: write distinct whole numbers of at least 1 joined by "
                                             f"commas, e.g. {option} 64,256")
        return values

    return parse


def option_values(value, parse: Callable[[str], tuple], what: str = "setting") -> tuple:
    """A sweep option's values as a command line gives them (a tuple), or as ``[tool.deploybench]`` does
    (0.25, [0, 0.25] or '0,0.25'), checked by ``parse``; an error names ``what``."""
    if value is None or isinstance(value, tuple):
        return value or ()
    try:
        return parse(",".join(map(str, value)) if isinstance(value, list) else str(value))
    except argparse.ArgumentTypeError as exc:
        raise DeployBenchError(f"bad {what}: {exc}") from None


__all__ = ["counts", "fractions", "option_values"]
