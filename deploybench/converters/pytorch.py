"""The ``torch`` format: a ``torch.export`` ExportedProgram saved as ``model.pt2``.

A fresh process loads it with ``torch.export.load(path).module()``, without the model's source.
Dynamic axes of the input specs (batch, sequence, ...) become ``torch.export.Dim``s; when the
model cannot be exported with them (a hard-coded reshape, a branch on the size), it is exported
with static shapes and ``metadata["dynamic_shapes"]`` says so. The input/output specs are stored
inside the .pt2 (``extra_files``) as well as in the cache sidecar, so a copied .pt2 keeps its names.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from ..spec import Artifact, DeployBenchError, ModelSpec, PrecisionNotSupported, TensorSpec

FILE_NAME = "model.pt2"
# Loading a .pt2 unpickles Python objects (its weights and constants, torch.load(weights_only=False)):
# a crafted file runs code. A .pt2 is loaded from a conversion cache this process uses, or when the
# user vouches for it with this variable.
TRUST_ENV = "DEPLOYBENCH_TRUST_PICKLE"
_TRUSTED_FOLDERS: set[Path] = set()


def trust_folder(folder: Path) -> None:
    """Trust the .pt2 files under ``folder``: a conversion cache deploybench writes into."""
    _TRUSTED_FOLDERS.add(Path(folder).resolve())


def check_trusted(path: Path) -> None:
    """Refuse, in one line that says how to opt in, a .pt2 that did not come from a conversion cache."""
    from .cache import default_cache_dir

    resolved = Path(path).resolve()
    folders = {*_TRUSTED_FOLDERS, default_cache_dir().resolve()}
    if os.environ.get(TRUST_ENV) == "1" or any(resolved.is_relative_to(folder) for folder in folders):
        return
    raise DeployBenchError(f"{path}: loading a .pt2 unpickles Python objects, which can run code, and this file "
                           f"is not from deploybench's conversion cache; if you trust it, set {TRUST_ENV}=1")
SPECS_ENTRY = "deploybench.json"
# The torch format holds fp32 weights; fp16/bf16 cells run them under autocast in TorchEngine.
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")

_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "int64": "int64",
                 "int32": "int32", "int8": "int8", "uint8": "uint8", "bool": "bool", "float64": "float32"}


def convert(spec: ModelSpec, out_dir: Path, precision: str = "fp32", strict: bool = False,
            **options: Any) -> Artifact:
    """Export ``spec``'s module with ``torch.export`` to ``out_dir/model.pt2``; return its ``Artifact``.

    ``metadata`` records ``dynamic_shapes`` (True when every dynamic axis stayed dynamic) and, when
    it fell back to static shapes, ``dynamic_shapes_error``. ``strict`` is passed to torch.export.
    """
    import torch

    if precision not in TORCH_PRECISIONS:
        raise PrecisionNotSupported(f"the torch format has no {precision!r} mode; use one of "
                               f"{', '.join(TORCH_PRECISIONS)}, or an onnx/openvino/tflite {precision} cell")
    if options:
        raise DeployBenchError(f"torch conversion takes no option(s) {', '.join(sorted(options))}; "
                               "it accepts only strict=")
    module = spec.build().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    dynamic_names = sorted({axis for t in spec.inputs for axis in t.dynamic_axes.values()})
    metadata: dict[str, Any] = {"exporter": "torch.export", "torch": torch.__version__,
                                "weights": "fp32", "dynamic_shapes": False}
    if precision != "fp32":
        metadata["precision_applied_by"] = "torch.autocast in TorchEngine"
    program, inputs = None, spec.inputs
    if dynamic_names:
        program, inputs = _export_dynamic(module, spec, dynamic_names, strict, metadata)
    if program is None:
        try:
            program = torch.export.export(module, _example_args(spec, spec.dims), strict=strict)
        except Exception as exc:
            raise DeployBenchError(f"torch.export cannot export model {spec.name!r}: "
                                   f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
        inputs = tuple(TensorSpec(t.name, t.concrete_shape(spec.dims), t.dtype, t.value_range) for t in spec.inputs)

    outputs = _output_specs(program, inputs, spec.output_names)
    path = out_dir / FILE_NAME
    specs = {"inputs": [t.to_dict() for t in inputs], "outputs": [t.to_dict() for t in outputs],
             "model": spec.name, "task": spec.task, "task_config": spec.task_config,
             "dynamic_shapes": metadata["dynamic_shapes"]}
    torch.export.save(program, path, extra_files={SPECS_ENTRY: json.dumps(specs, default=str)})
    return Artifact(format="torch", path=path, precision=precision, inputs=inputs, outputs=outputs,
                    files=(path,), metadata=metadata)


def read_artifact(path: Path) -> Artifact:
    """An ``Artifact`` for an existing ``.pt2`` file: specs from its deploybench entry, else from its graph."""
    path = Path(path)
    extra = {SPECS_ENTRY: ""}
    program = load_program(path, extra)
    saved = _saved_specs(extra[SPECS_ENTRY])
    if saved is not None:
        inputs, outputs, specs = saved
        metadata = {"model": specs.get("model", path.stem), "task": specs.get("task", "generic"),
                    "task_config": specs.get("task_config", {}), "dynamic_shapes": specs.get("dynamic_shapes")}
    else:
        inputs = _input_specs(program)
        user_outputs = list(program.graph_signature.user_outputs)
        names = ["output"] if len(user_outputs) == 1 else [f"output_{i}" for i in range(len(user_outputs))]
        outputs = _output_specs(program, inputs, names)
        metadata = {"model": path.stem, "dynamic_shapes": any(t.dynamic_axes for t in inputs)}
    return Artifact(format="torch", path=path, precision="fp32", inputs=inputs, outputs=outputs, files=(path,),
                    metadata=metadata)


def load_program(path: Path, extra: dict[str, str] | None = None):
    """``torch.export.load``, refusing what is no torch.export archive with one line.

    torch logs the error of a damaged archive with its traceback and raises "check the warnings
    above": the logged error is caught here and named in the message instead.
    """
    import torch

    check_trusted(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise DeployBenchError(f"{path} is not a torch.export .pt2 file (not a readable zip archive: {exc}); "
                               "export the model with torch.export.save") from None
    # archive_format marks the current layout, a top-level "version" the one torch 2.7 wrote
    if not any(name.endswith("/archive_format") or name == "version" for name in names):
        raise DeployBenchError(f"{path} is a zip archive but not a torch.export .pt2 file (no archive_format entry); "
                               "export the model with torch.export.save")
    logged = _KeepErrors()
    logger = logging.getLogger("torch.export")
    # torch logs the cause as a WARNING: a quieted "torch" logger (ERROR) would drop it before the filter
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addFilter(logged)
    try:
        return torch.export.load(path, extra_files=extra or {})
    except Exception as exc:
        cause = logged.errors[0] if logged.errors else exc
        raise DeployBenchError(f"{path} is not a torch.export .pt2 file torch {torch.__version__} can load: "
                               f"{type(cause).__name__}: {cause}".splitlines()[0]) from exc
    finally:
        logger.removeFilter(logged)
        logger.setLevel(level)


class _KeepErrors(logging.Filter):
    """Keeps the errors torch logs while loading, and drops the records (a filter on the logger sees them
    before its own stderr handler)."""

    def __init__(self):
        super().__init__()
        self.errors: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])
        return False


def _saved_specs(entry: str):
    """(inputs, outputs, the entry) from the deploybench entry of a .pt2; None when absent or damaged."""
    if not entry:
        return None
    try:
        specs = json.loads(entry)
        return (tuple(TensorSpec.from_dict(t) for t in specs["inputs"]),
                tuple(TensorSpec.from_dict(t) for t in specs["outputs"]), specs)
    except (ValueError, KeyError, TypeError, AttributeError, DeployBenchError):
        return None  # the graph itself still says what the inputs and outputs are


def _export_dynamic(module, spec: ModelSpec, dynamic_names: list[str], strict: bool, metadata: dict):
    """(ExportedProgram or None, input specs) with as many dynamic axes as the model allows.

    Named ``Dim``s first (one symbol shared by every input with that axis); then ``Dim.AUTO``,
    which accepts the bounds the model imposes (a positional table caps the sequence length). An
    axis AUTO had to specialize is fixed at the spec's default size and the rest exported again.
    """
    import torch

    errors: list[str] = []
    attempts = [("named", dynamic_names), ("auto", dynamic_names)]
    while attempts:
        style, names = attempts.pop(0)
        # An example size of 1 would be specialized by torch.export (the 0/1 rule): trace at >= 2.
        example_dims = {**spec.dims, **{name: max(2, int(spec.dims.get(name, 1))) for name in names}}
        dims = {name: (torch.export.Dim(_identifier(name), min=1) if style == "named" else torch.export.Dim.AUTO)
                for name in names}
        dynamic_shapes = tuple({axis: dims[name] for axis, name in t.dynamic_axes.items() if name in dims}
                               for t in spec.inputs)
        try:
            program = torch.export.export(module, _example_args(spec, example_dims), dynamic_shapes=dynamic_shapes,
                                          strict=strict)
        except Exception as exc:
            errors.append(f"{style}: {type(exc).__name__}: {exc}".splitlines()[0][:300])
            continue
        inputs, fixed, ranges = _traced_input_specs(program, spec, names)
        if fixed:
            still_dynamic = [n for n in names if n in ranges]
            errors.append(f"{style}: torch.export specialized {', '.join(fixed)}")
            if still_dynamic and still_dynamic != names:
                attempts.append(("auto", still_dynamic))
            continue
        metadata.update(dynamic_style=style, dynamic_shapes=names == dynamic_names, dynamic_ranges=ranges)
        if names != dynamic_names:
            metadata["static_axes"] = sorted(set(dynamic_names) - set(names))
        if errors:
            metadata["dynamic_shapes_error"] = " | ".join(errors)
        return program, inputs
    metadata["dynamic_shapes_error"] = " | ".join(errors)
    return None, spec.inputs


def _traced_input_specs(program, model: ModelSpec, names: list[str]):
    """(input specs, axes torch.export specialized, {axis name: [min, max or None]}).

    Named axes not in ``names`` were exported static, at the model's default size.
    """
    ranges_by_symbol = {str(symbol): bounds for symbol, bounds in program.range_constraints.items()}
    specs, fixed, ranges = [], [], {}
    for node, spec in zip(_user_input_nodes(program), model.inputs):
        fake = node.meta.get("val")
        shape = list(spec.shape)
        for axis, name in spec.dynamic_axes.items():
            size = fake.shape[axis]
            if name not in names:
                shape[axis] = int(model.dims.get(name, 1))
                continue
            if isinstance(size, int):
                shape[axis] = size
                fixed.append(f"{spec.name}[{axis}]={size}")
            elif str(size) in ranges_by_symbol:
                bounds = ranges_by_symbol[str(size)]
                upper = _finite_int(bounds.upper)
                # the 0/1 rule puts the lower bound at 2, yet a size of 1 runs: report 1
                ranges.setdefault(name, [1, upper])
        specs.append(TensorSpec(spec.name, tuple(shape), spec.dtype, spec.value_range))
    return tuple(specs), fixed, ranges


def _finite_int(value) -> int | None:
    try:  # sympy's infinity (int_oo) raises all sorts of errors on int()
        return int(value) if getattr(value, "is_finite", True) else None
    except Exception:
        return None


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"d_{cleaned}"


def _example_args(spec: ModelSpec, dims) -> tuple:
    import torch

    arrays = spec.make_inputs(seed=0, dims=dims)
    return tuple(torch.from_numpy(arrays[t.name]) for t in spec.inputs)


def _shape_of(fake, symbol_names: dict[str, str]) -> tuple[int | str, ...]:
    shape: list[int | str] = []
    for i, size in enumerate(fake.shape):
        if isinstance(size, int):
            shape.append(size)
        else:  # a SymInt: name it after the input axis it came from
            shape.append(symbol_names.get(str(size), f"dim_{i}"))
    return tuple(shape)


def _dtype_name(fake) -> str:
    return _TORCH_DTYPES.get(str(fake.dtype).removeprefix("torch."), "float32")


def _user_input_nodes(program):
    names = set(program.graph_signature.user_inputs)
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]


def _input_specs(program) -> tuple[TensorSpec, ...]:
    specs, symbol_names = [], {}
    for node in _user_input_nodes(program):
        fake = node.meta.get("val")
        if fake is None or not hasattr(fake, "shape"):
            continue
        for axis, size in enumerate(fake.shape):
            if not isinstance(size, int):
                symbol_names.setdefault(str(size), "batch" if axis == 0 else f"{node.name}_dim{axis}")
        specs.append(TensorSpec(node.name, _shape_of(fake, symbol_names), _dtype_name(fake)))
    return tuple(specs)


def _output_specs(program, inputs, names) -> tuple[TensorSpec, ...]:
    symbol_names: dict[str, str] = {}
    for node, spec in zip(_user_input_nodes(program), inputs):
        fake = node.meta.get("val")
        for axis, size in enumerate(getattr(fake, "shape", ())):
            if not isinstance(size, int) and isinstance(spec.shape[axis], str):
                symbol_names.setdefault(str(size), spec.shape[axis])
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    # Mutated buffers come first in the output node; the user's outputs are the last ones.
    user_count = len(program.graph_signature.user_outputs)
    returned = list(output_node.args[0])[-user_count:] if user_count else []
    fakes = [a.meta.get("val") if hasattr(a, "meta") else None for a in returned]
    names = list(names)
    if len(names) != len(fakes):
        names = ["output"] if len(fakes) == 1 else [f"output_{i}" for i in range(len(fakes))]
    return tuple(TensorSpec(name, _shape_of(fake, symbol_names) if hasattr(fake, "shape") else (),
                            _dtype_name(fake) if hasattr(fake, "dtype") else "float32")
                 for name, fake in zip(names, fakes))


__all__ = ["FILE_NAME", "TORCH_PRECISIONS", "convert", "read_artifact"]
