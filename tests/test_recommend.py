"""deploybench recommend: budgets, the Pareto front, the choice, "nothing fits", held-out confirmation and the
CLI's exit codes, on results made here (no model runs; the held-out check reads scikit-learn's digits)."""

from __future__ import annotations

import json
import math
import re
import shlex

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deploybench as db
from deploybench.cli import build_parser, main
from deploybench.harness.recommend import Budgets, recommend
from deploybench.harness.recommend.decide import dominates, objectives, pareto_front
from deploybench.harness.recommend.recommendation import run_command_line
from deploybench.harness.report.html import html_report
from deploybench.harness.results.io import results_document, write_results
from deploybench.spec import (Accuracy, Cell, DeployBenchError, LatencyStats, Result, ToleranceCheck)


def latency(median: float, p99: float | None = None) -> LatencyStats:
    p99 = median * 1.5 if p99 is None else p99
    return LatencyStats(n=50, mean=median, median=median, p90=p99, p95=p99, p99=p99, min=median * 0.9, max=p99,
                        stdev=0.1, cv=0.1, iqr=0.05)


def cell_result(model="net", fmt="onnx", backend="onnxruntime", precision="fp32", median=1.0, p99=None,
                peak=100.0, size=10.0, cosine=1.0, metric=None, passes=True, **cell_options) -> Result:
    """An ok cell with the figures a recommendation weighs; ``metric`` is a held-out top-1."""
    accuracy = Accuracy(cosine=cosine, max_abs_error=1 - cosine, top1_agreement=1.0, reference="torch fp32 eager",
                        metric="top1_accuracy" if metric is not None else None, metric_value=metric)
    return Result(cell=Cell(model, fmt, backend, precision, **cell_options), latency_ms=latency(median, p99),
                  throughput_ips=1000.0 / median, peak_rss_mb=peak,
                  artifact_bytes=None if size is None else int(size * 1e6), accuracy=accuracy,
                  tolerance=ToleranceCheck(passes, f"{precision}: {'passes' if passes else 'cosine below 0.98'}"))


# ---- the Pareto front and the choice, on a hand-made case ----------------------------------------------
def test_pareto_front_of_plain_points():
    points = [(1, 2, 0), (2, 1, 0), (3, 1, 0), (2, 2, 0), (1, 2, 0)]
    # (3, 1) is beaten by (2, 1); (2, 2) by both (1, 2) and (2, 1); equal points do not beat each other
    assert pareto_front(points) == [0, 1, 4]
    assert dominates((1, 1), (1, 2)) and not dominates((1, 2), (1, 2)) and not dominates((0, 3), (1, 2))


def test_hand_made_case_recommends_the_fastest_and_keeps_the_trade_offs_on_the_front():
    results = [cell_result(fmt="onnx", backend="onnxruntime", precision="int8", median=1.0, cosine=0.985, peak=100),
               cell_result(fmt="openvino", backend="openvino", precision="int8", median=2.0, cosine=0.995, peak=100),
               cell_result(fmt="onnx", backend="openvino", precision="int8", median=3.0, cosine=0.995, peak=120),
               cell_result(fmt="onnx", backend="onnxruntime", precision="fp32", median=4.0, cosine=1.0, peak=50),
               cell_result(fmt="openvino", backend="openvino", precision="fp32", median=5.0, cosine=1.0, peak=60)]
    (answer,) = recommend(results).models
    assert answer.recommended.cell_id == "net-onnx-onnxruntime-int8"
    assert [f.cell_id for f in answer.front] == ["net-onnx-onnxruntime-int8", "net-openvino-openvino-int8",
                                                "net-onnx-onnxruntime-fp32"]
    assert {d.figures.cell_id: d.by.cell_id for d in answer.dominated} == {
        "net-onnx-openvino-int8": "net-openvino-openvino-int8", "net-openvino-openvino-fp32": "net-onnx-onnxruntime-fp32"}
    # a drop budget of 1% moves the choice to the fastest cell within it, and rejects the faster one saying by how much
    (tight,) = recommend(results, {"accuracy_drop": "1%"}).models
    assert tight.recommended.cell_id == "net-openvino-openvino-int8"
    (rejected,) = tight.rejected
    assert rejected.figures.cell_id == "net-onnx-onnxruntime-int8"
    assert [b.budget for b in rejected.broken] == ["accuracy_drop"]
    assert "cosine drop 1.5% > 1.0%" in rejected.broken[0].text and "0.5 points" in rejected.broken[0].text


