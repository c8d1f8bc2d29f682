"""Prune amounts and calibration sizes as cell dimensions, and ``recommend --search-time``'s search over them:
ids and results files, what the pipeline makes of each dimension (on digits_cnn, converted here), the
search's decisions on made-up results, its time budget on a made-up clock, and one small real search."""

from __future__ import annotations

import dataclasses
import json

import pytest

from deploybench.cli import main
from deploybench.harness.pipeline.plan import plan_cells
from deploybench.harness.pipeline.settings import RunSettings, Sweep
from deploybench.harness.recommend import Budgets, recommend
from deploybench.harness.recommend.figures import reference_metric
from deploybench.harness.recommend.search import CALIBRATION, PRUNE, SearchSpace, next_cells
from deploybench.harness.recommend.search_run import parse_duration, search_loop
from deploybench.spec import (Accuracy, Cell, DeployBenchError, LatencyStats, NotSupported, Result, ToleranceCheck)


def latency(median: float, iqr: float = 0.05, n: int = 50) -> LatencyStats:
    return LatencyStats(n=n, mean=median, median=median, p90=median, p95=median, p99=median * 1.5,
                        min=median * 0.9, max=median * 2, stdev=0.1, cv=0.1, iqr=iqr)


def measured(cell: Cell, median: float = 1.0, cosine: float = 1.0, size: float = 10.0, metric=None,
             passes: bool = True, status: str = "ok", reason: str = "", iqr: float = 0.05, n: int = 50) -> Result:
    """A result of ``cell`` with the figures the search weighs (accuracy drop = 1 - cosine without a metric)."""
    accuracy = Accuracy(cosine=cosine, reference="torch fp32 eager", metric="top1_accuracy" if metric else None,
                        metric_value=metric)
    result = Result(cell=cell, latency_ms=latency(median, iqr, n), throughput_ips=1000 / median, peak_rss_mb=100.0,
                    artifact_bytes=int(size * 1e6), accuracy=accuracy,
                    tolerance=ToleranceCheck(passes, "passes" if passes else "cosine below the tolerance"))
    return result if status == "ok" else result.not_run(status, "convert", reason)


FP32 = Cell("net", "onnx", "onnxruntime", "fp32")
INT8 = Cell("net", "onnx", "onnxruntime", "int8")
OV = Cell("net", "openvino", "openvino", "fp32")
BUDGET = Budgets(accuracy_drop=0.01)
SPACE = SearchSpace(prunes=(0.1, 0.25, 0.5), calibrations=(256, 1024))


def step(cell: Cell, **change) -> Cell:
    return dataclasses.replace(cell, **change)


# ---- the cell dimensions --------------------------------------------------------------------------------
def test_ids_name_the_prune_amount_and_calibration_size_only_when_set_and_round_trip():
    cell = Cell("resnet18", "onnx", "openvino", "int8", prune=0.3, calibration=256)
    assert cell.id == "resnet18-onnx-openvino-int8-pr30-cal256"
    assert cell.variant == "pr30 cal256"
    assert Cell("m", "onnx", "onnxruntime", "fp32", prune=0.125).id.endswith("-pr12.5")
    assert Cell("m", "onnx", "onnxruntime", "fp32").id == "m-onnx-onnxruntime-fp32"
    assert Cell.from_dict(cell.to_dict()) == cell
    result = measured(cell)
    assert Result.from_dict(json.loads(json.dumps(result.to_dict()))).cell == cell
    old = {"model": "m", "format": "onnx", "backend": "onnxruntime", "precision": "int8", "scenario": "offline"}
    assert (Cell.from_dict(old).prune, Cell.from_dict(old).calibration) == (0.0, 0)


def test_a_sweep_plans_calibration_sizes_on_int8_cells_only():
    from deploybench.resolve import get_model

    cells = plan_cells([get_model("digits_cnn")], ["onnxruntime"], ["fp32", "int8"],
                       sweep=Sweep(prunes=(0.0, 0.5), calibrations=(64, 256)))
    ids = [c.id for c in cells]
    assert [i for i in ids if "fp32" in i] == ["digits_cnn-onnx-onnxruntime-fp32", "digits_cnn-onnx-onnxruntime-fp32-pr50"]
    assert "digits_cnn-onnx-onnxruntime-int8-pr50-cal256" in ids and "digits_cnn-onnx-onnxruntime-int8" not in ids
    assert len(ids) == len(set(ids)) == 6


