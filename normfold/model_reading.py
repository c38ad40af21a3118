"""Reading a model file once, safely: a regular file, parsed and checked, its tensors' data checked before any
read, external data memory-mapped."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir import external_data as ir_external_data
from onnx_ir import serde

from normfold.errors import NormfoldError, describe
from normfold.external_data import check_external_tensor, external_data_entries, proto_tensors, stored_bytes
from normfold.inline_mapping import as_inline_mapped, read_mapped_proto
from normfold.mapped_pages import keep_large_blocks_mapped, return_freed_heap


def read_model_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The checked ModelProto of an ONNX file, external data not loaded; any problem is a NormfoldError."""
    proto, mapped = _parse(Path(path))
    _run_checker(_without_mapped_data(proto) if mapped else Path(path), Path(path))
    return proto


@dataclasses.dataclass
class LoadedModel:
    """A model file read and checked once: its path (ONNX Runtime reads the file), the onnx_ir model, and the
    ModelProto it was parsed from (external data not loaded; None for a model built in memory).

    The proto stays as it was read while passes rewrite `model` in place, so it is the input as it was.
    """

    path: Path
    model: ir.Model
    proto: onnx.ModelProto | None = None

    def full_proto(self) -> onnx.ModelProto:
        """The ModelProto with every tensor's data in memory (for onnx's reference evaluator and converters).

        A model without its parsed proto is serialized, unless it has memory-mapped tensors: serializing would
        leave them as references to files relative to where they were read, so it is read from its file
        (written from it).
        """
        if self.proto is None:
            if self.path.is_file() and any(
                isinstance(value.const_value, ir.ExternalTensor)
                for graph in self.model.graphs()
                for value in graph.initializers.values()
            ):
                return onnx.load(str(self.path))
            return serde.serialize_model(self.model)
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        onnx.external_data_helper.load_external_data_for_model(proto, str(self.path.parent))
        return proto


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Read an ONNX file into onnx_ir, external data memory-mapped; any problem is a NormfoldError."""
    return load_model_file(path).model


# Model files at least this large are read by onnx's checker before they are parsed, not while: the
# checker holds the file's bytes and its own parse (2x the file), which beside Python's (the bytes and
# the ModelProto, 2x again) would double the peak of reading a model whose weights are inside the file.
CONCURRENT_CHECK_BYTES = 64 << 20
# With keep_proto=False, tensors are detached from the parsed proto only when it holds at least this many
# bytes: below, the memory kept until exit is small, and copying thousands of small tensors one by one costs
# more than the fold (stack5000, 25 000 tensors in 9 MB: a second of a 3.4 s read).
DETACH_BYTES = 64 << 20


def load_model_file(path: str | os.PathLike[str], *, keep_proto: bool = True) -> LoadedModel:
    """Read and check an ONNX file once: onnx_ir model (external data memory-mapped) and the parsed proto.

    onnx's checker (C++, it releases the GIL) reads the file in a second thread while the file is
    parsed, its tensors checked and the proto deserialized; a file of CONCURRENT_CHECK_BYTES or more is
    checked first, alone. A large file with its weights inside is not parsed whole: its large initializers
    are memory-mapped where they lie in it (`inline_mapping`) and the checker reads the rest. Errors keep their order either way: an unreadable file or escaping external
    data first, then an invalid model, then what onnx_ir cannot read.

    `keep_proto=False` (a caller that never needs the input as it was, e.g. a fold without validation)
    returns no proto and, when the parsed proto holds DETACH_BYTES or more, gives each tensor read from the
    file its own TensorProto, so the parsed ModelProto is freed now and each weight's data as soon as a pass
    replaces it, instead of the whole file's data staying in memory until exit.
    """
    path = Path(path)
    require_regular_file(path)  # before the checker's thread opens it: a FIFO would block that thread for ever
    keep_large_blocks_mapped()
    alone = path.stat().st_size >= CONCURRENT_CHECK_BYTES
    with ThreadPoolExecutor(max_workers=1) as pool, _HeldLogs("onnx_ir") as held:
        mapped = read_mapped_proto(path)
        if mapped is not None:  # the checker reads the parsed model without its weights, not the file
            proto = _checked_tensors(mapped[0], path, mapped[1])
            checked = _run_now(_run_checker, _without_mapped_data(proto), path)
        else:
            checked = _run_now(_run_checker, path, path) if alone else pool.submit(_run_checker, path, path)
            proto = _parse(path, map_inline=False)[0]
        try:
            model = serde.deserialize_model(proto)
        except Exception as error:  # corrupt fields the checker lets through
            checked.result()
            raise NormfoldError(f"{path}: the model cannot be read: {describe(error)}") from None
        checked.result()
        held.pass_on()
    ir_external_data.set_base_dir(model.graph, str(path.parent))
    if mapped is not None:
        as_inline_mapped(model, mapped[1])
    if keep_proto:
        return LoadedModel(path, model, proto)
    parsed_bytes = proto.ByteSize() if mapped is not None else path.stat().st_size
    del proto
    if parsed_bytes >= DETACH_BYTES:
        _detach_tensors(model)
    if alone:
        return_freed_heap()  # the checker's and the parse's freed blocks of a large file
    return LoadedModel(path, model)


def _run_now(
    function: Callable[[onnx.ModelProto | Path, Path], None], model: onnx.ModelProto | Path, path: Path
) -> Future[None]:
    """Run `function(model, path)` now, its outcome held in a future like the checker's thread's: its error is
    raised where the concurrent check's would be, after the file's own errors."""
    future: Future[None] = Future()
    try:
        function(model, path)
        future.set_result(None)
    except NormfoldError as error:
        future.set_exception(error)
    return future


def _detach_tensors(model: ir.Model) -> None:
    """Give every tensor parsed from the file (initializers and attribute tensors of every graph and function) a
    TensorProto of its own.

    Tensors parsed by protobuf share the ModelProto's memory, freed only when no tensor of it is left, so
    the whole file's data stays while any tensor of it is in the model. A copy of each makes that memory
    the tensor's own: freed when a pass replaces the tensor. Data outside the file is not copied.
    """
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, serde.TensorProtoTensor):
                value.const_value = _own_copy(value.const_value)
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    for node in (node for graph in graphs for node in ir.traversal.RecursiveGraphIterator(graph)):
        for name, attr in list(node.attributes.items()):
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, serde.TensorProtoTensor):
                node.attributes[name] = ir.AttrTensor(name, _own_copy(attr.value), doc_string=attr.doc_string)
            elif attr.type == ir.AttributeType.TENSORS and any(
                isinstance(tensor, serde.TensorProtoTensor) for tensor in attr.value
            ):
                copies = [_own_copy(t) if isinstance(t, serde.TensorProtoTensor) else t for t in attr.value]
                node.attributes[name] = ir.AttrTensors(name, copies, doc_string=attr.doc_string)


def _own_copy(tensor: serde.TensorProtoTensor) -> serde.TensorProtoTensor:
    """The same tensor read from a TensorProto of its own (its metadata carried over)."""
    proto = onnx.TensorProto()
    proto.CopyFrom(tensor.raw)
    copy = serde.TensorProtoTensor(proto)
    copy.metadata_props.update(tensor.metadata_props)
    copy.meta.update(tensor.meta)
    return copy


class _HeldLogs(logging.Handler):
    """Hold a logger's records while onnx_ir reads a model the checker has not yet passed.

    Its warnings about an invalid model would otherwise reach stderr before normfold's one-line error;
    `pass_on()` hands them on once the model is known to be valid; otherwise they are dropped.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self._logger = logging.getLogger(name)
        self._records: list[logging.LogRecord] = []

    def __enter__(self) -> _HeldLogs:
        self._propagate, self._logger.propagate = self._logger.propagate, False
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)

    def pass_on(self) -> None:
        """Stop holding and hand every held record to the logger's own handlers and ancestors."""
        self.__exit__()
        for record in self._records:
            self._logger.handle(record)
        self._records.clear()