def test_a_cell_that_fails_its_tolerance_is_never_recommended_unless_allowed():
    results = [cell_result(precision="int8", median=1.0, cosine=0.95, passes=False), cell_result(median=3.0)]
    assert recommend(results).models[0].recommended.cell_id == "net-onnx-onnxruntime-fp32"
    assert "fails its precision's tolerance" in recommend(results).models[0].rejected[0].broken[0].text
    allowed = recommend(results, Budgets(allow_tolerance_failures=True)).models[0]
    assert allowed.recommended.cell_id == "net-onnx-onnxruntime-int8"


def test_the_task_metric_drop_is_against_the_torch_fp32_cell():
    results = [cell_result(fmt="torch", backend="torch", median=9.0, size=None, metric=0.990),
               cell_result(precision="int8", median=1.0, cosine=0.999, metric=0.975),
               cell_result(fmt="openvino", backend="openvino", precision="int8", median=2.0, cosine=0.99, metric=0.985)]
    (answer,) = recommend(results, {"accuracy_drop": 0.01}).models
    # the cosine would let the fastest through; its top-1 lost 1.5 points and rejects it
    assert answer.recommended.cell_id == "net-openvino-openvino-int8"
    assert answer.recommended.drop.figure == "top1_accuracy"
    assert answer.recommended.drop.value == pytest.approx(0.005)
    assert "0.99 of the torch fp32 cell" in answer.recommended.drop.basis
    (rejected,) = answer.rejected
    assert rejected.figures.drop.value == pytest.approx(0.015)


def test_a_detector_drop_comes_from_its_own_reference_map():
    result = cell_result(precision="int8", metric=0.95)
    result.accuracy.metric = "map50"
    result.accuracy.per_output["detection"] = {"reference_map50": 0.99, "map50_drop": 0.04, "images": 200}
    (answer,) = recommend([result], {"accuracy_drop": "5%"}).models
    assert answer.recommended.drop.value == pytest.approx(0.04) and answer.recommended.drop.task_metric
    assert "200 held-out images" in answer.recommended.drop.basis


def test_a_figure_not_measured_breaks_the_budget_on_it():
    no_memory = cell_result(median=1.0, peak=None)
    measured = cell_result(fmt="openvino", backend="openvino", median=2.0, peak=150)
    torch = cell_result(fmt="torch", backend="torch", median=0.5, size=None)
    (answer,) = recommend([no_memory, measured, torch], {"peak_mb": 200, "size_mb": 50}).models
    assert answer.recommended is measured_figures(answer, "net-openvino-openvino-fp32")
    texts = {r.figures.cell_id: r.broken[0].text for r in answer.rejected}
    assert "peak memory not measured" in texts["net-onnx-onnxruntime-fp32"]
    assert "size not measured (a torch cell has no artifact)" in texts["net-torch-torch-fp32"]


def measured_figures(answer, cell_id):
    return next(f for f in answer.front if f.cell_id == cell_id)


