"""Reading a model file once, safely: a regular file, parsed and checked, its tensors' data checked before any
read, external data memory-mapped."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir import external_data as ir_external_data
from onnx_ir import serde

from normfold.errors import NormfoldError, describe
from normfold.external_data import check_external_tensor, proto_tensors, stored_bytes


def read_model_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The checked ModelProto of an ONNX file, external data not loaded; any problem is a NormfoldError."""
    proto = _parse(Path(path))
    _run_checker(Path(path))
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
        """The ModelProto with every tensor's data in memory (for onnx's reference evaluator and converters)."""
        if self.proto is None:
            return serde.serialize_model(self.model)
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        onnx.external_data_helper.load_external_data_for_model(proto, str(self.path.parent))
        return proto


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Read an ONNX file into onnx_ir, external data memory-mapped; any problem is a NormfoldError."""
    return load_model_file(path).model


def load_model_file(path: str | os.PathLike[str]) -> LoadedModel:
    """Read and check an ONNX file once: onnx_ir model (external data memory-mapped) and the parsed proto.

    onnx's checker (C++, it releases the GIL) reads the file in a second thread while the file is
    parsed, its tensors checked and the proto deserialized. Errors keep their order: an unreadable
    file or escaping external data first, then an invalid model, then what onnx_ir cannot read.
    """
    path = Path(path)
    require_regular_file(path)  # before the checker's thread opens it: a FIFO would block that thread for ever
    with ThreadPoolExecutor(max_workers=1) as pool, _HeldLogs("onnx_ir") as held:
        checked = pool.submit(_run_checker, path)
        proto = _parse(path)
        try:
            model = serde.deserialize_model(proto)
        except Exception as error:  # corrupt fields the checker lets through
            checked.result()
            raise NormfoldError(f"{path}: the model cannot be read: {describe(error)}") from None
        checked.result()
        held.pass_on()
    ir_external_data.set_base_dir(model.graph, str(path.parent))
    return LoadedModel(path, model, proto)


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


def _parse(path: Path) -> onnx.ModelProto:
    """The file's ModelProto, external data not loaded, its tensors' sizes and locations checked."""
    require_regular_file(path)
    if path.stat().st_size == 0:
        raise NormfoldError(f"{path}: empty file, not an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises several unrelated types for bad bytes
        raise NormfoldError(f"{path}: not a readable ONNX model ({describe(error)})") from None
    if not proto.graph.node and not proto.graph.output:
        raise NormfoldError(f"{path}: not an ONNX model (no graph)")
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


def _run_checker(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path))
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
            expected = stored_bytes(tensor)
            if expected and len(tensor.raw_data) != expected:
                raise NormfoldError(
                    f"{path}: tensor '{tensor.name}' holds {len(tensor.raw_data)} bytes but its shape "
                    f"{list(tensor.dims)} needs {expected}"
                )