def _parse(path: Path, *, map_inline: bool = True) -> tuple[onnx.ModelProto, bool]:
    """The file's ModelProto, external data not loaded, its tensors' sizes and locations checked, and whether its
    large inline weights were left in the file (`inline_mapping`; `map_inline=False`: parsed whole)."""
    require_regular_file(path)
    if path.stat().st_size == 0:
        raise NormfoldError(f"{path}: empty file, not an ONNX model")
    mapped = read_mapped_proto(path) if map_inline else None
    if mapped is not None:
        return _checked_tensors(mapped[0], path, mapped[1]), True
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises several unrelated types for bad bytes
        raise NormfoldError(f"{path}: not a readable ONNX model ({describe(error)})") from None
    return _checked_tensors(proto, path, []), False


def _checked_tensors(proto: onnx.ModelProto, path: Path, mapped: list[onnx.TensorProto]) -> onnx.ModelProto:
    """The parsed model, refused when it has no graph or when a tensor's data does not fit its shape; `mapped` are
    the tensors whose raw data was left in the file (their length is their raw data's)."""
    if not proto.graph.node and not proto.graph.output:
        raise NormfoldError(f"{path}: not an ONNX model (no graph)")
    for tensor in mapped:
        _check_inline_length(tensor, external_data_entries(tensor, path)[2] or 0, path)
    _check_tensors(proto, path)
    return proto


def require_regular_file(path: Path) -> None:
    """Refuse a path that is missing or not a regular file (a FIFO, a device, a folder) before anything opens it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NormfoldError(f"{path}: no such file") from None
    except OSError as error:  # a name over the file system's limit, a loop of links, no permission
        raise NormfoldError(f"{path}: cannot read ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise NormfoldError(f"{path}: not a regular file")


def _without_mapped_data(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a model read by `inline_mapping` for onnx's checker: each tensor whose data was left in the file
    is made an empty tensor of its type (given its data, the checker would look for the file from the working
    folder, or read it whole); normfold has checked that data's length and place against the real shape."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for tensor in copy.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.ClearField("dims")
            tensor.dims.append(0)
    return copy


def _run_checker(model: onnx.ModelProto | Path, path: Path) -> None:
    """onnx's checker on the file at `path`, or on `model` parsed from it (then it does not read the file)."""
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model))
    except Exception as error:  # the checker also fails with UnicodeDecodeError on corrupt names
        raise NormfoldError(f"{path}: invalid ONNX model: {describe(error)}") from None


def _check_tensors(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse, before reading any of it, tensor data that is missing, too short or outside the model's folder.

    Inline tensors must hold exactly the bytes their shape needs (onnx's checker does not look);
    external ones must stay inside the model's folder and fit in their file.
    """
    for tensor in proto_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            check_external_tensor(tensor, path)
        elif tensor.HasField("raw_data"):
            _check_inline_length(tensor, len(tensor.raw_data), path)


def _check_inline_length(tensor: onnx.TensorProto, length: int, path: Path) -> None:
    """Refuse raw data of `length` bytes that is not what the tensor's shape needs."""
    expected = stored_bytes(tensor)
    if expected and length != expected:
        raise NormfoldError(
            f"{path}: tensor '{tensor.name}' holds {length} bytes but its shape {list(tensor.dims)} needs {expected}"
        )
