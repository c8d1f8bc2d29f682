"""`deploybench run --target`: cells measured on another machine through a real SSH server on 127.0.0.1.

The "device" is this machine reached over SSH (tests/ssh_server.py), its worker started in the device's
Python (a virtual environment without PyTorch: tests/device_env.py) in its own working folder; the artifacts travel by SFTP, the reference's outputs come back from the
host. Faults are made for real: the device's worker is killed mid-cell, the server is stopped mid-run, the
key is refused, the device's Python is missing, deploybench is missing there.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
import venv
from pathlib import Path

import psutil
import pytest

pytest.importorskip("asyncssh", reason="needs asyncssh: pip install 'deploybench[remote]'")

from deploybench.cli import main  # noqa: E402
from deploybench.harness.pipeline.matrix import open_workers, run_cells, worker_key  # noqa: E402
from deploybench.harness.pipeline.remote_worker import RemoteWorker, open_devices  # noqa: E402
from deploybench.harness.pipeline.settings import RunSettings, TimingRules  # noqa: E402
from deploybench.harness.results.io import load_results_file  # noqa: E402
from deploybench.harness.results.merge import merge_matrices  # noqa: E402
from deploybench.spec import Cell  # noqa: E402

from ssh_fixtures import Server, target  # noqa: E402 (the fixtures come from conftest.py)

pytestmark = pytest.mark.openvino
pytest_plugins = ["pytester"]

QUICK = ["--min-time", "0.2", "--min-samples", "10", "--no-progress"]


def _targets_file(tmp_path: Path, server, python: Path, **fields) -> Path:
    fields = {"host": "127.0.0.1", "port": server.port, "python": str(python), **fields}
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
    path = tmp_path / "targets.toml"
    path.write_text(f"[box]\n{body}")
    return path


def _run(tmp_path: Path, *args: str, name: str = "out.json") -> tuple[int, dict]:
    out = tmp_path / name
    code = main(["run", "--models", "digits_cnn", "--backends", "onnxruntime,openvino", "--precisions", "fp32,int8",
                 *QUICK, "-o", str(out), *args])
    return code, json.loads(out.read_text())


def _cells(document: dict) -> dict[str, dict]:
    return {f"{c['model']}-{c['format']}-{c['backend']}-{c['precision']}": c for c in document["cells"]}


def test_cells_on_a_target_carry_its_machine_and_match_the_local_accuracy(server, client_home, tmp_path, device_python):
    targets = _targets_file(tmp_path, server, device_python)
    code, remote = _run(tmp_path, "--target", "box", "--targets-file", str(targets), name="remote.json")
    assert code == 0
    code, local = _run(tmp_path, name="local.json")
    assert code == 0
    there, here = _cells(remote), _cells(local)
    assert set(there) == set(here) and len(there) == 6
    for key, cell in there.items():
        assert cell["status"] == "ok", (key, cell["reason"])
        assert cell["target"] == "box" and cell["isolation"] == "worker on box"
        assert cell["machine_id"] == remote["machine"]["machine_id"]
        # the same artifact, the same inputs, the same reference: the same errors and the same top-1
        assert cell["accuracy"]["max_abs_error"] == pytest.approx(here[key]["accuracy"]["max_abs_error"], rel=1e-6)
        assert cell["accuracy"]["metric_value"] == here[key]["accuracy"]["metric_value"]
        assert cell["accuracy"]["reference"] == "torch fp32 eager"
        assert cell["peak_rss_mb"] > 0 and cell["latency_ms"]["n"] >= 10
        assert cell["artifact_path"].startswith("artifacts/")
    assert remote["machine"]["executable"] == str(device_python)
    assert remote["machine"]["libraries"].get("torch") is None  # a device without PyTorch
    assert remote["settings"]["targets"] == [f"ssh://127.0.0.1:{server.port}"]
    # a device's run and this machine's merge as two machines, the target kept in each cell's id
    merged = merge_matrices([tmp_path / "remote.json", tmp_path / "local.json"])
    assert len(merged["cells"]) == 12
    assert {c.get("target", "") for c in merged["cells"]} == {"box", ""}


def test_an_artifact_already_on_the_device_is_not_sent_again(server, client_home, tmp_path, device_python):
    targets = _targets_file(tmp_path, server, device_python, workdir="bench")
    args = ["--precisions", "fp32", "--backends", "onnxruntime", "--target", "box", "--targets-file", str(targets)]
    main(["run", "--models", "digits_cnn", *args, *QUICK])
    sent = sorted((server.home / "bench" / "artifacts").rglob("model.onnx"))
    assert len(sent) == 1 and (sent[0].parent / ".complete").is_file()
    before = sent[0].stat().st_mtime_ns, sent[0].stat().st_ino
    main(["run", "--models", "digits_cnn", *args, *QUICK])  # a fresh process knows nothing of the first
    assert (sent[0].stat().st_mtime_ns, sent[0].stat().st_ino) == before
    assert sorted((server.home / "bench" / "artifacts").rglob("model.onnx")) == sent


def _device_workers(home: Path) -> list[psutil.Process]:
    """The device workers the test server started: their working folder is under its login folder."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "--device" in (process.info["cmdline"] or []) and process.cwd().startswith(str(home)):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _remote_run(server, cells: list[Cell], on_stage=None, device_max_memory_mb: float | None = None,
                **fields) -> list:
    """Cells of digits_cnn on the test server's device, with a callback at each stage of each cell; a memory
    limit for the device's worker only (the host's, with PyTorch, holds far more than a device's)."""
    settings = RunSettings(timing=TimingRules(min_time_s=0.2, min_samples=10, warmup_count=3), timeout_s=60)
    opened = open_workers(["digits_cnn"], settings)
    devices = open_devices([target(server, **fields)], settings, connect_timeout=5)
    remote = RemoteWorker(opened[0][1], devices[0], dataclasses.replace(settings, max_memory_mb=device_max_memory_mb))
    results = []
    try:
        for cell in cells:
            results.append(remote.run_cell(cell, on_stage=lambda stage, c=cell: on_stage and on_stage(c, stage)))
    finally:
        remote.close()
        opened[0][1].close()
        devices[0].close()
    return results


