"""Reading a large model whose weights are inside the .onnx file without loading them: each large initializer's
raw data is pointed at where it lies in the file, so onnx_ir memory-maps it as it maps external data.

protobuf parses a whole message or nothing: the file's bytes and the parsed model hold the weights twice,
and onnx's checker reading the file holds them twice more. The wire format is walked instead (ModelProto.graph
-> GraphProto.initializer -> TensorProto.raw_data) and only a copy without the large raw data is parsed, each
such tensor given an external-data entry that names the .onnx file itself at its raw data's offset.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from normfold import protobuf_wire as wire
from normfold.mapped_pages import release_range

# Files from this size are read this way; smaller ones are parsed whole (faster, and small).
MAP_FILE_BYTES = 64 << 20
# Raw data from this size is mapped; smaller tensors are parsed with the model.
MAP_TENSOR_BYTES = 4 << 10
# The walk unmaps the pages it has passed each time it has gone this far: reading the few header bytes of
# each of four thousand 0.1 MB tensors would otherwise map the whole file (read-ahead, fault-around).
RELEASE_EVERY_BYTES = 16 << 20

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


class InlineMappedTensor(ir.ExternalTensor):
    """A tensor whose bytes are its raw_data inside the .onnx file it was read from, memory-mapped there.

    It is not external data: normfold writes it back inside the model file, never to a data file beside it.
    """


def read_mapped_proto(path: Path) -> tuple[onnx.ModelProto, list[onnx.TensorProto]] | None:
    """The file's ModelProto with each top-level initializer's raw data of MAP_TENSOR_BYTES or more left in the file
    (an external-data entry naming the file itself), and those tensors; None when the file is not one to read this
    way (small, no such tensor, or bytes this walker does not read: protobuf's parser then reads or refuses it)."""
    size = path.stat().st_size
    if not size or size < MAP_FILE_BYTES or not path.name.isprintable():
        return None  # a name protobuf cannot hold as UTF-8 text (or that reads badly in a location) is parsed whole
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            stripped = _strip_raw_data(data, path.name)
        except wire.MalformedMessage:
            return None
    if stripped is None:
        return None
    try:
        proto = onnx.ModelProto.FromString(stripped)
    except DecodeError:  # corrupt inside a message the walker skipped: protobuf's reading of the file says where
        return None
    mapped = [tensor for tensor in proto.graph.initializer if _names_file(tensor, path.name)]
    return proto, mapped


def as_inline_mapped(model: ir.Model, mapped: list[onnx.TensorProto]) -> None:
    """Mark the model's tensors read from the file's own raw data (`mapped`) as InlineMappedTensor."""
    names = {tensor.name for tensor in mapped}
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if name in names and isinstance(tensor, ir.ExternalTensor) and not isinstance(tensor, InlineMappedTensor):
            value.const_value = InlineMappedTensor(
                tensor.location,
                tensor.offset,
                tensor.length,
                tensor.dtype,
                shape=tensor.shape,
                name=tensor.name or name,
                doc_string=tensor.doc_string,
                metadata_props=dict(tensor.metadata_props),
                base_dir=tensor.base_dir,
            )


def _names_file(tensor: onnx.TensorProto, file_name: str) -> bool:
    """Whether a tensor's data is external data in the file named `file_name` (the model's own, for these)."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(
        entry.key == "location" and entry.value == file_name for entry in tensor.external_data
    )


def _strip_raw_data(data: mmap.mmap, file_name: str) -> bytes | None:
    """The model's bytes with the large raw data of its top-level initializers replaced by entries pointing at it;
    None when there is none (or the model has not exactly one graph field: protobuf would merge several)."""
    model_fields = list(wire.fields(data, 0, len(data)))
    graphs = [f for f in model_fields if f.number == _MODEL_GRAPH]
    if len(graphs) != 1 or graphs[0].wire_type != wire.LENGTH_DELIMITED:
        return None
    graph = graphs[0]
    graph_pieces: list[bytes] = []
    mapped, released = 0, 0
    for field in wire.fields(data, graph.value_start, graph.end):
        if field.start - released >= RELEASE_EVERY_BYTES:
            release_range(data, field.start)
            released = field.start
        tensor = None
        if field.number == _GRAPH_INITIALIZER and field.wire_type == wire.LENGTH_DELIMITED:
            tensor = _strip_tensor(data, field, file_name)
        if tensor is None:
            graph_pieces.append(data[field.start : field.end])
        else:
            graph_pieces.append(wire.length_delimited(_GRAPH_INITIALIZER, tensor))
            mapped += 1
    if not mapped:
        return None
    pieces = [data[f.start : f.end] for f in model_fields if f is not graph]
    pieces.append(wire.length_delimited(_MODEL_GRAPH, b"".join(graph_pieces)))
    return b"".join(pieces)


def _strip_tensor(data: mmap.mmap, initializer: wire.Field, file_name: str) -> bytes | None:
    """A TensorProto's bytes with its raw data replaced by external-data entries naming where it lies in the file;
    None when it is small, already external, or has no single raw data field."""
    tensor_fields = list(wire.fields(data, initializer.value_start, initializer.end))
    raw = [f for f in tensor_fields if f.number == _TENSOR_RAW_DATA]
    if (
        len(raw) != 1
        or raw[0].wire_type != wire.LENGTH_DELIMITED
        or raw[0].end - raw[0].value_start < MAP_TENSOR_BYTES
        or any(f.number == _TENSOR_EXTERNAL_DATA or _external_location(data, f) for f in tensor_fields)
    ):
        return None
    pieces = [data[f.start : f.end] for f in tensor_fields if f is not raw[0] and f.number != _TENSOR_DATA_LOCATION]
    entries = {"location": file_name, "offset": str(raw[0].value_start), "length": str(raw[0].end - raw[0].value_start)}
    for name, value in entries.items():
        entry = wire.length_delimited(_ENTRY_KEY, name.encode()) + wire.length_delimited(_ENTRY_VALUE, value.encode())
        pieces.append(wire.length_delimited(_TENSOR_EXTERNAL_DATA, entry))
    pieces.append(wire.key(_TENSOR_DATA_LOCATION, wire.VARINT) + wire.encode_varint(onnx.TensorProto.EXTERNAL))
    return b"".join(pieces)


def _external_location(data: mmap.mmap, field: wire.Field) -> bool:
    """Whether a field is a data_location other than DEFAULT (an explicit DEFAULT is dropped and written anew)."""
    if field.number != _TENSOR_DATA_LOCATION:
        return False
    return field.wire_type != wire.VARINT or wire.decode_varint(data, field.value_start, field.end)[0] != 0
