"""TensorRT format: ONNX artifact -> serialized engine ``model.plan`` (TensorRT 10 Python API).

Starts from the ONNX artifact (``deploy_model(spec, "onnx")``), parses it with ``trt.OnnxParser``
into a network made with ``create_network(0)`` (explicit batch is the only mode in TensorRT 10),
and builds with ``build_serialized_network``. Each dynamic axis gets one optimization profile
(min 1 / opt the spec's default size / max ``max_batch``).

- fp32: no precision flag (TF32 disabled so fp32 means fp32).
- fp16: ``BuilderFlag.FP16``.
- int8, ``int8_mode="qdq"`` (default, the modern path): the ONNX Runtime int8 QDQ artifact is
  parsed; TensorRT runs its Q/DQ nodes as explicit quantization (``BuilderFlag.INT8`` + FP16 for
  the layers left in float). TensorRT accepts only symmetric Q/DQ (zero point 0), so the ONNX int8
  artifact is requested with ``activation_type="QInt8"``.
- int8, ``int8_mode="calibrator"``: implicit quantization of the fp32 graph with an
  ``IInt8EntropyCalibrator2`` fed the shared calibration samples. TensorRT 10 deprecates implicit
  int8 calibration in favour of explicit Q/DQ; it is kept for older deployment targets.

A plan is specific to the GPU model and TensorRT version that built it (recorded in metadata).
Nothing here imports tensorrt at module level, so this module imports where TensorRT is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..spec import Artifact, DeployBenchError, ModelSpec, PrecisionNotSupported, TensorSpec

DEFAULT_WORKSPACE_BYTES = 1 << 30
DEFAULT_MAX_BATCH = 32
INT8_MODES = ("qdq", "calibrator")


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise DeployBenchError("the tensorrt format needs TensorRT 10 and an NVIDIA GPU: pip install tensorrt "
                               "cuda-python (on a machine with CUDA)") from exc
    return trt


def convert(spec: ModelSpec, out_dir: Path, precision: str = "fp32", **options: Any) -> Artifact:
    """Build ``model.plan`` in ``out_dir`` from the model's ONNX artifact and return its Artifact.

    Options: ``workspace_bytes`` (default 1 GiB), ``max_batch`` (default 32; upper bound of every
    dynamic axis), ``int8_mode`` ("qdq" or "calibrator"), ``calibration_samples`` (default 64).
    """
    _import_tensorrt()  # fails first, with how to install it
    if precision not in ("fp32", "fp16", "int8"):
        raise PrecisionNotSupported(f"tensorrt has no {precision!r} build; use fp32, fp16 or int8")
    int8_mode = str(options.get("int8_mode", "qdq"))
    if int8_mode not in INT8_MODES:
        raise DeployBenchError(f"unknown int8_mode {int8_mode!r}; choose from: {', '.join(INT8_MODES)}")
    from . import deploy_model

    cache_root = Path(out_dir).parent  # the ONNX artifact lives next to this entry in the same cache
    if precision == "int8" and int8_mode == "qdq":
        onnx_artifact = deploy_model(spec, "onnx", output_dir=cache_root, precision="int8", activation_type="QInt8")
    else:
        onnx_artifact = deploy_model(spec, "onnx", output_dir=cache_root, precision="fp32")
    return build_plan(onnx_artifact, spec, Path(out_dir), precision, **options)


def build_plan(onnx_artifact: Artifact, spec: ModelSpec, out_dir: Path, precision: str = "fp32",
               **options: Any) -> Artifact:
    """Build ``model.plan`` in ``out_dir`` from ``onnx_artifact`` (fp32, or the symmetric int8 QDQ file for
    int8 ``qdq``): where the plan is made on the device itself, the ONNX file is what travels there."""
    trt = _import_tensorrt()
    int8_mode = str(options.get("int8_mode", "qdq"))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_artifact.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeployBenchError(f"TensorRT cannot parse {onnx_artifact.path}: {errors}".splitlines()[0][:400])

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.get("workspace_bytes",
                                                                                DEFAULT_WORKSPACE_BYTES)))
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = _optimization_profile(builder, network, spec, int(options.get("max_batch", DEFAULT_MAX_BATCH)))
    if profile is not None:
        config.add_optimization_profile(profile)
    metadata: dict[str, Any] = {"source_onnx": str(onnx_artifact.path), "tensorrt": trt.__version__,
                                "device": _device_name()}
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers TensorRT leaves un-quantized may run in fp16
        if int8_mode == "calibrator":
            calibrator = _entropy_calibrator(trt, spec, int(options.get("calibration_samples", 64)),
                                             Path(out_dir) / "calibration.cache")
            config.int8_calibrator = calibrator
            if profile is not None:
                config.set_calibration_profile(profile)
            metadata["quantization"] = ("implicit int8, IInt8EntropyCalibrator2 (deprecated in TensorRT 10: "
                                        "prefer int8_mode='qdq')")
            metadata["calibration"] = calibrator.source
        else:
            metadata["quantization"] = "explicit int8 from the ONNX Runtime QDQ artifact (symmetric QInt8)"
            metadata.update({k: v for k, v in onnx_artifact.metadata.items() if k.startswith("calibration")})

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeployBenchError(f"TensorRT could not build an engine for {spec.name} ({precision}); "
                               "rerun with a larger workspace_bytes or check the TensorRT log")
    path = Path(out_dir) / "model.plan"
    path.write_bytes(bytes(serialized))
    artifact = read_artifact(path)
    inputs = tuple(TensorSpec(t.name, t.shape, t.dtype, t.value_range) for t in spec.inputs)
    outputs = tuple(TensorSpec(name, getattr(o, "shape", ()), "float32")
                    for name, o in zip(spec.output_names, onnx_artifact.outputs or artifact.outputs))
    return Artifact(format="tensorrt", path=path, precision=precision, inputs=inputs or artifact.inputs,
                    outputs=outputs or artifact.outputs, metadata={**artifact.metadata, **metadata})


def _optimization_profile(builder, network, spec: ModelSpec, max_batch: int):
    """One profile covering every dynamic axis: min 1, opt the spec's default, max ``max_batch``."""
    dynamic = False
    profile = builder.create_optimization_profile()
    specs = {t.name: t for t in spec.inputs}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        dynamic = True
        source = specs.get(tensor.name)
        opt = [d if d >= 0 else int(spec.dims.get(source.shape[axis], 1)) if source else 1
               for axis, d in enumerate(shape)]
        low = [d if d >= 0 else 1 for d in shape]
        high = [d if d >= 0 else max(max_batch, opt[axis]) for axis, d in enumerate(shape)]
        profile.set_shape(tensor.name, low, opt, high)
    return profile if dynamic else None