# ---- nothing fits --------------------------------------------------------------------------------------
def test_an_impossible_budget_says_nothing_fits_and_names_the_closest_cells():
    results = [cell_result(precision="int8", median=2.0, p99=3.0, peak=90),
               cell_result(fmt="openvino", backend="openvino", median=4.0, p99=6.0, peak=200),
               cell_result(fmt="openvino", backend="openvino", precision="int8", median=1.5, p99=2.2, peak=120),
               cell_result(fmt="torch", backend="torch", median=20.0, p99=40.0, peak=400, size=None)]
    recommendation = recommend(results, {"p99_ms": "1ms", "peak_mb": "100MB"})
    (answer,) = recommendation.models
    assert not recommendation.fits and answer.recommended is None and answer.front == []
    closest = [r.figures.cell_id for r in answer.closest]
    # one budget broken beats two; among two, the smaller total overshoot
    assert closest == ["net-onnx-onnxruntime-int8", "net-openvino-openvino-int8", "net-openvino-openvino-fp32"]
    assert [b.text for b in answer.closest[0].broken] == ["p99 3 ms > 1 ms (+200%)"]
    text = recommendation.table()
    assert "net: NOTHING FITS (p99 <= 1 ms, peak memory <= 100 MB)" in text
    assert "peak memory 120 MB > 100 MB (+20%)" in text
    data = recommendation.to_dict()
    assert data["fits"] is False and data["models"][0]["closest"] == closest
    assert "nothing fits" in recommendation.markdown()


def test_failed_and_skipped_cells_are_listed_with_their_reason():
    failed = Result(cell=Cell("net", "onnx", "openvino", "int8")).not_run("failed", "convert", "boom: it broke")
    skipped = Result(cell=Cell("net", "torch", "torch", "int8")).not_run("skipped", "availability", "no int8 mode")
    recommendation = recommend([failed, skipped])
    (answer,) = recommendation.models
    assert not answer.fits and [r.status for r in answer.not_run] == ["failed", "skipped"]
    assert "failed   net-onnx-openvino-int8: boom: it broke" in recommendation.table()


# ---- a recommendation never breaks a budget (hypothesis over generated results) ----------------------------
figure = st.floats(min_value=0.05, max_value=500, allow_nan=False)


@st.composite
def generated_cells(draw):
    count = draw(st.integers(min_value=1, max_value=8))
    combos = [(f, b, p) for f, b in (("onnx", "onnxruntime"), ("onnx", "openvino"), ("openvino", "openvino"),
                                     ("tflite", "tflite")) for p in ("fp32", "fp16", "int8")]
    chosen = draw(st.lists(st.sampled_from(combos), min_size=count, max_size=count, unique=True))
    results = []
    for fmt, backend, precision in chosen:
        median = draw(figure)
        results.append(cell_result(
            fmt=fmt, backend=backend, precision=precision, median=median, p99=median * draw(st.floats(1, 5)),
            peak=draw(st.none() | figure), size=draw(st.none() | figure), cosine=draw(st.floats(0.9, 1.0)),
            passes=draw(st.booleans())))
    return results


# Budgets drawn near the cells' own figures, where an off-by-a-bit comparison would show.
NEAR = st.sampled_from([0.5, 0.95, 0.999, 1.0, 1.001, 1.05, 2.0])


def near_budgets(data, results) -> Budgets:
    def near(values):
        known = [v for v in values if v is not None]
        if not known or not data.draw(st.booleans()):
            return None
        return data.draw(st.sampled_from(known)) * data.draw(NEAR)

    return Budgets(accuracy_drop=near([1 - r.accuracy.cosine for r in results]),
                   median_ms=near([r.latency_ms.median for r in results]),
                   p99_ms=near([r.latency_ms.p99 for r in results]),
                   peak_mb=near([r.peak_rss_mb for r in results]),
                   size_mb=near([r.artifact_bytes / 1e6 if r.artifact_bytes is not None else None for r in results]),
                   min_throughput=near([r.throughput_ips for r in results]),
                   rank_by=data.draw(st.sampled_from(["median", "p99"])))


