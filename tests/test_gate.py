"""The regression gate: verdict statistics on synthetic samples, and the CLI on real run files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploybench.harness.gate.command import gate_command, main, parse_accuracy_thresholds, parse_fraction
from deploybench.harness.gate.statistics import (INCONCLUSIVE, REGRESSION, UNCHANGED, compare_interleaved,
                                                 compare_two_runs, compare_with_history, median_ci)
from deploybench.harness.gate.verdict import GateSettings, gate_results
from deploybench.spec import Accuracy, Cell, Result

CELL = Cell("net", "onnx", "onnxruntime", "fp32")


def _samples(median_ms: float, n: int = 400, seed: int = 0, spread: float = 0.03) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median_ms * np.exp(rng.normal(0, spread, n)) + rng.exponential(median_ms * 0.01, n))


def _run_file(path: Path, samples: list[float], peak_rss_mb: float = 100.0, accuracy: dict | None = None) -> Path:
    result = Result(cell=CELL, samples_ms=samples, peak_rss_mb=peak_rss_mb, accuracy=Accuracy(**(accuracy or {})))
    from deploybench.harness.measure.stats import latency_stats

    result.latency_ms = latency_stats(samples)
    path.write_text(json.dumps({"schema": "deploybench.matrix/1", "machine": {}, "cells": [result.to_dict()]}))
    return path


positive_samples = st.lists(st.floats(min_value=0.01, max_value=1000, allow_nan=False), min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(positive_samples)
def test_identical_samples_never_give_regression(samples):
    assert compare_two_runs(samples, samples)[0] != REGRESSION
    assert compare_with_history([float(np.median(samples))] * 6, samples)[0] != REGRESSION
    assert compare_interleaved([1.0] * len(samples))[0] == UNCHANGED


def test_median_ci_covers_the_median_and_narrows_with_more_samples():
    small = median_ci(_samples(2.0, 50))
    large = median_ci(_samples(2.0, 2000))
    assert small[1] <= small[0] <= small[2] and large[1] <= large[0] <= large[2]
    assert (large[2] - large[1]) < (small[2] - small[1])


def test_two_runs_without_history_are_honest_about_drift():
    base = _samples(2.0, seed=1)
    assert compare_two_runs(base, _samples(2.0, seed=2))[0] == INCONCLUSIVE  # A/A
    assert compare_two_runs(base, _samples(2.1, seed=2))[0] == INCONCLUSIVE  # 5 %: drift could explain it
    verdict, ratio, low, high = compare_two_runs(base, _samples(3.0, seed=2))  # 50 %: beyond any drift seen
    assert verdict == REGRESSION and 1.45 < ratio < 1.55 and low > 1.2


def test_history_measures_drift_and_catches_twenty_percent():
    history = [2.0 * f for f in (1.0, 1.01, 0.99, 1.005, 0.995, 1.0)]
    assert compare_with_history(history, _samples(2.0, seed=3))[0] == UNCHANGED
    verdict, ratio, _low, _high = compare_with_history(history, _samples(2.4, seed=3))
    assert verdict == REGRESSION and ratio == pytest.approx(1.2, rel=0.02)
    assert compare_with_history(history[:3], _samples(2.2, seed=3))[0] == INCONCLUSIVE  # too short to know


def test_interleaved_block_ratios_decide_five_percent():
    rng = np.random.default_rng(4)
    assert compare_interleaved(1.05 * np.exp(rng.normal(0, 0.01, 30)))[0] == REGRESSION
    assert compare_interleaved(np.exp(rng.normal(0, 0.01, 30)))[0] == UNCHANGED
    assert compare_interleaved(np.exp(rng.normal(0, 0.3, 30)))[0] == INCONCLUSIVE


def test_memory_and_accuracy_are_gated():
    base = Result(cell=CELL, samples_ms=_samples(2.0), peak_rss_mb=100.0,
                  accuracy=Accuracy(top1_agreement=1.0, cosine=0.99999))
    cur = Result(cell=CELL, samples_ms=_samples(2.0, seed=5), peak_rss_mb=125.0,
                 accuracy=Accuracy(top1_agreement=0.95, cosine=0.99999))
    verdicts = {v.metric: v for v in gate_results([base], [cur], GateSettings())}
    assert verdicts["memory"].verdict == REGRESSION and verdicts["memory"].ratio == pytest.approx(1.25)
    assert verdicts["accuracy:top1_agreement"].verdict == REGRESSION
    assert verdicts["accuracy:cosine"].verdict == UNCHANGED
    assert verdicts["latency"].verdict == INCONCLUSIVE


def test_gate_cli_exit_codes_and_markdown(tmp_path, capsys):
    base = _run_file(tmp_path / "base.json", _samples(2.0, seed=6))
    same = _run_file(tmp_path / "same.json", _samples(2.0, seed=7))
    slower = _run_file(tmp_path / "slower.json", _samples(2.4, seed=7))
    storage = tmp_path / "history"
    storage.mkdir()
    for i, factor in enumerate((1.0, 1.01, 0.99, 1.005, 0.995, 1.0)):
        _run_file(storage / f"run{i}.json", _samples(2.0 * factor, seed=10 + i))

    assert main([str(base), str(same)]) == 0
    markdown = tmp_path / "gate.md"
    assert main([str(base), str(slower), "--history", str(storage), "--markdown", str(markdown)]) == 1
    text = markdown.read_text()
    assert "| cell" in text and "net-onnx-onnxruntime-fp32" in text and "regression" in text
    capsys.readouterr()

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main([str(broken), str(same)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.json" in err
    assert main([str(tmp_path / "missing.json"), str(same)]) == 2


def test_threshold_parsing():
    assert parse_fraction("5%") == pytest.approx(0.05) and parse_fraction("0.1") == pytest.approx(0.1)
    assert parse_accuracy_thresholds("int8=0.02")["int8"] == pytest.approx(0.02)
    with pytest.raises(Exception, match="5%"):
        parse_fraction("five")


def test_a_bare_threshold_of_one_or_more_is_refused_not_read_as_hundreds_of_percent(tmp_path, capsys):
    """`--threshold 5` once meant 500 % and let a 1.6x slower cell through as unchanged."""
    with pytest.raises(Exception, match="write 5% for a percentage"):
        parse_fraction("5")
    base = _run_file(tmp_path / "base.json", _samples(2.0, seed=6))
    assert main([str(base), str(base), "--threshold", "5"]) == 2
    assert "ambiguous" in capsys.readouterr().err


def test_a_gate_that_compared_nothing_fails_and_names_what_each_side_had(tmp_path, capsys):
    """Renaming a model once turned CI green: no cell in both runs printed an empty table and exited 0."""
    base = _run_file(tmp_path / "base.json", _samples(2.0, seed=6))
    renamed = tmp_path / "renamed.json"
    renamed.write_text(base.read_text().replace('"model": "net"', '"model": "net_v2"'))
    assert "net_v2" in renamed.read_text()
    assert main([str(base), str(renamed)]) == 2
    err = capsys.readouterr().err
    assert "nothing was compared" in err and "net-onnx-onnxruntime-fp32" in err and "net_v2-onnx" in err


MODEL_FILE = '''
import torch
from torch import nn

LAYERS = {layers}


def make():
    torch.manual_seed(0)
    blocks = []
    for _ in range(LAYERS):
        blocks += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4))
'''


@pytest.mark.slow
def test_real_runs_of_a_model_made_slower_are_a_regression(tmp_path, capsys):
    def run(layers: int, name: str) -> Path:
        model = tmp_path / name / "net.py"
        model.parent.mkdir()
        model.write_text(MODEL_FILE.format(layers=layers))
        out = tmp_path / f"{name}.json"
        subprocess.run([sys.executable, "-m", "deploybench.cli", "run", "--models", f"{model}:make",
                        "--input-shape", "1x3x48x48", "--backends", "onnxruntime", "--no-memory",
                        "--output", str(out), "--no-progress"], check=True, capture_output=True)
        return out

    base, same, slower = run(4, "base"), run(4, "same"), run(12, "slower")
    assert main([str(base), str(same)]) == 0  # one cached export: byte-identical, nothing timed
    assert "same artifact" in capsys.readouterr().out
    assert main([str(base), str(slower)]) == 1  # both artifacts are here: interleaved by default
    assert "interleaved" in capsys.readouterr().out

    class Args:  # the CLI's namespace, as `deploybench gate` builds it
        baseline, current, threshold, memory_threshold = str(base), str(slower), "5%", "10%"
        accuracy_threshold, markdown, history, interleave = None, None, None, "never"

    # two separate runs cannot tell a change from drift: shown, not judged, and said so
    assert gate_command(Args) == 0
    assert "latency is not judged" in capsys.readouterr().out
