"""Merging matrices of several machines / CI shards into one matrix with the machine as a dimension."""

from __future__ import annotations

import argparse
import json

import pytest

from deploybench.harness.pipeline.plan import select_shard
from deploybench.harness.report.table import terminal_table
from deploybench.harness.results import merge
from deploybench.harness.results.io import load_results_file
from deploybench.harness.report.matrix import Matrix
from deploybench.spec import Accuracy, Cell, DeployBenchError, LatencyStats, Result


def result_for(cell: Cell, median: float) -> Result:
    latency = LatencyStats(n=20, mean=median, median=median, p90=median * 1.1, p95=median * 1.2, p99=median * 1.3,
                           min=median * 0.9, max=median * 1.4, stdev=median * 0.05, cv=0.05, iqr=median * 0.04)
    return Result(cell, latency_ms=latency, peak_rss_mb=100 + median, accuracy=Accuracy(max_abs_error=1e-6),
                  samples_ms=[median * 0.98, median, median * 1.02])


def save(path, results, machine_id, cpu="TestCPU"):
    Matrix(results, machine={"machine_id": machine_id, "cpu": cpu, "cores": 2}, settings={"shard": path.stem}).save(path)
    return path


CELLS = [Cell(model, fmt, backend, precision)
         for model in ("digits_cnn", "resnet18", "tiny_transformer")
         for fmt, backend in (("torch", "torch"), ("onnx", "onnxruntime"), ("onnx", "openvino"), ("openvino", "openvino"))
         for precision in ("fp32", "int8")]


def test_shard_round_trip_merges_back_to_the_unsharded_matrix(tmp_path):
    unsharded = {cell: result_for(cell, median=1.0 + i) for i, cell in enumerate(CELLS)}
    count = 3
    shard_files = []
    for index in range(1, count + 1):
        cells = select_shard(CELLS, index, count)
        shard_files.append(save(tmp_path / f"shard-{index}.json", [unsharded[c] for c in cells], machine_id="ci-linux"))
    merged = merge.merge_matrices(shard_files)
    assert merged["machines"] == {"ci-linux": {"machine_id": "ci-linux", "cpu": "TestCPU", "cores": 2}}
    assert [s["source"] for s in merged["settings"]["merged_from"]] == [str(p) for p in shard_files]
    out = tmp_path / "merged.json"
    out.write_text(json.dumps(merged))
    loaded = Matrix.load(out)  # the matrix engineer's reader accepts the merged file
    assert sorted(r.cell for r in loaded.results) == sorted(CELLS)
    for r in loaded.results:
        assert r.machine_id == "ci-linux" and "machine_id" not in r.extra
        expected = unsharded[r.cell]
        assert r.latency_ms == expected.latency_ms and r.samples_ms == expected.samples_ms
        assert r.peak_rss_mb == expected.peak_rss_mb
    results, machine, _ = load_results_file(out)  # and so does the report
    assert len(results) == len(CELLS) and machine["machine_id"] == "ci-linux"


def test_same_cell_on_two_machines_is_a_machine_dimension(tmp_path):
    cell = CELLS[0]
    a = save(tmp_path / "linux.json", [result_for(cell, 2.0)], machine_id="linux-x86")
    b = save(tmp_path / "mac.json", [result_for(cell, 1.0)], machine_id="mac-arm", cpu="M2")
    merged = merge.merge_matrices([a, b])
    assert sorted(merged["machines"]) == ["linux-x86", "mac-arm"]
    assert [(c["machine_id"], c["latency_ms"]["median"]) for c in merged["cells"]] == [("linux-x86", 2.0), ("mac-arm", 1.0)]
    # merging a merged file again with a third machine works, and collisions are still found
    c = save(tmp_path / "win.json", [result_for(cell, 3.0)], machine_id="win")
    again = merge.merge_matrices([merged, c])
    assert sorted(again["machines"]) == ["linux-x86", "mac-arm", "win"] and len(again["cells"]) == 3
    with pytest.raises(DeployBenchError, match="on machine mac-arm is in both input #1 and"):
        merge.merge_matrices([again, b])
    # the report shows the two machines as separate groups, each with its best cell
    out = tmp_path / "merged.json"
    out.write_text(json.dumps(merged))
    results, machine, _ = load_results_file(out)
    table = terminal_table(results, machine)
    assert f"{cell.model} @ linux-x86" in table and f"{cell.model} @ mac-arm" in table
    assert "linux-x86: TestCPU" in table and "mac-arm: M2" in table