def fits_independently(r: Result, b: Budgets) -> bool:
    """The budgets checked straight on the Result's own fields, apart from the code under test."""
    lat = r.latency_ms
    checks = [r.passes_accuracy,
              b.accuracy_drop is None or max(0.0, 1 - r.accuracy.cosine) <= b.accuracy_drop,
              b.median_ms is None or lat.median <= b.median_ms, b.p99_ms is None or lat.p99 <= b.p99_ms,
              b.peak_mb is None or (r.peak_rss_mb is not None and r.peak_rss_mb <= b.peak_mb),
              b.size_mb is None or (r.artifact_bytes is not None and r.artifact_bytes / 1e6 <= b.size_mb),
              b.min_throughput is None or r.throughput_ips >= b.min_throughput]
    return all(checks)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_cells(), st.data())
def test_a_recommendation_never_breaks_a_budget_and_is_the_best_that_fits(results, data):
    budgets = near_budgets(data, results)
    (answer,) = recommend(results, budgets).models
    fitting = [r for r in results if fits_independently(r, budgets)]
    assert answer.fits == bool(fitting)
    if not fitting:
        assert answer.front == [] and len(answer.rejected) == len(results)
        return
    chosen = answer.recommended.result
    assert fits_independently(chosen, budgets)
    rank = (lambda r: r.latency_ms.median) if budgets.rank_by == "median" else (lambda r: r.latency_ms.p99)
    assert rank(chosen) == min(rank(r) for r in fitting)
    # the front: fitting cells only, none dominated by a fitting cell, and every other fitting cell dominated
    points = {id(f.result): objectives(f, budgets) for f in [*answer.front, *(d.figures for d in answer.dominated)]}
    assert {id(r) for r in fitting} == set(points)
    front = {id(f.result) for f in answer.front}
    for key, point in points.items():
        beaten = any(dominates(other, point) for other_key, other in points.items() if other_key != key)
        assert beaten == (key not in front)
    assert answer.recommended is answer.front[0]


# ---- held-out confirmation -------------------------------------------------------------------------------
def digits_int8(calibration_source: str) -> Result:
    result = cell_result(model="digits_cnn", precision="int8", metric=0.99)
    result.model_ref = "digits_cnn"
    result.extra["artifact"] = {"calibration_source": calibration_source}
    return result


def test_held_out_top1_is_confirmed_by_content_against_the_calibration_samples():
    reference = cell_result(model="digits_cnn", fmt="torch", backend="torch", metric=0.993, size=None, median=5)
    answer = recommend([reference, digits_int8("real (model calibration data)")]).models[0]
    assert answer.held_out.confirmed and answer.held_out.samples == 540
    assert "none of them among the first 256 samples of its calibration data" in answer.held_out.text


def test_held_out_is_not_confirmed_when_calibration_shared_samples_with_it(tmp_path):
    from deploybench.models.digits import eval_data

    images, _ = eval_data()  # ({"image": N x 1 x 8 x 8}, labels)
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, image=np.concatenate([images["image"][:10], np.zeros((5, 1, 8, 8), np.float32)]))
    reference = cell_result(model="digits_cnn", fmt="torch", backend="torch", metric=0.993, size=None, median=5)
    matrix = db.Matrix(results=[reference, digits_int8("real (calib.npz, 15 samples, sha256 0123)")],
                       settings={"calibration_data": str(calibration)})
    answer = recommend(matrix).models[0]
    assert not answer.held_out.confirmed
    assert "10 of the 540 held-out samples" in answer.held_out.text
    assert "--calibration-data" in answer.command


def test_a_model_without_labels_is_said_to_be_unconfirmed():
    result = cell_result(model="resnet18", precision="int8", cosine=0.998)
    answer = recommend([result]).models[0]
    assert not answer.held_out.confirmed
    assert answer.held_out.text.startswith("not confirmed on held-out data: judged on cosine 0.998")
    assert "without labels" in answer.held_out.text


