"""Accuracy-aware int8 (``int8ac``, issue 15): a precision of its own, judged by int8's tolerance, built by
NNCF's accuracy control (OpenVINO) and a sensitivity pass (ONNX Runtime) that keep the layers breaking the
tolerance in floating point, on validation samples apart from calibration's and the judge's."""

from __future__ import annotations

import numpy as np
import pytest

from deploybench.converters.accuracy_control import (VALIDATION_SEED, AccuracyTarget, int8_criteria,
                                                     validation_samples)
from deploybench.harness.measure.timing import TimingRules
from deploybench.harness.pipeline.matrix import run_one_cell
from deploybench.harness.pipeline.settings import MemoryRules, RunSettings
from deploybench.spec import PRECISIONS, Accuracy, Cell, DeployBenchError, Result

pytest_plugins = ["pytester"]

QUICK = RunSettings(threads=1, timing=TimingRules(warmup_count=1, warmup_s=0.0, min_samples=3, min_time_s=0.0),
                    memory=MemoryRules(enabled=False))
STRICT_COSINE = 0.999


def make_outlier_cnn():
    """Two convolutions where one channel of the first is 300x the others and the second reads it 300x
    weaker: per-tensor activation quantization of that input drowns the seven small channels, so int8
    misses a strict cosine while keeping the second convolution in fp32 restores it."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        net[0].weight[0] *= 300.0
        net[0].bias[0] = 0.0
        net[2].weight[:, 0] /= 300.0
    return net.eval()


@pytest.fixture(scope="module")
def outlier_spec():
    from deploybench.models import model_from_module

    spec = model_from_module(make_outlier_cnn(), np.zeros((1, 3, 16, 16), np.float32), name="outlier_cnn",
                             output_names=["logits"])
    spec.tolerances = {"int8": {"cosine": STRICT_COSINE}}  # int8ac inherits it: it is judged as int8
    return spec


def _int8_nodes(artifact_path: str, fmt: str) -> int:
    """How many ops of the artifact still run in int8 (QDQ nodes, or OpenVINO FakeQuantize ops)."""
    if fmt == "onnx":
        from deploybench.converters.onnx_int8 import quantized_nodes

        return len(quantized_nodes(artifact_path))
    import openvino as ov

    return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(artifact_path).get_ordered_ops())


@pytest.mark.parametrize(("fmt", "backend"), [("onnx", "onnxruntime"),
                                              pytest.param("openvino", "openvino", marks=pytest.mark.openvino)])
def test_int8ac_keeps_a_layer_in_fp32_and_meets_the_tolerance_plain_int8_misses(outlier_spec, fmt, backend):
    from deploybench.harness.report.table import terminal_table

    plain = run_one_cell(outlier_spec, Cell("outlier_cnn", fmt, backend, "int8"), QUICK)
    aware = run_one_cell(outlier_spec, Cell("outlier_cnn", fmt, backend, "int8ac"), QUICK)
    assert plain.ok and aware.ok, (plain.reason, aware.reason)
    assert not plain.passes_accuracy, plain.tolerance.message
    assert plain.accuracy.cosine < STRICT_COSINE
    assert aware.passes_accuracy, aware.tolerance.message
    assert aware.tolerance.message.startswith("int8ac: cosine")
    kept = aware.extra["artifact"]["ops_in_fp32"]
    assert kept, "the strict tolerance cannot hold with every layer in int8"
    assert _int8_nodes(aware.artifact_path, fmt) > 0, "int8ac kept everything in fp32: that is not int8"
    assert f"{len(kept)} op(s) kept in fp32" in aware.precision_ran
    table = terminal_table([plain, aware])
    assert f"int8ac kept {len(kept)} op(s) in fp32" in table and "accuracy fails: int8: cosine" in table


def test_int8ac_holds_a_tolerance_the_run_overrides(outlier_spec):
    """--tolerance int8:cosine=0.999 judges the int8ac cell too, so its artifact must hold it, not the default."""
    import dataclasses

    lenient_model = dataclasses.replace(outlier_spec, tolerances={})
    strict_run = dataclasses.replace(QUICK, tolerances={"int8": {"cosine": STRICT_COSINE}})
    aware = run_one_cell(lenient_model, Cell("outlier_cnn", "onnx", "onnxruntime", "int8ac"), strict_run)
    assert aware.ok and aware.passes_accuracy, (aware.reason, aware.tolerance)
    assert aware.accuracy.cosine >= STRICT_COSINE and aware.extra["artifact"]["ops_in_fp32"]
    default = run_one_cell(lenient_model, Cell("outlier_cnn", "onnx", "onnxruntime", "int8ac"), QUICK)
    assert default.artifact_path != aware.artifact_path  # other criteria, another cache entry


@pytest.mark.parametrize("backend", ["torch", "tflite", "coreml", "tensorrt"])
def test_backends_without_accuracy_aware_int8_skip_it_with_the_reason(small_cnn_spec, backend):
    from deploybench.engines import backend_availability, engine_class
    from deploybench.harness.pipeline.plan import plan_cells

    assert "int8ac" not in engine_class(backend).precisions
    cells = plan_cells([small_cnn_spec], [backend], ["int8ac"], include_unsupported=True)
    assert cells and all(c.precision == "int8ac" for c in cells)
    result = run_one_cell(small_cnn_spec, cells[0], QUICK)
    assert result.status == "skipped" and result.stage == "availability"
    available, why = backend_availability(backend)
    expected = f"backend {backend} has no int8ac mode; it runs:" if available else f"{backend} cannot run here: {why}"
    assert expected in result.reason and "\n" not in result.reason


def test_onnxruntime_and_openvino_offer_int8ac():
    from deploybench.engines import engine_class

    assert {"int8", "int8ac"} <= set(engine_class("onnxruntime").precisions)
    assert {"int8", "int8ac"} <= set(engine_class("openvino").precisions)


def test_int8ac_is_one_dash_free_part_of_a_cell_id_and_a_known_precision():
    from deploybench.harness.pipeline.plan import check_precisions

    assert "int8ac" in PRECISIONS and not any("-" in p for p in PRECISIONS)
    cell = Cell("resnet18", "onnx", "openvino", "int8ac", dims=(("batch", 8),))
    assert cell.id == "resnet18-onnx-openvino-int8ac-b8"
    assert cell.id.split("-")[3] == "int8ac"
    assert Cell.from_dict(cell.to_dict()) == cell
    check_precisions(["fp32", "int8", "int8ac"])
    with pytest.raises(DeployBenchError, match="unknown precision 'int8-ac'"):
        check_precisions(["int8-ac"])


def test_int8ac_is_judged_by_int8s_tolerance_and_overrides():
    from deploybench.harness.measure.tolerance import TOLERANCES, check_tolerance

    assert TOLERANCES["int8ac"] == TOLERANCES["int8"]
    for accuracy in (Accuracy(cosine=0.979, top1_agreement=0.95), Accuracy(cosine=0.99, top1_agreement=0.95)):
        assert check_tolerance(accuracy, "int8ac")[0] == check_tolerance(accuracy, "int8")[0]
    settings = RunSettings(tolerances={"int8": {"cosine": 0.9}, "int8ac": {"top1_agreement": 0.5}})
    model_overrides = {"int8": {"top1_agreement": None, "atol": 1.0}}
    assert settings.tolerance_overrides("int8ac", model_overrides) == {"top1_agreement": 0.5, "atol": 1.0,
                                                                       "cosine": 0.9}
    assert settings.tolerance_overrides("int8", model_overrides) == {"top1_agreement": None, "atol": 1.0,
                                                                     "cosine": 0.9}


def test_the_criteria_an_int8ac_artifact_holds_follow_the_model_and_key_its_cache_entry(small_cnn_spec):
    import dataclasses

    from deploybench.converters import accuracy_defaults
    from deploybench.converters.cache import conversion_key
    from deploybench.resolve import get_model

    assert int8_criteria(small_cnn_spec) == {"cosine": 0.98, "top1_agreement": 0.90}
    assert int8_criteria(get_model("resnet18")) == {"cosine": 0.98}  # its untrained head: top-1 unjudged
    stricter = dataclasses.replace(small_cnn_spec, tolerances={"int8": {"cosine": 0.995}})
    assert int8_criteria(stricter)["cosine"] == 0.995
    nothing = dataclasses.replace(small_cnn_spec, tolerances={"int8": {"cosine": None, "top1_agreement": None}})
    with pytest.raises(DeployBenchError, match="int8ac has nothing to keep"):
        int8_criteria(nothing)
    assert accuracy_defaults(small_cnn_spec, "int8") == {}
    keys = {conversion_key(spec, "onnx", precision, accuracy_defaults(spec, precision))
            for spec in (small_cnn_spec, stricter) for precision in ("int8", "int8ac")}
    assert len(keys) == 4 - 1  # int8 ignores the criteria; int8ac's key changes with them


def test_the_margin_is_a_share_of_each_criterions_headroom():
    target = AccuracyTarget({"cosine": 0.98, "top1_agreement": 0.9}, margin=0.25)
    assert target.required("cosine") == pytest.approx(0.985)
    assert target.required("top1_agreement") == pytest.approx(0.925)
    reference = [[np.array([[1.0, 0.0, 0.0]])], [np.array([[0.0, 1.0, 0.0]])]]
    flipped = [[np.array([[1.0, 0.0, 0.0]])], [np.array([[1.0, 0.9, 0.0]])]]
    figures = target.figures(flipped, reference)
    assert figures["top1_agreement"] == 0.5
    assert target.margin_of(figures) == pytest.approx(0.5 - 0.925)
    assert target.margin_of(target.figures(reference, reference)) == pytest.approx(1.0 - 0.985)


def _same(sample: dict, other: dict) -> bool:
    return all(np.array_equal(sample[name], other[name]) for name in sample)


def test_validation_samples_are_neither_calibrated_on_nor_judged_on(small_cnn_spec):
    """A quantizer tuned on the samples the harness judges it by would pass by construction."""
    from deploybench.converters.calibration import DEFAULT_SAMPLES, calibration_inputs
    from deploybench.harness.measure.accuracy import AGREEMENT_SEED, agreement_batches, held_out_samples
    from deploybench.resolve import get_model

    real = get_model("mobilenet_v3")  # its real photo crops: calibration, judgement and validation draw from them
    validation, source = validation_samples(real, DEFAULT_SAMPLES, 8)
    assert source.startswith("real") and len(validation) == 8
    others = calibration_inputs(real, DEFAULT_SAMPLES).samples + held_out_samples(real)
    assert len(others) == 2 * DEFAULT_SAMPLES
    assert not any(_same(v, o) for v in validation for o in others)

    generated, source = validation_samples(small_cnn_spec, DEFAULT_SAMPLES, 8)  # no real data: seeded inputs
    assert source.startswith("random") and VALIDATION_SEED > AGREEMENT_SEED + DEFAULT_SAMPLES
    seeded = [small_cnn_spec.make_inputs(seed=i) for i in range(DEFAULT_SAMPLES)] + agreement_batches(small_cnn_spec)
    assert not any(_same(v, o) for v in generated for o in seeded)


def test_a_results_file_with_int8ac_cells_reads_back_with_its_kept_layers_noted():
    from deploybench.harness.report.notes import cell_notes

    kept = ["node_Conv_506", "node_mul_28"]
    result = Result(cell=Cell("mobilenet_v3", "onnx", "onnxruntime", "int8ac"),
                    extra={"artifact": {"ops_in_fp32": kept, "cached": False}})
    again = Result.from_dict(result.to_dict())
    assert again.cell.precision == "int8ac"
    assert [n.text for n in cell_notes(again)] == [
        "int8ac kept 2 op(s) in fp32 to hold the int8 tolerance: node_Conv_506, node_mul_28"]
    old_int8 = Result.from_dict({"model": "m", "format": "onnx", "backend": "onnxruntime", "precision": "int8"})
    assert cell_notes(old_int8) == []


CONFTEST = '''
import numpy as np
import pytest


@pytest.fixture
def deploybench_models():
    import torch
    from torch import nn
    from deploybench.models import model_from_module

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    return [model_from_module(net, np.zeros((1, 3, 8, 8), np.float32), name="small", output_names=["logits"])]
'''


def test_pytest_cells_take_int8ac_from_the_command_line_and_k_selects_it(pytester, monkeypatch):
    from _pytest import pytester as pytester_module

    class KeepLibraries(pytester_module.SysModulesSnapshot):  # torch must not be imported twice in one process
        def __init__(self, preserve=None):
            super().__init__(preserve=lambda name: not name.startswith(("conftest", "test_")))

    monkeypatch.setattr(pytester_module, "SysModulesSnapshot", KeepLibraries)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cells="def test_cell(cell, precision):\n    assert cell.precision == precision\n")
    args = ["--co", "-q", "--backends", "torch,onnxruntime,openvino", "--precisions", "int8,int8ac"]
    collected = [line.split("[", 1)[1].rstrip("]") for line in pytester.runpytest(*args).outlines
                 if "::test_cell[" in line]
    assert set(collected) == {f"small-{fmt}-{backend}-{precision}" for fmt, backend in
                              (("onnx", "onnxruntime"), ("openvino", "openvino"), ("onnx", "openvino"))
                              for precision in ("int8", "int8ac")}
    selected = [line.split("[", 1)[1].rstrip("]") for line in pytester.runpytest(*args, "-k", "int8ac").outlines
                if "::test_cell[" in line]
    assert sorted(selected) == sorted(c for c in collected if c.endswith("-int8ac"))


@pytest.mark.slow
@pytest.mark.openvino
def test_mobilenet_v3_openvino_int8ac_meets_the_int8_tolerance_plain_nncf_int8_misses():
    """Issue 15's done criterion, as measured: plain NNCF int8 of MobileNetV3 misses cosine 0.98 (0.924 here on
    2026-12-04); the accuracy-controlled IR meets it with some ops in fp32. About 2 minutes cold."""
    from deploybench.resolve import get_model

    spec = get_model("mobilenet_v3")
    plain = run_one_cell(spec, Cell("mobilenet_v3", "openvino", "openvino", "int8"), QUICK)
    aware = run_one_cell(spec, Cell("mobilenet_v3", "openvino", "openvino", "int8ac"), QUICK)
    assert plain.ok and aware.ok, (plain.reason, aware.reason)
    assert aware.passes_accuracy, aware.tolerance.message
    assert aware.accuracy.cosine >= 0.98
    if plain.passes_accuracy:
        pytest.skip(f"plain int8 passes here ({plain.tolerance.message}): nothing for int8ac to recover")
    assert aware.extra["artifact"]["ops_in_fp32"]
