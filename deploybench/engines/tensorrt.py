"""TensorRT backend: a serialized plan run with the TensorRT 10 tensor-address API on a CUDA stream.

``trt.Runtime(logger).deserialize_cuda_engine`` -> ``create_execution_context``; every input and
output is bound by name (``set_input_shape`` for dynamic axes, ``set_tensor_address``), and
``execute_async_v3`` runs on a stream. Device memory and streams come from cuda-python
(imported lazily), grown when a larger shape arrives. Needs TensorRT and an NVIDIA GPU.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..spec import DeployBenchError
from .base import InferenceEngine


class TensorRTEngine(InferenceEngine):
    backend: ClassVar[str] = "tensorrt"
    formats: ClassVar[tuple[str, ...]] = ("tensorrt",)
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    requires: ClassVar[str] = "tensorrt"

    @classmethod
    def _platform_problem(cls) -> str | None:
        from ..converters.tensorrt import cuda_device_count

        if cuda_device_count() == 0:
            return "TensorRT needs an NVIDIA GPU with CUDA and cuda-python; none is visible here"
        return None

    def _load_impl(self) -> None:
        import tensorrt as trt

        from ..converters.tensorrt import _check_cuda, _cudart

        self._cudart = cudart = _cudart()
        self._check = _check_cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.artifact.path.read_bytes())
        if self._engine is None:
            raise DeployBenchError(f"{self.artifact.path} is not a TensorRT {trt.__version__} plan for this GPU; "
                                   "rebuild it on this machine")
        self._context = self._engine.create_execution_context()
        self._stream = _check_cuda(cudart.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output_names = [n for n in names if n not in self._input_names]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.runtime_notes.update({"tensorrt": trt.__version__, "threads": "not applicable (GPU)"})

    def _device_buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                self._check(self._cudart.cudaFree(pointer))
            pointer = self._check(self._cudart.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (pointer, nbytes)
            self._context.set_tensor_address(name, int(pointer))
        return pointer

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, check = self._cudart, self._check
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = []
        for name in self._input_names:
            array = np.require(feed[name], dtype=self._dtypes[name], requirements="C")
            hosts.append(array)  # kept alive until the stream is synchronized
            self._context.set_input_shape(name, array.shape)
            pointer = self._device_buffer(name, array.nbytes)
            check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, to_device, self._stream))
        outputs = {}
        for name in self._output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=self._dtypes[name])
            self._device_buffer(name, outputs[name].nbytes)
        if not self._context.execute_async_v3(self._stream):
            raise DeployBenchError(f"TensorRT execution of {self.artifact.path.name} failed; see the TensorRT log")
        for name, array in outputs.items():
            check(cudart.cudaMemcpyAsync(array.ctypes.data, self._buffers[name][0], array.nbytes, to_host,
                                         self._stream))
        check(cudart.cudaStreamSynchronize(self._stream))
        return outputs

    def _close_impl(self) -> None:
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers = {}
        self._cudart.cudaStreamDestroy(self._stream)
        self._context = self._engine = self._runtime = None
