"""Timing rules on a real ONNX Runtime engine, and the memory child: figures, crash, hang, exception."""

from __future__ import annotations

import statistics
import textwrap
import time

import numpy as np
import pytest

from deploybench.converters import deploy_model
from deploybench.engines import create_deployer
from deploybench.harness.measure.memory import CHILD_PLUGIN_ENV, benchmark_memory_usage
from deploybench.harness.measure.timing import STOPPED_BY_MAX_SAMPLES, STOPPED_BY_MAX_TIME, STOPPED_BY_RULES, \
    benchmark_inference
from deploybench.spec import Artifact, DeployBenchError, TensorSpec


@pytest.fixture(scope="module")
def onnx_artifact(small_cnn_spec):
    return deploy_model(small_cnn_spec, "onnx")


@pytest.fixture
def engine(onnx_artifact):
    with create_deployer(onnx_artifact, backend="onnxruntime", threads=1) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def inputs(small_cnn_spec):
    return small_cnn_spec.make_inputs(seed=0)


def test_min_samples_and_min_time_are_both_honoured(engine, inputs):
    by_count = benchmark_inference(engine, inputs, warmup_count=3, warmup_s=0, min_samples=50, min_time_s=0,
                                   median_ci=None)
    assert by_count.stats.n == 50 and len(by_count.samples_ms) == 50
    assert by_count.stopped_by == STOPPED_BY_RULES and not by_count.capped

    by_time = benchmark_inference(engine, inputs, warmup_count=0, warmup_s=0, min_samples=1, min_time_s=0.25)
    assert by_time.sampling_s >= 0.25
    assert by_time.stats.n > 1
    assert by_time.throughput_ips == pytest.approx(by_time.stats.n / by_time.sampling_s)


def test_warmup_runs_until_count_and_time(engine, inputs):
    timing = benchmark_inference(engine, inputs, warmup_count=7, warmup_s=0.1, min_samples=5, min_time_s=0)
    assert timing.warmup_count >= 7
    assert timing.warmup_s >= 0.1


def test_caps_stop_sampling_and_are_recorded(engine, inputs):
    by_samples = benchmark_inference(engine, inputs, warmup_count=0, warmup_s=0, min_samples=20, min_time_s=30,
                                     max_samples=20, max_time_s=60)
    assert by_samples.stats.n == 20 and by_samples.stopped_by == STOPPED_BY_MAX_SAMPLES and by_samples.capped

    by_time = benchmark_inference(engine, inputs, warmup_count=0, warmup_s=0, min_samples=10_000_000,
                                  min_time_s=0, max_samples=10_000_000, max_time_s=0.2)
    assert by_time.stopped_by == STOPPED_BY_MAX_TIME
    assert 0.2 <= by_time.sampling_s < 5


def test_first_inference_is_timed_apart(onnx_artifact, inputs):
    with create_deployer(onnx_artifact, backend="onnxruntime", threads=1) as fresh:
        timing = benchmark_inference(fresh, inputs, warmup_count=2, warmup_s=0, min_samples=10, min_time_s=0,
                                     median_ci=None)
        assert timing.first_inference_ms is not None and timing.first_inference_ms > 0
        assert timing.load_ms == fresh.load_ms and timing.load_ms > 0
        assert timing.stats.n == 10  # the first call is not one of the samples
        given = benchmark_inference(fresh, inputs, warmup_count=0, warmup_s=0, min_samples=5, min_time_s=0,
                                    first_inference_ms=123.0)
        assert given.first_inference_ms == 123.0


def test_batch_counts_in_throughput(onnx_artifact, small_cnn_spec):
    batch8 = small_cnn_spec.make_inputs(seed=0, dims={"batch": 8})
    with create_deployer(onnx_artifact, backend="onnxruntime", threads=1) as loaded:
        timing = benchmark_inference(loaded, batch8, warmup_count=1, warmup_s=0, min_samples=20, min_time_s=0)
    assert timing.batch_size == 8
    assert timing.throughput_ips == pytest.approx(8 * timing.stats.n / timing.sampling_s)


def test_bad_rules_raise_one_line(engine, inputs):
    with pytest.raises(DeployBenchError, match="max_samples"):
        benchmark_inference(engine, inputs, min_samples=10, max_samples=5)


