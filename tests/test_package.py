"""The package's own promises: a light import, one error type, registries a third party can extend."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import deploybench
from deploybench.spec import DeployBenchError

PUBLIC_NAMES = [
    "prepare_model_for_deployment", "deploy_model", "create_deployer", "InferenceEngine",
    "optimize_model_for_deployment", "prune_model", "fuse_model_for_deployment", "benchmark_inference",
    "benchmark_memory_usage", "benchmark_precision", "run_deployment_benchmark", "compare_backends",
]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_import_is_light():
    done = run_python("""
        import sys, deploybench, deploybench.spec, deploybench.engines, deploybench.converters, deploybench.models
        heavy = [m for m in ("torch", "onnxruntime", "openvino", "tensorflow", "coremltools", "ai_edge_litert")
                 if m in sys.modules]
        print(",".join(heavy))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_every_lazy_name_of_the_package_resolves():
    """Each name ``deploybench`` offers lazily is found where its table says (get_model once pointed at the
    wrong module and raised AttributeError)."""
    for name in deploybench._LAZY:
        assert getattr(deploybench, name) is not None, name


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_api_names_import_from_the_package(name):
    value = getattr(deploybench, name)
    assert callable(value)
    assert value.__doc__ and len(value.__doc__.strip()) > 20, f"{name} needs a docstring that says what it returns"


def test_every_module_imports_without_optional_backends():
    """A missing OpenVINO / LiteRT / CoreML / TensorRT never breaks the import of the rest."""
    done = run_python("""
        import importlib, pkgutil, sys

        class Block:
            blocked = ("openvino", "nncf", "ai_edge_litert", "litert_torch", "coremltools", "tensorrt",
                       "tensorflow", "onnx2tf", "mlflow")
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.blocked:
                    raise ImportError(f"blocked for this test: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import deploybench
        failed = []
        for info in pkgutil.walk_packages(deploybench.__path__, "deploybench."):
            if info.name.endswith("_memory_child"):
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                failed.append(f"{info.name}: {exc}")
        from deploybench.engines import backend_status
        status = {row["backend"]: row for row in backend_status()}
        print("FAILED", failed)
        print("OPENVINO", status["openvino"]["available"], status["openvino"]["reason"])
        print("ORT", status["onnxruntime"]["available"])
    """)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert lines["FAILED"] == "[]"
    assert lines["OPENVINO"].startswith("False") and "openvino" in lines["OPENVINO"]
    assert lines["ORT"] == "True"


def test_unknown_names_give_one_line_errors():
    from deploybench.engines import engine_class
    from deploybench.resolve import get_model

    with pytest.raises(DeployBenchError, match="unknown backend 'tensorflw'.*onnxruntime"):
        engine_class("tensorflw")
    with pytest.raises(DeployBenchError, match="unknown model 'resnet181'"):
        get_model("resnet181")


def test_a_third_party_backend_is_one_registration(small_cnn_spec, tmp_path):
    """A new backend is one subclass and one line; it then runs through create_deployer like a built-in."""
    import numpy as np

    from deploybench.converters import deploy_model
    from deploybench.engines import ENGINES, create_deployer
    from deploybench.engines.base import InferenceEngine

    class OnnxReferenceEngine(InferenceEngine):
        """ONNX's own reference evaluator, a real (slow) runtime shipped with the onnx package."""
        backend, formats, requires = "onnx-reference", ("onnx",), "onnx"

        def _load_impl(self):
            from onnx.reference import ReferenceEvaluator

            self._session = ReferenceEvaluator(str(self.artifact.path))

        def _infer_impl(self, feed):
            return self._session.run(None, feed)

    ENGINES.register("onnx-reference", OnnxReferenceEngine)
    try:
        artifact = deploy_model(small_cnn_spec, "onnx")
        inputs = small_cnn_spec.make_inputs(seed=3)
        with create_deployer(artifact, backend="onnx-reference") as engine:
            outputs = engine.infer(inputs)
        import torch

        expected = small_cnn_spec.build()(torch.from_numpy(inputs["input"])).detach().numpy()
        assert list(outputs) == ["logits"]
        np.testing.assert_allclose(outputs["logits"], expected, atol=1e-4)
    finally:
        ENGINES._targets.pop("onnx-reference")


def test_the_base_install_runs_a_device_and_every_test_environment_adds_the_host():
    """pip extras only add, so torch must stay out of the base for ``deploybench[runtime]`` to be torch-free;
    everything that converts (make venv, every tox group) must then ask for the host extra."""
    import configparser
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {Requirement(r).name for r in project["dependencies"]} == {"numpy", "psutil"}
    assert extras["runtime"] == []
    assert {"torch", "onnx", "onnxruntime", "pytest"} <= {Requirement(r).name for r in extras["host"]}
    assert "host" in Requirement(extras["all"][0]).extras
    tox = configparser.ConfigParser()
    tox.read(root / "tox.ini")
    for section in (s for s in tox.sections() if s.startswith("testenv:")):
        chosen = {e.strip() for e in tox[section]["extras"].split(",")}
        assert chosen & {"host", "all"}, f"tox {section} runs the tests without the host extra"
    assert "-e '.[all]'" in (root / "Makefile").read_text()