@pytest.mark.parametrize("argv, option", [(["--prune", "0,1.5"], "--prune"), (["--prune", "x"], "--prune"),
                                          (["--calibration-samples", "0"], "--calibration-samples"),
                                          (["--calibration-samples", "64,64"], "--calibration-samples")])
def test_bad_sweep_values_are_one_line_naming_the_option(argv, option, capsys):
    assert main(["run", "--models", "digits_cnn", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0]


def test_sweep_values_from_pyproject_are_checked():
    from deploybench.harness.pipeline.settings import settings_from_options

    settings = settings_from_options({"prune": [0, 0.25], "calibration_samples": "256"}.get)
    assert (settings.sweep.prunes, settings.sweep.calibrations) == ((0.0, 0.25), (256,))
    with pytest.raises(DeployBenchError, match="--prune"):
        settings_from_options({"prune": [0.5, 1]}.get)


# ---- what the pipeline makes of them (digits_cnn, converted here) ---------------------------------------
@pytest.fixture(scope="module")
def digits():
    from deploybench.harness.pipeline.stages import ModelSession
    from deploybench.resolve import get_model

    session = ModelSession(get_model("digits_cnn"), None, "in-process: test")
    yield session
    session.close()


def test_a_pruned_model_is_a_smaller_artifact_of_its_own(digits, conversion_cache):
    from deploybench.harness.pipeline.stages import convert

    settings = RunSettings(cache_dir=str(conversion_cache))
    plain = convert(digits.spec, FP32_DIGITS, settings)
    pruned = convert(digits.spec, step(FP32_DIGITS, prune=0.5), settings)
    assert pruned.path.parent != plain.path.parent
    assert pruned.size_bytes < 0.8 * plain.size_bytes
    again = convert(digits.spec, step(FP32_DIGITS, prune=0.5), settings)
    assert again.cached and again.path == pruned.path


def test_a_calibration_size_is_a_cache_entry_of_its_own_and_the_default_size_is_the_default(digits, conversion_cache):
    from deploybench.harness.pipeline.stages import convert

    settings = RunSettings(cache_dir=str(conversion_cache))
    int8 = step(FP32_DIGITS, precision="int8")
    default = convert(digits.spec, int8, settings)
    larger = convert(digits.spec, step(int8, calibration=256), settings)
    named_default = convert(digits.spec, step(int8, calibration=64), settings)
    assert larger.path.parent != default.path.parent
    assert named_default.path.parent == default.path.parent
    assert larger.metadata.get("calibration_samples") == 256 and default.metadata.get("calibration_samples") == 64
    with pytest.raises(NotSupported, match="not calibrated"):
        convert(digits.spec, step(FP32_DIGITS, calibration=256), settings)


def test_a_pruned_cell_is_judged_against_the_unpruned_model(digits, conversion_cache):
    from deploybench.harness.pipeline.stages import ACCURACY, run_cell

    settings = RunSettings(cache_dir=str(conversion_cache), threads=1)
    plain = run_cell(digits, FP32_DIGITS, settings, measures=(ACCURACY,))
    pruned = run_cell(digits, step(FP32_DIGITS, prune=0.5), settings, measures=(ACCURACY,))
    assert plain.ok and pruned.ok, (plain.reason, pruned.reason)
    assert plain.tolerance.passed and plain.accuracy.max_abs_error < 1e-3
    # against its own (pruned) network the exported model would agree to float rounding, as the plain one does
    assert not pruned.tolerance.passed and pruned.accuracy.max_abs_error > 100 * plain.accuracy.max_abs_error
    assert pruned.accuracy.metric_value < plain.accuracy.metric_value


def test_pruning_a_model_file_is_a_skip_that_says_why(digits, conversion_cache):
    from deploybench.converters import spec_from_file
    from deploybench.harness.pipeline.stages import ModelSession, convert, run_cell

    settings = RunSettings(cache_dir=str(conversion_cache))
    path = convert(digits.spec, FP32_DIGITS, settings).path
    session = ModelSession(spec_from_file(path), None, "in-process: test")
    result = run_cell(session, Cell(session.spec.name, "onnx", "onnxruntime", "fp32", prune=0.25), settings,
                      measures=())
    assert result.status == "skipped" and "pruning needs its PyTorch network" in result.reason


def test_a_pruned_fp32_cell_is_never_the_reference_of_the_accuracy_drop():
    rows = [measured(OV, metric=0.95), measured(step(FP32, prune=0.1), metric=0.97, passes=False)]
    assert reference_metric(rows)[0] == 0.95


FP32_DIGITS = Cell("digits_cnn", "onnx", "onnxruntime", "fp32")


# ---- the search's decisions, on made-up results ----------------------------------------------------------
def test_the_base_cells_come_first():
    assert next_cells([FP32, INT8], [], BUDGET, SPACE).cells == [FP32, INT8]
    assert next_cells([FP32, INT8], [measured(FP32)], BUDGET, SPACE).cells == [INT8]


def test_prune_steps_go_to_the_most_promising_line_first_and_in_increasing_order():
    results = [measured(FP32, median=2.0), measured(OV, median=1.0)]
    assert next_cells([FP32, OV], results, BUDGET, SPACE).cells == [step(OV, prune=0.1), step(FP32, prune=0.1)]
    results += [measured(step(OV, prune=0.1), median=0.8, cosine=0.995)]
    assert step(OV, prune=0.25) in next_cells([FP32, OV], results, BUDGET, SPACE).cells


def test_a_prune_step_that_breaks_the_accuracy_budget_closes_the_line():
    results = [measured(FP32, median=2.0), measured(step(FP32, prune=0.1), median=1.0, cosine=0.9, passes=False)]
    decision = next_cells([FP32], results, BUDGET, SPACE)
    assert decision.cells == []
    (stop,) = [s for s in decision.stops if s.dimension == PRUNE]
    assert "10%" in stop.reason and "cannot win accuracy back" in stop.reason


def test_a_prune_step_within_the_noise_closes_the_line_unless_a_size_budget_wants_it_smaller():
    results = [measured(FP32, median=1.0, size=10), measured(step(FP32, prune=0.1), median=0.98, size=8)]
    decision = next_cells([FP32], results, BUDGET, SPACE)
    assert decision.cells == [] and "no gain" in decision.stops[0].reason
    with_size = Budgets(accuracy_drop=0.01, size_mb=9)
    assert next_cells([FP32], results, with_size, SPACE).cells == [step(FP32, prune=0.25)]


def test_a_gain_inside_the_medians_own_intervals_is_no_gain():
    steady = [measured(FP32, median=1.0), measured(step(FP32, prune=0.1), median=0.85)]
    assert next_cells([FP32], steady, BUDGET, SPACE).cells == [step(FP32, prune=0.25)]
    noisy = [measured(FP32, median=1.0, iqr=1.0, n=9), measured(step(FP32, prune=0.1), median=0.85)]
    decision = next_cells([FP32], noisy, BUDGET, SPACE)
    assert decision.cells == [] and "no gain" in decision.stops[0].reason


def test_no_pruning_without_an_accuracy_budget_nor_on_a_line_whose_base_already_breaks_it():
    results = [measured(FP32), measured(INT8, cosine=0.95)]
    decision = next_cells([FP32, INT8], results, Budgets(), SPACE)
    assert all(not c.prune for c in decision.cells)
    assert any(s.line == "*" and "no accuracy budget" in s.reason for s in decision.stops)
    decision = next_cells([FP32, INT8], results, BUDGET, SPACE)
    assert step(INT8, prune=0.1) not in decision.cells and step(FP32, prune=0.1) in decision.cells
    assert any(s.line == INT8.id and s.dimension == PRUNE and "already breaks" in s.reason for s in decision.stops)


def test_a_base_that_did_not_run_is_not_explored():
    results = [measured(FP32, status="failed", reason="convert: boom")]
    decision = next_cells([FP32], results, BUDGET, SPACE)
    assert decision.cells == [] and "boom" in decision.stops[0].reason


def test_larger_calibration_sets_only_where_int8_missed_accuracy_and_only_while_it_improves():
    base = [FP32, INT8]
    good = [measured(FP32), measured(INT8, cosine=0.995)]
    assert not any(c.calibration for c in next_cells(base, good, BUDGET, SPACE).cells)
    missed = [measured(FP32, median=5.0), measured(INT8, cosine=0.97)]
    assert step(INT8, calibration=256) in next_cells(base, missed, BUDGET, SPACE).cells
    improving = missed + [measured(step(INT8, calibration=256), cosine=0.98)]
    assert step(INT8, calibration=1024) in next_cells(base, improving, BUDGET, SPACE).cells
    flat = improving + [measured(step(INT8, calibration=1024), cosine=0.98)]
    decision = next_cells(base, flat, BUDGET, SPACE)
    assert not any(c.calibration for c in decision.cells)
    assert any(s.dimension == CALIBRATION and "did not improve" in s.reason for s in decision.stops)
    kept = missed + [measured(step(INT8, calibration=256), cosine=0.995)]
    decision = next_cells(base, kept, BUDGET, SPACE)
    assert not any(c.calibration for c in decision.cells)
    assert any(s.dimension == CALIBRATION and "accuracy kept" in s.reason for s in decision.stops)


def test_the_recommendation_weighs_a_pruned_cell_by_the_accuracy_budget_not_the_tolerance():
    rows = [measured(FP32, median=2.0), measured(step(FP32, prune=0.25), median=1.0, cosine=0.995, passes=False)]
    answer = recommend(rows, BUDGET).models[0]
    assert answer.recommended.cell_id == step(FP32, prune=0.25).id
    assert "--prune 0.25" in answer.command
    assert recommend(rows, Budgets()).models[0].recommended.cell_id == FP32.id


def test_every_rendering_of_a_recommendation_carries_the_search_account():
    clock = Clock()
    outcome = search_loop([FP32, OV], fake_run(clock, 10.0), BUDGET, SPACE, budget_s=35.0, clock=clock)
    answer = recommend(outcome.results, BUDGET)
    answer.search = outcome.lines()
    left = next_cells([FP32, OV], outcome.results, BUDGET, SPACE).cells[0].id
    for text in (answer.table(), answer.markdown(), answer.html(), json.dumps(answer.to_dict())):
        assert "3 cells measured" in text and left in text


def test_the_reproduce_command_of_a_calibrated_cell_names_its_size():
    from deploybench.harness.recommend.recommendation import run_command_line

    assert "--calibration-samples 256" in run_command_line(measured(step(INT8, calibration=256)))


# ---- the time budget, on a made-up clock -----------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_run(clock: Clock, seconds: float):
    """A run that takes ``seconds`` of the fake clock; each prune step is faster by the amount pruned (it pays)
    and keeps the accuracy budget."""
    def run(cell: Cell) -> Result:
        clock.now += seconds
        return measured(cell, median=1.0 * (1 - cell.prune), cosine=1.0 - cell.prune / 100)

    return run


def test_the_time_budget_stops_the_search_and_says_what_it_left():
    clock = Clock()
    outcome = search_loop([FP32, OV], fake_run(clock, 10.0), BUDGET, SPACE, budget_s=35.0, clock=clock)
    assert outcome.spent_s <= 35.0 and len(outcome.results) == 3
    assert outcome.unexplored == next_cells([FP32, OV], outcome.results, BUDGET, SPACE).cells != []
    assert any("time budget was spent" in line for line in outcome.lines())


def test_with_time_to_spare_the_search_ends_when_every_line_is_closed():
    clock = Clock()
    outcome = search_loop([FP32, OV], fake_run(clock, 10.0), BUDGET, SPACE, budget_s=3600.0, clock=clock)
    assert len(outcome.results) == 2 + 2 * len(SPACE.prunes) and outcome.unexplored == []
    assert {s.line for s in outcome.stops} == {FP32.id, OV.id}
    assert all("every amount tried" in s.reason for s in outcome.stops)


@pytest.mark.parametrize("text, seconds", [("10m", 600.0), ("90s", 90.0), ("1.5h", 5400.0), ("45", 45.0)])
def test_search_times(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "ten minutes", "5d"])
def test_bad_search_times_are_one_line(text):
    with pytest.raises(DeployBenchError, match="--search-time"):
        parse_duration(text)


