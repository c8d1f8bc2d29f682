"""An ONNX model's external tensor data: which tensors keep their bytes in other files, and those files,
checked before anything reads them (a model file may come from anyone: its data must stay in its folder)."""

from __future__ import annotations

from pathlib import Path

from ..spec import DeployBenchError
from ._paths import stays_inside


def external_tensors(model) -> list:
    """Every tensor whose data lives in another file: initializers, and tensors in attributes and subgraphs."""
    import onnx

    def of_graph(graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        yield from of_nodes(graph.node)

    def of_nodes(nodes):
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    yield from of_graph(graph)

    tensors = [*of_graph(model.graph), *(t for function in model.functions for t in of_nodes(function.node))]
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def data_files_of(model, path: Path) -> list[Path]:
    """The files ``model`` (read from ``path``) keeps tensor data in; refused before anything reads them when
    one lies outside the model's folder (``..``, an absolute path, a symlink out) or is shorter than its tensors."""
    folder = path.parent
    ends: dict[str, int] = {}
    for tensor in external_tensors(model):
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not stays_inside(folder, location):
            raise DeployBenchError(f"{path}: external data location {location!r} leaves the model's folder; refusing "
                                   "to read it: put the data file next to the model and name it by its file name")
        try:
            end = int(info.get("offset") or 0) + int(info.get("length") or 0)
        except ValueError:
            raise DeployBenchError(f"{path}: tensor {tensor.name!r} has external data offset {info.get('offset')!r} "
                                   f"and length {info.get('length')!r}, which are not numbers; re-export it") from None
        ends[location] = max(ends.get(location, 0), end)
    files = []
    for location, end in sorted(ends.items()):
        data = folder / location
        if not data.is_file():
            raise DeployBenchError(f"{path}: its external data file {location!r} is missing; copy it next to the model")
        if data.stat().st_size < end:
            raise DeployBenchError(f"{path}: its external data file {location!r} holds {data.stat().st_size} bytes, "
                                   f"its tensors need {end}; copy the complete file next to the model")
        files.append(data)
    return files


__all__ = ["data_files_of", "external_tensors"]
