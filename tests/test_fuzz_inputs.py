"""What a user types or hands over, fuzzed: every input gets a result or one clear ``DeployBenchError``
(on the command line: one ``deploybench: error:`` line and exit 2), never a traceback or a hang."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploybench.cli import build_parser, main
from deploybench.harness.pipeline.plan import parse_shard
from deploybench.harness.pipeline.settings import parse_tolerances, settings_from_options
from deploybench.spec import DeployBenchError, TensorSpec, parse_shape

# derandomize: the same examples on every run, so CI judges the change and not the luck of a seed
FUZZ = settings(max_examples=150, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
numberish = st.one_of(text, st.floats(allow_nan=True, allow_infinity=True).map(str),
                      st.integers(-10**6, 10**6).map(str))


def _one_clear_line(exc: DeployBenchError) -> None:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message


@FUZZ
@given(text)
def test_a_shape_is_parsed_or_refused_in_one_line(value):
    try:
        shape = parse_shape(value)
    except DeployBenchError as exc:
        _one_clear_line(exc)
        return
    assert shape and all(isinstance(d, int) and d > 0 for d in shape)


@FUZZ
@given(text)
def test_a_shard_is_parsed_or_refused_in_one_line(value):
    try:
        index, count = parse_shard(value)
    except DeployBenchError as exc:
        _one_clear_line(exc)
        return
    assert 1 <= index <= count


@FUZZ
@given(st.lists(text, max_size=3))
def test_tolerances_are_parsed_and_validated_or_refused_in_one_line(entries):
    try:
        settings_from_options(lambda dest: entries if dest == "tolerance" else None)
    except DeployBenchError as exc:
        _one_clear_line(exc)
    try:
        parse_tolerances(entries)
    except DeployBenchError as exc:
        _one_clear_line(exc)


RUN_OPTIONS = ["--threads", "--seed", "--min-time", "--min-samples", "--max-time", "--cell-timeout", "--max-memory",
               "--shard", "--tolerance"]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(RUN_OPTIONS), numberish), max_size=4))
def test_run_options_become_settings_or_one_clear_line(pairs):
    argv = ["run", *[part for pair in pairs for part in pair]]
    try:
        args = build_parser().parse_args(argv)
        settings_from_options(lambda dest: getattr(args, dest, None))
        if args.shard:
            parse_shard(args.shard)
    except DeployBenchError as exc:
        _one_clear_line(exc)


@FUZZ
@given(name=text, dims=st.lists(st.one_of(st.integers(-3, 5), text), max_size=5), dtype=text)
def test_a_tensor_spec_is_made_or_refused_in_one_line(name, dims, dtype):
    try:
        spec = TensorSpec(name, tuple(dims), dtype)
    except DeployBenchError as exc:
        _one_clear_line(exc)
        return
    assert spec.dtype == dtype


json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | text,
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(text, children, max_size=4), max_leaves=20)
CELL_KEYS = ["model", "format", "backend", "precision", "status", "latency_ms", "samples_ms", "accuracy",
             "tolerance", "peak_rss_mb", "extra", "seed"]
cells = st.dictionaries(st.sampled_from(CELL_KEYS), json_values, max_size=len(CELL_KEYS))
documents = st.one_of(
    json_values,
    st.fixed_dictionaries({"schema": st.just("deploybench.matrix/1"), "cells": st.lists(cells, max_size=3)}),
    st.fixed_dictionaries({"benchmarks": st.lists(st.dictionaries(st.sampled_from(
        ["extra_info", "stats", "params", "name"]), json_values, max_size=4), max_size=3)}),
)


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("command", ["report", "gate", "merge", "history"])
def test_results_files_are_read_or_refused_in_one_line(command):
    @FUZZ
    @given(document=documents, garbage=st.booleans())
    def check(document, garbage):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "results.json"
            path.write_text("{not json" if garbage else json.dumps(document))
            argv = {"report": ["report", str(path)], "gate": ["gate", str(path), str(path)],
                    "merge": ["merge", str(path), "--output", str(Path(folder) / "merged.json")],
                    "history": ["history", "--storage", folder]}[command]
            code, stderr = _cli(argv)
            assert code in (0, 1, 2), stderr
            if code == 2:
                lines = [line for line in stderr.splitlines() if line.strip()]
                assert len(lines) == 1 and "Traceback" not in stderr, stderr

    check()
