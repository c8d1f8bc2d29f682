"""Importing optional backends without their import-time chatter."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
from types import ModuleType


def quiet_import(name: str) -> ModuleType:
    """Import ``name`` with its import-time warnings, log lines and prints swallowed.

    coremltools, torchao and friends announce untested versions and missing optional parts on
    every import; in ``deploybench backends`` that noise buries the table it prints. Errors still
    raise: only the chatter is dropped.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    finally:
        logging.disable(previous)