# ---- the command that reproduces a cell ------------------------------------------------------------------
def test_the_reproducing_command_is_a_valid_run_of_that_one_cell():
    result = cell_result(model="tiny_transformer", fmt="onnx", backend="openvino", precision="int8",
                         dims=(("batch", 8), ("seq", 64)), threads=2, shapes="dynamic", scenario="server")
    command = run_command_line(result, {"server": {"p99_budget_ms": 20.0}, "tolerances": {"int8": {"cosine": 0.97}}})
    words = shlex.split(command)
    assert words[:2] == ["deploybench", "run"]
    args = build_parser().parse_args(words[1:])
    assert (args.models, args.formats, args.backends, args.precisions) == ("tiny_transformer", "onnx", "openvino", "int8")
    assert (args.threads, args.batch_sizes, args.dims, args.shapes, args.scenarios, args.p99_budget_ms) == (
        (2,), (8,), [("seq", (64,))], ("dynamic",), ("server",), 20.0)
    assert args.tolerance == ["int8:cosine=0.97"]


# ---- outputs ---------------------------------------------------------------------------------------------
def test_json_markdown_and_html_render_the_same_answer():
    results = [cell_result(precision="int8", median=1.0, cosine=0.99), cell_result(median=3.0, peak=None)]
    recommendation = db.recommend(results, {"accuracy_drop": "2%"})
    data = json.loads(json.dumps(recommendation.to_dict(), allow_nan=False))
    assert data["schema"] == "deploybench.recommendation/1" and data["fits"] is True
    model = data["models"][0]
    assert model["recommended"]["cell"] == "net-onnx-onnxruntime-int8"
    assert [c["cell"] for c in model["front"]] == ["net-onnx-onnxruntime-int8", "net-onnx-onnxruntime-fp32"]
    assert model["held_out"]["confirmed"] is False and model["command"].startswith("deploybench run")
    assert "| ✔ | onnx | onnxruntime | int8 |" in recommendation.markdown()
    page = html_report(results, recommendation=recommendation)
    # marked in the recommendation's own table and in the matrix table (where it is also the ★ cell)
    assert re.findall(r'<tr class="([^"]*)"><td[^>]*>✔', page) == ["recommended", "best recommended"]
    assert "<h2>Recommendation</h2>" in page


# ---- the CLI ---------------------------------------------------------------------------------------------
@pytest.fixture
def results_file(tmp_path):
    results = [cell_result(precision="int8", median=1.0, cosine=0.99, p99=2.0),
               cell_result(fmt="openvino", backend="openvino", median=3.0, p99=4.0)]
    return write_results(tmp_path / "results.json", results_document(results, {}, {}))


