"""`deploybench recommend --models ...` end to end: the cells run through run's own pipeline (a worker, the
conversion cache), then the answer for digits_cnn keeps its held-out top-1 within one point, confirmed on
held-out data calibration never saw. Slow: it trains (or loads) digits_cnn and converts it."""

from __future__ import annotations

import json

import pytest

from deploybench.cli import main


@pytest.mark.slow
def test_recommend_runs_the_cells_and_confirms_digits_top1_on_held_out_data(tmp_path, capsys):
    output, answer = tmp_path / "results.json", tmp_path / "recommendation.json"
    status = main(["recommend", "--models", "digits_cnn", "--backends", "onnxruntime", "--precisions", "fp32,int8",
                   "--no-memory", "--min-time", "0.05", "--no-progress", "--max-accuracy-drop", "1%",
                   "--max-size-mb", "1", "--output", str(output),
                   "--json", str(answer)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    (model,) = json.loads(answer.read_text())["models"]
    chosen = model["recommended"]
    assert chosen["accuracy_figure"] == "top1_accuracy" and chosen["task_metric"] is True
    assert chosen["accuracy_drop"] <= 0.01
    assert model["held_out"]["confirmed"] is True and model["held_out"]["samples"] == 540
    # the int8 cell is on the front or off it, never rejected: digits_cnn keeps its top-1 in int8
    fitting = {c["cell"] for c in model["front"]} | {d["cell"] for d in model["dominated"]}
    assert "digits_cnn-onnx-onnxruntime-int8" in fitting
    for cell in model["front"]:
        if cell["precision"] == "int8":  # calibrated: checked against the calibration samples by content
            assert cell["held_out"]["confirmed"] is True and "calibration data" in cell["held_out"]["text"]
    # the results were written as run writes them, so the same answer comes back from the file
    assert main(["recommend", str(output), "--max-accuracy-drop", "1%", "--max-size-mb", "1"]) == 0
    def answer_lines(text: str) -> list[str]:  # all but the "from:" line and the files written
        return [line for line in text.splitlines() if not line.startswith(("from:", "json:"))]

    assert answer_lines(capsys.readouterr().out) == answer_lines(printed)