# ---- one small real search -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_real_search_on_digits_cnn_lists_every_cell_it_tried(tmp_path, capsys):
    out = tmp_path / "recommendation.json"
    code = main(["recommend", "--models", "digits_cnn", "--backends", "onnxruntime", "--precisions", "fp32,int8",
                 "--max-accuracy-drop", "1%", "--search-time", "3m", "--prune", "0.05,0.5", "--min-time", "0.2",
                 "--no-memory", "--no-progress", "--threads", "1", "--json", str(out)])
    assert code == 0, capsys.readouterr()
    text = capsys.readouterr().out
    answer = json.loads(out.read_text())
    (model,) = answer["models"]
    weighed = {row["cell"] for key in ("front", "rejected") for row in model[key]}
    weighed |= {row["cell"] for row in model["dominated"]} | {row["cell"] for row in model["not_run"]}
    tried = [line for line in answer["search"] if "prune" in line or "calibration" in line]
    assert {"digits_cnn-onnx-onnxruntime-fp32", "digits_cnn-onnx-onnxruntime-int8"} <= weighed
    assert any(cell.endswith("-pr5") for cell in weighed)  # a prune step was tried and is in the tables
    assert "search:" in text
    assert {line.split(" prune")[0].strip() for line in tried if " prune:" in line} == {
        "digits_cnn-onnx-onnxruntime-fp32", "digits_cnn-onnx-onnxruntime-int8"}


