"""Writing a large model with its weights inside the .onnx file without serializing it in memory: the model is
first written with external data (onnx_ir streams each tensor to the data file), then rewritten as one file,
each initializer's data copied from the data file into its raw_data field by the kernel.

protobuf serializes a whole message at once: the model, its serialization and Python's copy of it hold the
weights three times over. Here only the model without its large weights is serialized.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx import external_data_helper

from normfold import inline_mapping
from normfold import protobuf_wire as wire
from normfold.errors import NormfoldError
from normfold.external_data import external_data_entries, proto_tensors
from normfold.inline_mapping import InlineMappedTensor

# protobuf cannot parse a message of 2 GiB or more: a model that large keeps its weights in a data file.
PROTOBUF_LIMIT = (1 << 31) - 1
# Bytes copied per system call when the kernel cannot copy between the files itself.
COPY_CHUNK = 16 << 20

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9


def needs_streaming(model: ir.Model) -> bool:
    """Whether the model is written this way: it has tensors mapped from an inline file, or MAP_FILE_BYTES of
    initializers."""
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, InlineMappedTensor):
            return True
        total += tensor.nbytes if tensor is not None else 0
    return total >= inline_mapping.MAP_FILE_BYTES


def write_inline(external: Path, target: Path) -> None:
    """Write the model file `external` (its data in external files beside it) as one file `target` with every
    tensor's data inside: the top-level initializers' data copied from their file, other tensors loaded."""
    proto = onnx.load(str(external), load_external_data=False)
    folder = str(external.parent)
    initializers = [onnx.TensorProto.FromString(t.SerializeToString()) for t in proto.graph.initializer]  # data outside
    proto.graph.ClearField("initializer")
    for tensor in proto_tensors(proto):  # subgraphs' and attributes' tensors: few and small
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external_data_helper.load_external_data_for_tensor(tensor, folder)
            tensor.ClearField("data_location")
            del tensor.external_data[:]
    parts = [_initializer_part(tensor, external) for tensor in initializers]
    graph = proto.graph.SerializeToString()
    proto.ClearField("graph")
    head = proto.SerializeToString()
    graph_length = len(graph) + sum(_field_length(len(header) + _raw_length(data)) for header, data in parts)
    if len(head) + _field_length(graph_length) > PROTOBUF_LIMIT:
        raise NormfoldError(
            f"{target}: the model would be over 2 GiB, protobuf's limit for a model inside one file; "
            "write it with its weights in a data file (a model read with external data is written so)"
        )
    with open(target, "wb", buffering=0) as out:
        _write_all(out, head + wire.key(_MODEL_GRAPH, wire.LENGTH_DELIMITED) + wire.encode_varint(graph_length) + graph)
        for header, data in parts:
            length = len(header) + _raw_length(data)
            _write_all(out, wire.key(_GRAPH_INITIALIZER, wire.LENGTH_DELIMITED) + wire.encode_varint(length) + header)
            if data is not None:
                source, offset, count = data
                _write_all(out, wire.key(_TENSOR_RAW_DATA, wire.LENGTH_DELIMITED) + wire.encode_varint(count))
                _copy_range(source, offset, count, out)


_Data = tuple[Path, int, int] | None


def _initializer_part(tensor: onnx.TensorProto, owner: Path) -> tuple[bytes, _Data]:
    """An initializer's bytes without its data, and where its data lies (None: the bytes are the whole tensor)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return tensor.SerializeToString(), None
    location, offset, length = external_data_entries(tensor, owner)
    source = owner.parent / location
    count = length if length is not None else source.stat().st_size - offset
    tensor.ClearField("data_location")
    del tensor.external_data[:]
    return tensor.SerializeToString(), (source, offset, count)


def _raw_length(data: _Data) -> int:
    """Bytes of the raw_data field that carries `data` (none without data)."""
    return 0 if data is None else _field_length(data[2])


def _field_length(value_length: int) -> int:
    """Bytes of a length-delimited field of a one-byte key whose value has `value_length` bytes."""
    return 1 + len(wire.encode_varint(value_length)) + value_length


def _write_all(out: io.FileIO, data: bytes) -> None:
    """Write every byte (an unbuffered file may take fewer per call)."""
    view = memoryview(data)
    while view:
        written = out.write(view)
        view = view[written:]


def _copy_range(source: Path, offset: int, count: int, out: io.FileIO) -> None:
    """Append `count` bytes of `source` from `offset` to `out`: copied by the kernel (copy_file_range) where it
    can, through a COPY_CHUNK buffer otherwise."""
    target = out.fileno()
    with open(source, "rb", buffering=0) as file:
        copied = 0
        if hasattr(os, "copy_file_range"):
            try:
                while copied < count:
                    step = os.copy_file_range(file.fileno(), target, count - copied, offset + copied)
                    if step == 0:
                        break
                    copied += step
            except OSError:  # not supported between these files: copy through memory from where it stopped
                pass
        file.seek(offset + copied)
        while copied < count:
            chunk = file.read(min(COPY_CHUNK, count - copied))
            if not chunk:
                raise NormfoldError(f"{source}: data file ended before its tensor's data")
            _write_all(out, chunk)
            copied += len(chunk)