def test_merge_refuses_the_same_cell_on_the_same_machine(tmp_path):
    a = save(tmp_path / "a.json", [result_for(CELLS[0], 1.0), result_for(CELLS[1], 1.0)], machine_id="m1")
    b = save(tmp_path / "b.json", [result_for(CELLS[1], 1.5)], machine_id="m1")
    with pytest.raises(DeployBenchError) as caught:
        merge.merge_matrices([a, b])
    message = str(caught.value)
    assert "\n" not in message
    assert CELLS[1].id in message and str(a) in message and str(b) in message and "m1" in message


def test_merge_cli(tmp_path, capsys):
    a = save(tmp_path / "a.json", [result_for(CELLS[0], 1.0)], machine_id="m1")
    b = save(tmp_path / "b.json", [result_for(CELLS[1], 1.0)], machine_id="m1")
    parser = merge.add_merge_arguments(argparse.ArgumentParser())
    out = tmp_path / "out" / "merged.json"
    assert merge.merge_command(parser.parse_args([str(a), str(b), "--output", str(out)])) == 0
    assert "merged 2 cells from 2 files (1 machine(s))" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["cells"]) == 2
    assert merge.merge_command(parser.parse_args([str(a), str(a), "--output", str(out)])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in both" in err
    (tmp_path / "bad.json").write_text('{"cells": 3}')
    assert merge.merge_command(parser.parse_args([str(a), str(tmp_path / "bad.json"), "-o", str(out)])) == 2
    assert "has no 'cells' list" in capsys.readouterr().err


def test_machine_without_id_gets_a_stable_one():
    machine = {"cpu": "X", "cores": 4, "os": "Linux"}
    assert merge.machine_id_of(machine) == merge.machine_id_of(dict(machine)) != merge.machine_id_of({"cpu": "Y"})
    assert merge.machine_id_of({"machine_id": "abc", "cpu": "X"}) == "abc"


def test_machine_kind_label_joins_shards_of_different_runners(tmp_path):
    a = save(tmp_path / "a.json", [result_for(CELLS[0], 1.0)], machine_id="runner-1")
    b = save(tmp_path / "b.json", [result_for(CELLS[1], 1.0)], machine_id="runner-2")
    merged = merge.merge_matrices([a, b], machine_id="linux-x86")
    assert list(merged["machines"]) == ["linux-x86"]
    assert merged["machines"]["linux-x86"]["runners"] == ["runner-1", "runner-2"]
    assert {c["machine_id"] for c in merged["cells"]} == {"linux-x86"}
    again = save(tmp_path / "c.json", [result_for(CELLS[1], 2.0)], machine_id="runner-3")
    with pytest.raises(DeployBenchError, match=f"cell {CELLS[1].id} on machine linux-x86 is in both"):
        merge.merge_matrices([a, b, again], machine_id="linux-x86")


def test_an_interrupted_shard_leaves_the_merged_matrix_incomplete(tmp_path):
    a = save(tmp_path / "a.json", [result_for(CELLS[0], 1.0)], machine_id="m1")
    b = tmp_path / "b.json"
    Matrix([result_for(CELLS[1], 1.0)], machine={"machine_id": "m1"},
           incomplete="interrupted (SIGTERM) after 1 of 2 cells").save(b)
    assert Matrix.load(b).incomplete == "interrupted (SIGTERM) after 1 of 2 cells"
    merged = merge.merge_matrices([a, b])
    assert merged["incomplete"] == f"{b}: interrupted (SIGTERM) after 1 of 2 cells"
    assert [s["incomplete"] for s in merged["settings"]["merged_from"]] == ["", merged["incomplete"][len(f"{b}: "):]]
    assert merge.merge_matrices([a])["incomplete"] == ""
