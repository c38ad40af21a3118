"""Loading models safely (memory-mapped, external data checked) and writing them atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir import serde
from onnx_ir import external_data as ir_external_data

from normfold.errors import NormfoldError


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Read an ONNX file into onnx_ir, external data memory-mapped; any problem is a NormfoldError."""
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
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise NormfoldError(f"{path}: invalid ONNX model: {_first_line(error)}") from None
    model = serde.deserialize_model(proto)
    ir_external_data.set_base_dir(model.graph, str(path.parent))
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


def save_model(model: ir.Model, path: str | os.PathLike[str], *, external_data: bool = False) -> None:
    """Write the model atomically: a temporary file in the target folder, checked, then renamed.

    With `external_data`, tensors go to `<name>.data` beside the model. The output is verified with
    `onnx.checker.check_model(full_check=True)` before it replaces anything.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise NormfoldError(f"{path}: output folder '{folder}' does not exist")
    handle, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        data_name = f"{path.name}.data" if external_data else None
        ir.save(model, temp_name, external_data=data_name)
        onnx.checker.check_model(temp_name, full_check=True)
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