def test_cli_exit_codes(results_file, tmp_path, capsys):
    assert main(["recommend", str(results_file), "--max-accuracy-drop", "2%", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["models"][0]["recommended"]["cell"] == "net-onnx-onnxruntime-int8"
    assert main(["recommend", str(results_file), "--max-p99-ms", "0.5"]) == 1
    assert "NOTHING FITS" in capsys.readouterr().out
    assert main(["recommend", str(results_file), "--scenario", "offline"]) == 3
    assert "no cell of" in capsys.readouterr().err
    assert main(["recommend", str(results_file), "--max-accuracy-drop", "1"]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert main(["recommend", str(results_file), "--max-p99-ms", "20%"]) == 2
    assert main(["recommend"]) == 2
    assert main(["recommend", str(results_file), "--models", "digits_cnn"]) == 2


@pytest.mark.parametrize("content", ["{not json", '{"cells": 3}', '[1, 2]', '{"cells": [{"model": "x"}]}'])
def test_a_bad_results_file_is_one_clear_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["recommend", str(bad), "--max-accuracy-drop", "1%"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deploybench: error: results file") and captured.out == ""


def test_budgets_refuse_what_they_cannot_mean():
    with pytest.raises(DeployBenchError, match="fraction below 1"):
        Budgets(accuracy_drop=1.5)
    with pytest.raises(DeployBenchError, match="unknown budget"):
        Budgets.coerce({"latency": 3})
    with pytest.raises(DeployBenchError, match="not a number of MB"):
        Budgets.coerce({"peak_mb": "200GB"})
    assert Budgets.coerce({"p99_ms": "20ms", "accuracy_drop": "1%"}).p99_ms == 20.0
    assert math.isclose(Budgets.coerce({"accuracy_drop": "1%"}).accuracy_drop, 0.01)


def test_readme_recommend_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's API example of recommend, on a results file written here in its place."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "db.recommend(" in b]
    results = [cell_result(model="resnet18", precision="int8", median=4.0, p99=9.0, cosine=0.998, peak=120),
               cell_result(model="resnet18", fmt="openvino", backend="openvino", median=12.0, p99=16.0, peak=190)]
    write_results(tmp_path / "results.json", results_document(results, {}, {}))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "resnet18: recommended onnx / onnxruntime / int8" in out
    assert (tmp_path / "recommendation.md").read_text().startswith("## deploybench recommendation")


def test_cells_of_one_other_scenario_are_weighed_on_it_by_throughput(tmp_path, capsys):
    fast = cell_result(precision="int8", median=5.0, scenario="offline")
    fast.throughput_ips = 400.0
    slow = cell_result(median=2.0, scenario="offline")
    slow.throughput_ips = 300.0
    path = write_results(tmp_path / "offline.json", results_document([fast, slow], {}, {}))
    assert main(["recommend", str(path)]) == 0
    out = capsys.readouterr().out
    assert "scenario offline, fastest by throughput" in out
    assert "recommended onnx / onnxruntime / int8 (offline)" in out


def resnet18_int8(held_out_inputs: int | None, calibration_source: str = "real (model calibration data)") -> Result:
    result = cell_result(model="resnet18", precision="int8", cosine=0.998)
    result.accuracy.held_out_inputs = held_out_inputs
    result.extra["artifact"] = {"calibration_source": calibration_source}
    return result


def dataclass_replace_calibration(result: Result, calibration: int) -> Result:
    import dataclasses

    result.cell = dataclasses.replace(result.cell, calibration=calibration)
    return result


def test_agreement_on_real_held_out_inputs_is_confirmed_by_content_for_a_model_without_labels():
    answer = recommend([resnet18_int8(64)]).models[0]
    assert answer.held_out.confirmed and answer.held_out.samples == 64
    assert answer.held_out.text == ("confirmed on 64 held-out real inputs (cosine agreement with fp32; no labels, so "
                                    "not a task accuracy), none of them among the 64 samples it was calibrated on")
    # calibrated on 256, the set skips the judged inputs: still confirmed, against those 256
    larger = recommend([dataclass_replace_calibration(resnet18_int8(64), 256)]).models[0].held_out
    assert larger.confirmed and "none of them among the 256 samples" in larger.text
    # the same figure on seeded inputs (a results file that does not say otherwise) is not confirmed
    assert not recommend([resnet18_int8(None)]).models[0].held_out.confirmed


def test_agreement_inputs_shared_with_a_calibration_file_are_not_confirmed(tmp_path):
    from deploybench.harness.measure.accuracy import held_out_samples
    from deploybench.resolve import get_model

    judged = held_out_samples(get_model("resnet18"), 64)
    calibration = tmp_path / "crops.npz"
    np.savez(calibration, image=np.concatenate([s["image"] for s in judged[:3]] + [np.zeros_like(judged[0]["image"])]))
    matrix = db.Matrix(results=[resnet18_int8(64, "real (crops.npz, 4 samples, sha256 0123)")],
                       settings={"calibration_data": str(calibration)})
    answer = recommend(matrix).models[0]
    assert not answer.held_out.confirmed
    assert "3 of the 64 held-out real inputs" in answer.held_out.text