def _entropy_calibrator(trt, spec: ModelSpec, samples: int, cache_file: Path):
    """An ``IInt8EntropyCalibrator2`` that feeds the shared calibration samples, one per batch."""
    from .calibration import calibration_inputs

    calibration = calibration_inputs(spec, samples, 0)
    cudart = _cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.source = calibration.source
            self._samples = iter(calibration.samples)
            self._device: dict[str, int] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, tensor_names):
            sample = next(self._samples, None)
            if sample is None:
                return None
            pointers = []
            for name in tensor_names:
                array = np.ascontiguousarray(sample[name], dtype=np.float32)
                if name not in self._device:
                    self._device[name] = _check_cuda(cudart.cudaMalloc(array.nbytes))
                _check_cuda(cudart.cudaMemcpy(self._device[name], array.ctypes.data, array.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
                pointers.append(int(self._device[name]))
            return pointers

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.exists() else None

        def write_calibration_cache(self, cache):
            cache_file.write_bytes(bytes(cache))

        def __del__(self):
            for pointer in self._device.values():
                cudart.cudaFree(pointer)

    return EntropyCalibrator()


# ---- CUDA helpers shared with the engine ------------------------------------------------------
def _cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise DeployBenchError("TensorRT in deploybench needs cuda-python for memory and streams: "
                                   "pip install cuda-python") from exc
    return cudart


def _check_cuda(result):
    """Unpack cuda-python's (error, value...) tuples, raising on an error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise DeployBenchError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def cuda_device_count() -> int:
    """The number of CUDA devices cuda-python sees (0 when it or the driver is missing)."""
    try:
        cudart = _cudart()
        error, count = cudart.cudaGetDeviceCount()
        return int(count) if int(error) == 0 else 0
    except Exception:
        return 0


def _device_name() -> str:
    try:
        cudart = _cudart()
        properties = _check_cuda(cudart.cudaGetDeviceProperties(0))
        name = properties.name
        return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    except Exception:
        return "unknown"


# ---- reading a plan -----------------------------------------------------------------------------
def read_artifact(path: Path) -> Artifact:
    """An Artifact for a serialized engine: tensor names, shapes (-1 = dynamic) and dtypes from the plan.

    Needs TensorRT (a plan is opaque without it), the same version that built it, and a GPU."""
    path = Path(path)
    trt = _import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise DeployBenchError(f"{path} is not a TensorRT {trt.__version__} plan for this GPU; rebuild it here")
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple("batch" if (d < 0 and axis == 0) else f"dim{axis}" if d < 0 else int(d)
                      for axis, d in enumerate(engine.get_tensor_shape(name)))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        spec = TensorSpec(name, shape, dtype if dtype in ("float32", "int32", "int64", "int8", "uint8", "bool")
                          else "float32")
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return Artifact(format="tensorrt", path=path, precision="fp32", inputs=tuple(inputs), outputs=tuple(outputs),
                    metadata={"tensorrt": trt.__version__})


__all__ = ["convert", "cuda_device_count", "read_artifact"]