@pytest.mark.slow
def test_the_api_search_returns_a_recommendation_with_its_account():
    from deploybench.harness.measure.timing import TimingRules
    from deploybench.harness.pipeline.settings import MemoryRules
    from deploybench.harness.recommend.search_run import search_recommend

    settings = RunSettings(threads=1, in_process=True, timing=TimingRules(min_time_s=0.2, min_samples=10),
                           memory=MemoryRules(enabled=False))
    answer = search_recommend("digits_cnn", {"accuracy_drop": "1%"}, search_time="2m", backends=["onnxruntime"],
                              precisions=["fp32"], settings=settings, space=SearchSpace(prunes=(0.5,)),
                              progress=False)
    (model,) = answer.models
    tried = {f.cell_id for f in model.front} | {r.figures.cell_id for r in model.rejected} | \
        {d.figures.cell_id for d in model.dominated}
    assert tried == {"digits_cnn-onnx-onnxruntime-fp32", "digits_cnn-onnx-onnxruntime-fp32-pr50"}
    # half of digits_cnn's channels, not fine-tuned, cannot keep one point of top-1
    assert model.recommended.cell_id == "digits_cnn-onnx-onnxruntime-fp32"
    assert any("50%" in line and "cannot win accuracy back" in line for line in answer.search)


