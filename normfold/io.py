"""Loading models safely (memory-mapped, external data checked) and writing them atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir import serde
from onnx_ir import external_data as ir_external_data

from normfold.errors import NormfoldError


def read_model_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The checked ModelProto of an ONNX file, external data not loaded; any problem is a NormfoldError."""
    path = Path(path)
    if not path.exists():
        raise NormfoldError(f"{path}: no such file")
    if not path.is_file():
        raise NormfoldError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise NormfoldError(f"{path}: empty file, not an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises several unrelated types for bad bytes
        raise NormfoldError(f"{path}: not a readable ONNX model ({_first_line(error)})") from None
    if not proto.graph.node and not proto.graph.output:
        raise NormfoldError(f"{path}: not an ONNX model (no graph)")
    _check_external_data(proto, path)
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise NormfoldError(f"{path}: invalid ONNX model: {_first_line(error)}") from None
    return proto


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Read an ONNX file into onnx_ir, external data memory-mapped; any problem is a NormfoldError."""
    model = serde.deserialize_model(read_model_proto(path))
    ir_external_data.set_base_dir(model.graph, str(Path(path).parent))
    return model


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external data that is missing, too short, or outside the model's folder, before reading it."""
    folder = path.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        target = (path.parent / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(folder):
            raise NormfoldError(
                f"{path}: tensor '{tensor.name}' points outside the model's folder for its data ('{location}')"
            )
        if not target.is_file():
            raise NormfoldError(f"{path}: external data file '{location}' of tensor '{tensor.name}' is missing")
        offset = int(info.offset or 0)
        length = int(info.length) if info.length else 0
        if offset + length > target.stat().st_size:
            raise NormfoldError(
                f"{path}: external data file '{location}' is too short for tensor '{tensor.name}'"
            )


def has_external_data(model: ir.Model) -> bool:
    """Whether any initializer of the model is stored outside the .onnx file."""
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool = False,
    verify: Callable[[Path], None] | None = None,
) -> None:
    """Write the model atomically: into a temporary folder beside the target, checked, then renamed.

    With `external_data`, tensors go to `<name>.data` beside the model (another name if that file
    holds the input's own tensors, which must not be overwritten). The output is verified with
    `onnx.checker.check_model(full_check=True)`, then by `verify(staged_path)` (which raises to
    refuse it), before it replaces anything.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise NormfoldError(f"{path}: output folder '{folder}' does not exist")
    data_name = _data_file_name(model, path) if external_data else None
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{path.name}.", suffix=".tmp") as staging:
        staged = Path(staging) / path.name
        ir.save(model, staged, external_data=data_name)
        onnx.checker.check_model(str(staged), full_check=True)
        if verify is not None:
            verify(staged)
        os.chmod(staged, 0o666 & ~_umask())
        if data_name is not None:
            os.chmod(Path(staging) / data_name, 0o666 & ~_umask())
            os.replace(Path(staging) / data_name, folder / data_name)
        os.replace(staged, path)


def _data_file_name(model: ir.Model, path: Path) -> str:
    """`<name>.data`, unless the model's own tensors are read from that file."""
    in_use = {
        (Path(v.const_value.base_dir) / v.const_value.location).resolve()
        for v in model.graph.initializers.values()
        if isinstance(v.const_value, ir.ExternalTensor)
    }
    name, counter = f"{path.name}.data", 0
    while (path.parent / name).resolve() in in_use:
        counter += 1
        name = f"{path.name}.{counter}.data"
    return name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(error: BaseException) -> str:
    """The error's text on one line, capped so a report line stays readable."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 400 else text[:397] + "..."
