"""Offline and server cells through the one pipeline: ids, figures, the budget's verdict, and the reports."""

from __future__ import annotations

import pytest

from deploybench.harness.measure.timing import TimingRules
from deploybench.harness.pipeline.matrix import run_one_cell
from deploybench.harness.pipeline.settings import MemoryRules, RunSettings, ServerRules, Sweep
from deploybench.spec import Cell, DeployBenchError

FAST = dict(timing=TimingRules(min_samples=10, min_time_s=0.3, max_time_s=1.0), memory=MemoryRules(enabled=False))


@pytest.mark.openvino
def test_an_offline_cell_measures_throughput_on_the_backends_parallel_requests(small_cnn_spec):
    from deploybench.harness.report.table import terminal_table

    cell = Cell("small_cnn", "onnx", "openvino", "fp32", scenario="offline")
    result = run_one_cell(small_cnn_spec, cell, RunSettings(**FAST))
    assert result.status == "ok", result.reason
    assert cell.id == "small_cnn-onnx-openvino-fp32-offline"
    figures = result.scenario_figures
    assert result.throughput_ips == figures["samples_per_s"] > 0 and figures["completed"] >= 10
    assert result.extra["runtime_notes"]["performance_hint"] == "THROUGHPUT"  # loaded for throughput
    assert figures["requests"] >= 1 and result.latency_ms.n == figures["completed"]
    assert f"offline: {figures['samples_per_s']:,.0f} items/s" in terminal_table([result])


def test_a_server_cell_finds_a_rate_under_its_budget_and_an_impossible_budget_fails_saying_so(small_cnn_spec):
    from deploybench.harness.report.html import html_report
    from deploybench.harness.report.table import terminal_table

    cell = Cell("small_cnn", "onnx", "onnxruntime", "fp32", scenario="server")
    quick = ServerRules(p99_budget_ms=50.0, trial_s=0.5, max_time_s=20.0)
    met = run_one_cell(small_cnn_spec, cell, RunSettings(server=quick, **FAST))
    assert met.status == "ok", met.reason
    search = met.scenario_figures
    passed = [t for t in search["trials"] if t["passed"]]
    assert search["met"] and search["max_rate_per_s"] == max(t["rate_per_s"] for t in passed)
    assert all(t["p99_ms"] <= 50.0 for t in passed)
    assert met.throughput_ips == pytest.approx(search["max_rate_per_s"])
    assert "server: at most" in terminal_table([met]) and "p99 against offered rate" in html_report([met])
    impossible = run_one_cell(small_cnn_spec, cell, RunSettings(server=ServerRules(p99_budget_ms=1e-4, trial_s=0.3,
                                                                                   max_time_s=10.0), **FAST))
    assert impossible.status == "failed" and impossible.stage == "time"
    assert "no rate met the p99 budget of 0.0001 ms" in impossible.reason


def test_the_server_scenario_without_a_budget_is_refused_before_anything_runs():
    with pytest.raises(DeployBenchError, match="needs a latency budget: add --p99-budget-ms"):
        RunSettings(sweep=Sweep(scenarios=("single-stream", "server")))


def test_the_gate_shows_an_offline_cells_throughput_and_never_re_times_it_one_request_at_a_time():
    from deploybench.harness.gate.pairs import pairs_to_interleave
    from deploybench.harness.gate.statistics import INCONCLUSIVE
    from deploybench.harness.gate.verdict import LATENCY, gate_results
    from deploybench.spec import Result

    def offline(ips: float) -> Result:
        return Result(Cell("m", "onnx", "openvino", "fp32", scenario="offline"), throughput_ips=ips,
                      artifact_path=__file__)

    base, cur = offline(100.0), offline(50.0)
    latency = [v for v in gate_results([base], [cur]) if v.metric == LATENCY]
    assert len(latency) == 1 and latency[0].verdict == INCONCLUSIVE and latency[0].ratio == 0.5
    assert "offline throughput (items/s) from two separate runs: shown, not judged" in latency[0].reason
    assert pairs_to_interleave([base], [cur], require_files=False) == []