def test_harness_median_matches_plain_loop(engine, inputs):
    """The harness adds nothing measurable to a call: its median agrees with a bare perf_counter loop."""
    ratios, medians = [], []
    for _ in range(3):  # alternate, so a burst of load on the shared box hits both sides
        plain = []
        for _ in range(300):
            start = time.perf_counter()
            engine.infer(inputs)
            plain.append((time.perf_counter() - start) * 1e3)
        harness = benchmark_inference(engine, inputs, warmup_count=10, warmup_s=0, min_samples=300, min_time_s=0)
        ratios.append(harness.stats.median / statistics.median(plain))
        medians.append(f"{harness.stats.median * 1e3:.1f}/{statistics.median(plain) * 1e3:.1f} us")
    ratio = statistics.median(ratios)
    print(f"harness/plain median ratio: {ratio:.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"harness/plain medians: {', '.join(medians)})")
    assert 0.7 <= ratio <= 1.4


# ---- memory child ----------------------------------------------------------------------------------
def test_memory_child_reports_peak_over_baseline(onnx_artifact, inputs):
    memory = benchmark_memory_usage(onnx_artifact, "onnxruntime", "fp32", inputs, threads=1, runs=3, timeout_s=120)
    assert memory.status == "ok", memory.reason
    assert memory.baseline_rss_mb > 10
    assert memory.peak_rss_mb >= memory.load_rss_mb >= memory.baseline_rss_mb
    # the child ran the same model on the same inputs as this process
    with create_deployer(onnx_artifact, backend="onnxruntime", threads=1) as loaded:
        expected = float(loaded.infer(inputs)["logits"].astype(np.float64).sum())
    assert memory.outputs_checksum["logits"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


MISBEHAVING_ENGINES = textwrap.dedent('''
    import os, signal, time
    from deploybench.engines import ENGINES
    from deploybench.engines.base import InferenceEngine

    class _Base(InferenceEngine):
        formats = ("onnx",)
        requires = "os"
        def _load_impl(self):
            pass

    class CrashEngine(_Base):
        backend = "test_crash"
        def _infer_impl(self, feed):
            os.kill(os.getpid(), signal.SIGSEGV)

    class HangEngine(_Base):
        backend = "test_hang"
        def _infer_impl(self, feed):
            time.sleep(600)

    class RaiseEngine(_Base):
        backend = "test_raise"
        def _infer_impl(self, feed):
            raise ValueError("the kernel for Foo is missing\\nsecond line")

    for engine in (CrashEngine, HangEngine, RaiseEngine):
        ENGINES.register(engine.backend, engine)
''')


@pytest.fixture
def misbehaving(tmp_path, monkeypatch):
    plugin = tmp_path / "misbehaving_engines.py"
    plugin.write_text(MISBEHAVING_ENGINES)
    monkeypatch.setenv(CHILD_PLUGIN_ENV, str(plugin))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not used by these engines")
    return Artifact("onnx", model, inputs=(TensorSpec("x", (1, 4)),), outputs=(TensorSpec("y", (1, 4)),))


def test_a_crashing_child_is_failed_with_the_signal_and_the_parent_goes_on(misbehaving):
    x = np.ones((1, 4), np.float32)
    memory = benchmark_memory_usage(misbehaving, "test_crash", "fp32", {"x": x}, timeout_s=120)
    assert memory.status == "failed"
    assert memory.reason == "memory child killed by SIGSEGV"
    assert memory.peak_rss_mb is None


def test_a_hanging_child_is_killed_at_the_timeout(misbehaving):
    start = time.perf_counter()
    memory = benchmark_memory_usage(misbehaving, "test_hang", "fp32", {"x": np.ones((1, 4), np.float32)},
                                    timeout_s=2)
    assert memory.status == "timeout"
    assert "2 s limit" in memory.reason
    assert time.perf_counter() - start < 60


def test_an_exception_in_the_child_is_failed_with_its_one_line_message(misbehaving):
    memory = benchmark_memory_usage(misbehaving, "test_raise", "fp32", {"x": np.ones((1, 4), np.float32)},
                                    timeout_s=120)
    assert memory.status == "failed"
    assert memory.reason == "ValueError: the kernel for Foo is missing"