def _cell(backend: str = "onnxruntime", precision: str = "fp32") -> Cell:
    return Cell("digits_cnn", "onnx", backend, precision, target="box")


def test_a_device_worker_killed_mid_cell_fails_that_cell_and_the_next_one_runs(server, client_home, device_python):
    def kill_in_timing(cell, stage):
        if cell.precision == "fp32" and stage == "time":
            for process in _device_workers(server.home):
                process.kill()

    first, second = _remote_run(server, [_cell(), _cell(precision="int8")], kill_in_timing, python=str(device_python))
    deadline = time.monotonic() + 10
    while _device_workers(server.home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _device_workers(server.home)  # the run closed: nothing left running on the device
    assert (first.status, first.stage) == ("failed", "time")
    assert first.reason == "time: worker killed by SIGKILL on box"
    assert second.status == "ok", second.reason


def test_max_memory_holds_on_the_device_its_worker_stops_itself_and_says_so(server, client_home, device_python):
    # the host cannot see a device's processes: the worker there watches its own memory. A Python that has
    # imported ONNX Runtime holds more than 40 MB, so every cell's worker stops itself, once per cell.
    results = _remote_run(server, [_cell(), _cell(precision="int8")], python=str(device_python), device_max_memory_mb=40)
    for result in results:
        assert result.status == "failed", result.reason
        assert re.fullmatch(r"\w+: worker stopped on box \(out of memory: the worker held \d+ MB, over "
                            r"--max-memory 40 MB; stopped\)", result.reason), result.reason
    assert not _device_workers(server.home)
    # with room to spare the same cells run
    (roomy,) = _remote_run(server, [_cell()], python=str(device_python), device_max_memory_mb=4000)
    assert roomy.status == "ok", roomy.reason


def test_a_device_worker_gone_between_cells_is_started_again_for_the_next(server, client_home, device_python):
    killed = []

    def kill_when_converting(cell, stage):  # the device's worker is idle while this machine converts
        if cell.precision == "int8" and stage == "convert" and not killed:
            for process in _device_workers(server.home):
                process.kill()
                process.wait(10)
                killed.append(process.pid)

    first, second = _remote_run(server, [_cell(), _cell(precision="int8")], kill_when_converting,
                                python=str(device_python))
    assert first.status == "ok", first.reason
    assert killed and second.status == "ok", second.reason


def test_the_server_stopping_mid_run_fails_cells_with_reasons_and_no_hang(keys, client_home, tmp_path, device_python):
    doomed = Server(tmp_path, keys["root"] / "host_key", keys["root"] / "authorized_keys")
    host_key = keys["host"].export_public_key().decode().strip()
    with open(client_home / ".ssh" / "known_hosts", "a") as known:
        known.write(f"[127.0.0.1]:{doomed.port} {host_key}\n")

    def stop_in_timing(cell, stage):
        if stage == "time":
            doomed.stop()

    started = time.monotonic()
    try:
        results = _remote_run(doomed, [_cell(), _cell("openvino"), _cell(precision="int8")], stop_in_timing,
                              python=str(device_python))
    finally:
        doomed.stop()
    assert time.monotonic() - started < 60
    assert [r.status for r in results] == ["failed"] * 3
    assert results[0].stage == "time" and "worker" in results[0].reason
    for later in results[1:]:  # no server: the next cells fail to connect, each with the one line
        assert later.stage == "connect" and later.reason.startswith("connect: target box:"), later.reason


def test_a_refused_key_fails_every_cell_there_with_one_line(server, client_home, keys, tmp_path, capsys):
    targets = _targets_file(tmp_path, server, sys.executable, identity_file=str(keys["root"] / "stranger_key"))
    started = time.monotonic()
    code = main(["run", "--models", "digits_cnn", "--backends", "onnxruntime,openvino", "--precisions", "fp32",
                 "--target", "box", "--targets-file", str(targets), *QUICK, "-o", str(tmp_path / "out.json")])
    assert code == 1 and time.monotonic() - started < 60
    cells = json.loads((tmp_path / "out.json").read_text())["cells"]
    failed = [c for c in cells if c["status"] == "failed"]
    assert len(failed) == 3  # onnx on onnxruntime and openvino, openvino IR
    assert all(c["stage"] == "connect" and "refused" in c["reason"] for c in failed)


def test_a_missing_python_on_the_device_says_which_and_how_to_set_it(server, client_home):
    (result,) = _remote_run(server, [_cell()], python="/opt/nowhere/python3")
    assert (result.status, result.stage) == ("failed", "start")
    assert "no `/opt/nowhere/python3` on box" in result.reason and 'set python = "/path/to/python3"' in result.reason


def test_a_device_without_deploybench_is_told_what_to_install(server, client_home, tmp_path):
    bare = tmp_path / "bare-venv"
    venv.create(bare, with_pip=False)
    (result,) = _remote_run(server, [_cell()], python=str(bare / "bin" / "python"))
    assert (result.status, result.stage) == ("failed", "start")
    assert "box has no deploybench" in result.reason
    assert "-m pip install 'deploybench[runtime]'" in result.reason


def test_a_target_cell_keeps_its_target_in_id_and_key():
    cell = _cell()
    assert cell.id == "digits_cnn-onnx-onnxruntime-fp32@box" and cell.variant == "@box"
    assert Cell.from_dict(cell.to_dict()) == cell
    assert "target" not in Cell("m", "onnx", "onnxruntime", "fp32").to_dict()
    assert worker_key("digits_cnn", "box") != worker_key("digits_cnn")
    assert run_cells({}, []) == []


def test_the_pytest_plugin_runs_the_same_cells_on_a_target(pytester, server, client_home, tmp_path, device_python):
    # pytester sets HOME to its own folder: client_home, asked for after it, puts the SSH set-up there
    """`pytest --target box --target local`: each cell once per machine, `-k box` picks the device's."""
    pytester.makepyfile(test_deploy="from deploybench.harness.suite import test_memory, test_precision, test_speed"
                                    "  # noqa\n")
    targets = _targets_file(tmp_path, server, device_python)
    common = ["-p", "no:cacheprovider", "--models", "digits_cnn", "--backends", "onnxruntime", "--precisions", "fp32",
              "--target", "box", "--target", "local", "--targets-file", str(targets), "--min-time", "0.2"]
    listed = pytester.runpytest_subprocess("--co", "-q", *common)
    ids = sorted(line.split("[", 1)[1].rstrip("]") for line in listed.outlines if "::test_precision[" in line)
    assert ids == ["digits_cnn-onnx-onnxruntime-fp32", "digits_cnn-onnx-onnxruntime-fp32@box"]
    out = tmp_path / "session.json"
    stored = tmp_path / "benchmark.json"
    ran = pytester.runpytest_subprocess("-k", "box", "--deploybench-json", str(out), "--benchmark-json", str(stored),
                                        *common)
    ran.assert_outcomes(passed=3, deselected=3)
    document = json.loads(out.read_text())
    (cell,) = document["cells"]
    assert cell["target"] == "box" and cell["status"] == "ok" and cell["peak_rss_mb"] > 0
    assert cell["machine_id"] == document["machine"]["machine_id"] and document["machine"]["target"] == "box"
    # pytest-benchmark's own file keeps the device's machine beside this one's, and reads back with it
    benchmark = json.loads(stored.read_text())
    assert benchmark["machine_info"]["deploybench_machines"] == {document["machine"]["machine_id"]: document["machine"]}
    results, machine, _ = load_results_file(stored)  # as report, merge, gate and history read a stored run
    assert machine["target"] == "box" and machine["machine_id"] == cell["machine_id"]
    assert [(r.cell.id, r.machine_id) for r in results] == [("digits_cnn-onnx-onnxruntime-fp32@box", cell["machine_id"])]


def test_an_unknown_or_repeated_target_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pyproject.toml defines a target here
    assert main(["run", "--models", "digits_cnn", "--target", "pi", "--no-progress"]) == 2
    assert "unknown target pi (none is defined)" in capsys.readouterr().err
    assert main(["run", "--models", "digits_cnn", "--target", "local", "--target", "local"]) == 2
    assert "--target names a machine twice: local, local" in capsys.readouterr().err


def test_a_target_cell_is_never_re_measured_here_by_the_gate():
    """An interleaved re-run is on the gating machine: for a cell of a device that would judge the wrong one."""
    from deploybench.harness.gate.interleave import interleave_results
    from deploybench.spec import DeployBenchError, Result

    cell = _cell()
    with pytest.raises(DeployBenchError, match="measured on box, and an interleaved re-run happens on the machine"):
        interleave_results(Result(cell=cell), Result(cell=cell))


def test_in_process_models_cannot_go_to_a_target(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--models", "digits_cnn", "--in-process", "--target", "ssh://pi@192.0.2.1", "--no-progress"]) == 2
    assert "model digits_cnn runs in this process (in-process (--in-process" in capsys.readouterr().err


@pytest.mark.slow
def test_the_issue_matrix_on_a_device_without_pytorch(server, client_home, tmp_path, device_python):
    """Issue 14's run: digits_cnn and resnet18 on ONNX Runtime and OpenVINO, fp32 and int8, on a device
    whose Python has no PyTorch; every cell ok there, judged as here."""
    targets = _targets_file(tmp_path, server, device_python)
    args = ["--models", "digits_cnn,resnet18", "--backends", "onnxruntime,openvino", "--precisions", "fp32,int8",
            *QUICK]
    assert main(["run", *args, "--target", "box", "--targets-file", str(targets), "-o", str(tmp_path / "r.json")]) == 0
    assert main(["run", *args, "-o", str(tmp_path / "l.json")]) == 0
    remote = json.loads((tmp_path / "r.json").read_text())
    there = {c["model"] + c["format"] + c["backend"] + c["precision"]: c for c in remote["cells"]}
    here = {c["model"] + c["format"] + c["backend"] + c["precision"]: c
            for c in json.loads((tmp_path / "l.json").read_text())["cells"] if c["format"] != "torch"}
    assert set(there) >= set(here) and len(here) == 12
    for key, cell in here.items():
        assert there[key]["status"] == "ok", there[key]["reason"]
        assert there[key]["accuracy"]["max_abs_error"] == pytest.approx(cell["accuracy"]["max_abs_error"], rel=1e-5)
        assert there[key]["accuracy"]["cosine"] == pytest.approx(cell["accuracy"]["cosine"], abs=1e-9)
    assert remote["machine"]["libraries"]["torch"] is None
