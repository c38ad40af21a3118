"""Which files a model reads: its tensors stored outside the .onnx file, their entries checked before any read."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from normfold.errors import NormfoldError
from normfold.graph_walk import iter_scopes
from normfold.inline_mapping import InlineMappedTensor


def proto_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers and attribute tensors of every graph, subgraph and function
    (an explicit stack, so any nesting depth)."""
    graphs: list[onnx.GraphProto] = [proto.graph]
    nodes: list[onnx.NodeProto] = [node for function in proto.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            yield from (sparse.values for sparse in graph.sparse_initializer)
            nodes.extend(graph.node)
            continue
        for attr in nodes.pop().attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                graphs.append(attr.g)
            graphs.extend(attr.graphs)


def external_data_entries(tensor: onnx.TensorProto, owner: Path) -> tuple[str, int, int | None]:
    """A tensor's external-data location, offset and length (None: to the end), each checked: a location with
    no NUL byte, offsets and lengths written as non-negative integers. `owner` is the file naming the tensor."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    if not location or "\0" in location:
        raise NormfoldError(f"{owner}: tensor '{tensor.name}' has no usable external data location ({location!r})")
    numbers = {}
    for key in ("offset", "length"):
        value = entries.get(key, "")
        if value and not (value.isascii() and value.isdigit()):
            raise NormfoldError(
                f"{owner}: tensor '{tensor.name}' has external data {key} '{value}', not a non-negative integer"
            )
        numbers[key] = int(value) if value else None
    return location, numbers["offset"] or 0, numbers["length"]


def check_external_tensor(tensor: onnx.TensorProto, owner: Path) -> None:
    """Refuse external data that is malformed, outside the folder of `owner` (the file naming it), not a regular
    file, or too short for the tensor, before anything reads it."""
    location, offset, length = external_data_entries(tensor, owner)
    folder = owner.parent.resolve()
    target = (owner.parent / location).resolve()
    if os.path.isabs(location) or not target.is_relative_to(folder):
        raise NormfoldError(
            f"{owner}: tensor '{tensor.name}' points outside the model's folder for its data ('{location}')"
        )
    literal = owner.parent / location  # what open() will follow, component by component ('missing/..' fails)
    if not os.path.lexists(literal) or not target.exists():
        raise NormfoldError(f"{owner}: external data file '{location}' of tensor '{tensor.name}' is missing")
    if not literal.is_file():
        raise NormfoldError(f"{owner}: external data '{location}' of tensor '{tensor.name}' is not a regular file")
    needed = stored_bytes(tensor)
    if length is not None and needed and length != needed:
        raise NormfoldError(
            f"{owner}: tensor '{tensor.name}' has external data length {length} but its shape "
            f"{list(tensor.dims)} needs {needed} bytes"
        )
    if offset + (needed if length is None else length) > literal.stat().st_size:
        raise NormfoldError(f"{owner}: external data file '{location}' is too short for tensor '{tensor.name}'")


def stored_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes a tensor's raw data takes, from its dims and dtype (sub-byte types packed, as ONNX stores them;
    0 for strings and unknown types)."""
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except (TypeError, ValueError):
        return 0
    count = 1
    for dim in tensor.dims:
        count *= dim
    return (bits * count + 7) // 8


def external_tensors(model: ir.Model) -> Iterator[ir.ExternalTensor]:
    """Every tensor of the model stored outside the .onnx file: initializers of every graph, attribute tensors
    (not those read in place from inside the model file: InlineMappedTensor)."""
    for scope in iter_scopes(model):
        if isinstance(scope.body, ir.Graph):
            for value in scope.body.initializers.values():
                tensor = value.const_value
                if isinstance(tensor, ir.ExternalTensor) and not isinstance(tensor, InlineMappedTensor):
                    yield tensor
        for node in scope.body:
            for attr in node.attributes.values() if node.attributes else ():
                if (
                    not attr.is_ref()
                    and attr.type == ir.AttributeType.TENSOR
                    and isinstance(attr.value, ir.ExternalTensor)
                ):
                    yield attr.value


def has_external_data(model: ir.Model) -> bool:
    """Whether any tensor of the model is stored outside the .onnx file."""
    return next(external_tensors(model), None) is not None


def model_files(path: Path, model: ir.Model) -> set[Path]:
    """The model file and every external data file it reads, resolved."""
    files = {path.resolve()}
    files.update((Path(t.base_dir) / t.location).resolve() for t in external_tensors(model))
    return files


# Models at most this big are read to learn which data files they use; an .onnx with its weights outside
# is small, and one with weights inside has no data files to protect.
_SCAN_BYTES = 64 << 20


def data_files_read_by(model_path: Path) -> set[Path]:
    """The external data files an existing model file reads (resolved); empty when it is not one."""
    try:
        if not model_path.is_file() or model_path.stat().st_size > _SCAN_BYTES:
            return set()
        proto = onnx.load(str(model_path), load_external_data=False)
    except (OSError, DecodeError, ValueError):  # not an ONNX file: it reads no data files
        return set()
    files = set()
    for tensor in proto_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            try:
                files.add((model_path.parent / external_data_entries(tensor, model_path)[0]).resolve())
            except NormfoldError:  # a malformed entry names no file that could be shared
                continue
    return files


def data_files_read_by_others(folder: Path, written: Path) -> set[Path]:
    """The data files that the other models (*.onnx) in `folder` read."""
    others = [p for p in folder.glob("*.onnx") if p.resolve() != written.resolve()]
    return set().union(*(data_files_read_by(other) for other in others))
