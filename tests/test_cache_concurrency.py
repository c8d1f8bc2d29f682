"""The conversion cache under concurrent and killed writers, with real processes.

A fake converter writes its file in two halves with a pause between and logs each step to a file
shared by every process, so the tests can see how many conversions ran and when a writer is
half-way; the model is a small real nn.Module, so the cache key is the real one.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_small_cnn

from deploybench.converters.cache import ConversionCache
from deploybench.spec import Artifact, DeployBenchError

FIRST_HALF, SECOND_HALF = b"A" * 4096, b"B" * 4096
TESTS = Path(__file__).resolve().parent
CHILD = "import sys; sys.path.insert(0, sys.argv[1]); from test_cache_concurrency import child; child(*sys.argv[2:])"


def slow_convert(spec, out_dir, precision, *, log: Path, pause: float = 0.0) -> Artifact:
    _log(log, "start")
    target = Path(out_dir) / "model.bin"
    with open(target, "wb") as handle:
        handle.write(FIRST_HALF)
        handle.flush()
        _log(log, "half")
        time.sleep(pause)
        handle.write(SECOND_HALF)
    _log(log, "end")
    return Artifact(format="fake", path=target, precision=precision, files=(target,))


def _log(log: Path, event: str) -> None:
    with open(log, "a") as handle:
        handle.write(f"{event}\n")


def events(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def small_cnn_spec():
    from deploybench.models import model_from_module

    return model_from_module(make_small_cnn(), np.zeros((1, 3, 16, 16), np.float32), name="small_cnn",
                             output_names=["logits"], task="classification")


def child(root: str, log: str, pause: str, go: str = "") -> None:
    """In a child process: wait for ``go`` (when given), convert through the cache, print the result."""
    spec = small_cnn_spec()
    if go:
        Path(f"{go}.ready.{os.getpid()}").touch()
        while not Path(go).exists():
            time.sleep(0.005)
    artifact = ConversionCache(Path(root)).get_or_convert(
        spec, "fake", "fp32", {}, functools.partial(slow_convert, log=Path(log), pause=float(pause)))
    print(json.dumps({"path": str(artifact.path), "cached": artifact.cached,
                      "content_ok": artifact.path.read_bytes() == FIRST_HALF + SECOND_HALF}))


def start_child(root: Path, log: Path, pause: float, go: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(TESTS), str(root), str(log), str(pause), str(go or "")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, children: list[subprocess.Popen], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in children:
            if process.poll() is not None:
                pytest.fail(f"child exited early ({process.returncode}): {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("children did not get there in time")
        time.sleep(0.01)


def result_of(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_processes_at_once_convert_once_and_share_one_entry(tmp_path):
    root, log, go = tmp_path / "cache", tmp_path / "log", tmp_path / "go"
    children = [start_child(root, log, pause=1.0, go=go) for _ in range(2)]
    wait_for(lambda: len(list(tmp_path.glob("go.ready.*"))) == 2, children)
    go.touch()  # both ask for the entry within milliseconds, well inside the converter's pause
    results = [result_of(process) for process in children]

    assert events(log) == ["start", "half", "end"]  # the converter body ran exactly once
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["cached"] for r in results) == [False, True]  # the second waited, then read the entry
    assert all(r["content_ok"] for r in results)
    entry = Path(results[0]["path"]).parent
    assert [p.name for p in root.iterdir()] == [entry.name]  # no temporary directory, no lock file


def test_a_conversion_killed_midway_leaves_no_entry_and_blocks_nobody(tmp_path):
    root, log = tmp_path / "cache", tmp_path / "log"
    process = start_child(root, log, pause=120.0)
    wait_for(lambda: "half" in events(log), [process])
    spec = small_cnn_spec()
    cache = ConversionCache(root, lock_timeout=10.0)
    entry = cache.entry_dir(spec, "fake", "fp32", {})
    assert cache.load(entry) is None  # half-written: invisible to a reader

    process.kill()  # SIGKILL: no cleanup runs
    process.wait(timeout=30)
    process.stdout.close()
    process.stderr.close()
    [leftover] = root.glob(f".{entry.name}.*")
    assert (leftover / "model.bin").read_bytes() == FIRST_HALF
    assert entry.with_name(f"{entry.name}.lock").exists()  # the dead writer's lock file; the kernel dropped its lock
    assert not entry.exists() and cache.load(entry) is None

    started = time.monotonic()
    artifact = cache.get_or_convert(spec, "fake", "fp32", {}, functools.partial(slow_convert, log=log))
    assert time.monotonic() - started < 5.0  # not held up by the dead process's lock
    assert artifact.path.read_bytes() == FIRST_HALF + SECOND_HALF and not artifact.cached
    assert events(log) == ["start", "half", "start", "half", "end"]
    assert [p.name for p in root.iterdir()] == [entry.name]  # the leftover and the lock file are gone
    assert cache.get_or_convert(spec, "fake", "fp32", {}, functools.partial(slow_convert, log=log)).cached


@pytest.mark.parametrize("damage", ["garbled sidecar", "missing file", "sidecar naming a file outside"])
def test_a_damaged_entry_is_converted_again_and_nothing_else_is_touched(tmp_path, damage):
    spec = small_cnn_spec()
    cache, log = ConversionCache(tmp_path / "cache"), tmp_path / "log"
    convert = functools.partial(slow_convert, log=log)
    first = cache.get_or_convert(spec, "fake", "fp32", {}, convert)
    neighbour = cache.get_or_convert(spec, "fake", "fp16", {}, convert)
    untouched = {p: p.stat().st_mtime_ns for p in neighbour.path.parent.iterdir()}
    sidecar = first.path.parent / "artifact.json"
    if damage == "garbled sidecar":
        sidecar.write_text(sidecar.read_text()[:40])
    elif damage == "missing file":
        first.path.unlink()
    else:
        sidecar.write_text(sidecar.read_text().replace('"model.bin"', '"../outside.bin"'))
        (tmp_path / "cache" / "outside.bin").write_bytes(b"not this")

    again = cache.get_or_convert(spec, "fake", "fp32", {}, convert)
    assert again.path == first.path and not again.cached
    assert again.path.read_bytes() == FIRST_HALF + SECOND_HALF
    assert events(log).count("end") == 3
    assert {p: p.stat().st_mtime_ns for p in neighbour.path.parent.iterdir()} == untouched
    assert cache.get_or_convert(spec, "fake", "fp16", {}, convert).cached
    assert not list((tmp_path / "cache").glob(".*"))  # the damaged entry was replaced, not left aside


def test_a_lock_held_past_the_timeout_is_one_error_naming_the_lock_file(tmp_path):
    spec = small_cnn_spec()
    cache, log = ConversionCache(tmp_path, lock_timeout=0.3), tmp_path / "log"
    entry = cache.entry_dir(spec, "fake", "fp32", {})
    lock = entry.with_name(f"{entry.name}.lock")
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file: conflicts like another process would
        with pytest.raises(DeployBenchError) as excinfo:
            cache.get_or_convert(spec, "fake", "fp32", {}, functools.partial(slow_convert, log=log))
    message = str(excinfo.value)
    assert str(lock) in message and "\n" not in message
    assert events(log) == []