def test_search_time_is_refused_with_a_results_file_and_checked_before_anything_runs(tmp_path, capsys):
    from deploybench.harness.results.io import results_document, write_results

    path = write_results(tmp_path / "results.json", results_document([measured(FP32)], {}, {}))
    assert main(["recommend", str(path), "--search-time", "5m"]) == 2
    assert "--search-time runs the cells it chooses" in capsys.readouterr().err
    assert main(["recommend", "--models", "digits_cnn", "--search-time", "5m", "--target", "local"]) == 2
    assert "this machine only" in capsys.readouterr().err
    assert main(["recommend", "--models", "digits_cnn", "--search-time", "soon"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--search-time" in err[0]


def test_a_larger_calibration_set_never_takes_the_samples_that_judge_int8(small_cnn_spec, tmp_path):
    import numpy as np

    from deploybench.converters.accuracy_control import validation_samples
    from deploybench.converters.calibration import calibration_inputs
    from deploybench.harness.measure.accuracy import held_out_samples

    name = small_cnn_spec.input_names[0]
    spec = dataclasses.replace(small_cnn_spec, name="numbered", calibration_data=lambda n: [
        {name: np.full((1, 3, 16, 16), i, np.float32)} for i in range(n)])
    number = lambda sample: int(sample[name].flat[0])  # noqa: E731
    calibrated = {number(s) for s in calibration_inputs(spec, 256, cache_dir=tmp_path).samples}
    judged = {number(s) for s in held_out_samples(spec)}
    validated = {number(s) for s in validation_samples(spec, calibration_size=256)[0]}
    assert len(calibrated) == 256 and judged and validated
    assert not calibrated & judged and not calibrated & validated and not judged & validated
    assert {number(s) for s in calibration_inputs(spec, 64, cache_dir=tmp_path).samples} == set(range(64))
