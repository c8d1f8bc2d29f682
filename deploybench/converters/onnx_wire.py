"""An ``.onnx`` file's header read without the ``onnx`` package: what a device with only a runtime needs.

A Raspberry Pi runs an ONNX file on ONNX Runtime or OpenVINO; neither needs the ``onnx`` package, and
deploybench should not either just to learn the file's inputs, outputs, opset and precision. This
walks the protobuf wire format for exactly the fields ``read_artifact`` reads and returns objects
shaped like onnx's own (``model.graph.input[0].type.tensor_type.shape.dim``...), so the one reader
(``graph_tensor_specs``, ``guess_precision``) serves both. The checker does not run here: the runtime
that loads the file checks it. A file keeping tensors in external data is refused (its paths are
checked by ``onnx_external``, which needs the onnx package).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ..spec import DeployBenchError

# The field numbers below are onnx.proto3's (ModelProto graph 7, opset_import 8, metadata_props 14; GraphProto
# node 1, initializer 5, input 11, output 12; ...), unchanged since IR version 3.
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class _Dim(SimpleNamespace):
    def HasField(self, name: str) -> bool:  # noqa: N802 - onnx's own spelling, so one reader serves both
        return getattr(self, name, None) is not None


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: memoryview):
    """(field number, value) of one message: an int for varints, a memoryview for length-delimited fields."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise ValueError(f"field {number} runs past the end of its message (a truncated file?)")
            value, at = data[at:at + size], at + size
        elif wire in (1, 5):
            value, at = None, at + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire} of field {number}")
        yield number, value


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8")


def _pair(data: memoryview) -> SimpleNamespace:
    fields = dict(_fields(data))
    return SimpleNamespace(key=_text(fields.get(1, b"")), value=_text(fields.get(2, b"")))


def _opset(data: memoryview) -> SimpleNamespace:
    fields = dict(_fields(data))
    return SimpleNamespace(domain=_text(fields.get(1, b"")), version=int(fields.get(2, 0)))


def _value_info(data: memoryview) -> SimpleNamespace:
    name, elem_type, dims = "", 0, []
    for number, value in _fields(data):
        if number == 1:
            name = _text(value)
        elif number == 2:
            for type_number, tensor in _fields(value):
                if type_number != 1:  # not a tensor (a sequence or a map): no element type
                    continue
                for tensor_number, part in _fields(tensor):
                    if tensor_number == 1:
                        elem_type = part
                    elif tensor_number == 2:
                        dims = [_dimension(dim) for n, dim in _fields(part) if n == 1]
    shape = SimpleNamespace(dim=dims)
    return SimpleNamespace(name=name, type=SimpleNamespace(tensor_type=SimpleNamespace(elem_type=elem_type,
                                                                                      shape=shape)))


def _dimension(data: memoryview) -> _Dim:
    fields = dict(_fields(data))
    value = fields.get(1)
    if value is not None and value >= 1 << 63:  # an int64 -1 (unknown) travels as its two's complement
        value -= 1 << 64
    return _Dim(dim_value=value, dim_param=_text(fields[2]) if 2 in fields else "")


def _tensor(data: memoryview) -> SimpleNamespace:
    dims, data_type, name, location = [], 0, "", 0
    for number, value in _fields(data):
        if number == 1:
            if isinstance(value, int):
                dims.append(value)
            else:  # packed
                at = 0
                while at < len(value):
                    dim, at = _varint(value, at)
                    dims.append(dim)
        elif number == 2:
            data_type = value
        elif number == 8:
            name = _text(value)
        elif number == 14:
            location = value
    return SimpleNamespace(name=name, dims=dims, data_type=data_type, data_location=location)


def _graph(data: memoryview) -> SimpleNamespace:
    graph = SimpleNamespace(node=[], initializer=[], input=[], output=[])
    for number, value in _fields(data):
        if number == 1:
            op_type = next((_text(v) for n, v in _fields(value) if n == 4), "")
            graph.node.append(SimpleNamespace(op_type=op_type))
        elif number == 5:
            graph.initializer.append(_tensor(value))
        elif number in (11, 12):
            (graph.input if number == 11 else graph.output).append(_value_info(value))
    return graph


def load_header(path: Path) -> SimpleNamespace:
    """The model's graph (inputs, outputs, node op types, initializer types), opsets and metadata props."""
    model = SimpleNamespace(graph=_graph(memoryview(b"")), opset_import=[], metadata_props=[])
    try:
        data = memoryview(Path(path).read_bytes())
        for number, value in _fields(data):
            if number == 7:
                model.graph = _graph(value)
            elif number == 8:
                model.opset_import.append(_opset(value))
            elif number == 14:
                model.metadata_props.append(_pair(value))
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise DeployBenchError(f"{path} is not a readable ONNX model ({exc}); re-export it or check the file "
                               "is complete") from None
    if any(t.data_location == _EXTERNAL for t in model.graph.initializer):
        raise DeployBenchError(f"{path} keeps tensors in external data files, which deploybench checks with the "
                               "onnx package: pip install onnx")
    return model


__all__ = ["load_header"]
