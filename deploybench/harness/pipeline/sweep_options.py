"""The argparse types of the sweep options that are not sizes: ``--prune`` amounts and ``--calibration-samples``
counts, and reading either from ``[tool.deploybench]``. Each error names its option and shows a valid value."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from deploybench.spec import DeployBenchError


def _distinct_values(number: Callable[[str], Any], valid: Callable[[Any], bool], wanted: str, example: str
                     ) -> Callable[[str], tuple]:
    """An argparse type: comma-separated values read by ``number``, each ``valid``, none twice; otherwise
    the error says what is ``wanted`` and shows ``example``."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(number(part) for part in str(text).split(",") if part.strip())
        except ValueError:
            values = ()
        if not values or len(set(values)) != len(values) or not all(map(valid, values)):
            raise argparse.ArgumentTypeError(f"{text!r}: write {wanted} joined by commas, e.g. {example}")
        return values

    return parse


def fractions(option: str) -> Callable[[str], tuple[float, ...]]:
    """An argparse type: '0,0.25,0.5' -> (0.0, 0.25, 0.5), each in [0, 1), none twice."""
    return _distinct_values(float, lambda v: 0.0 <= v < 1.0, "distinct fractions in [0, 1)", f"{option} 0,0.25,0.5")


def counts(option: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: '64,256' -> (64, 256), distinct whole numbers of at least 1."""
    return _distinct_values(int, lambda v: v >= 1, "distinct whole numbers of at least 1", f"{option} 64,256")


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
