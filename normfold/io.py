"""Loading models safely (memory-mapped, external data checked) and writing them atomically."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx_ir import external_data as ir_external_data
from onnx_ir import serde

from normfold.errors import EXIT_USAGE, NormfoldError, describe
from normfold.graph_walk import iter_scopes


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
        self._logger, self._records = logging.getLogger(name), []

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
    for tensor in _proto_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            check_external_tensor(tensor, path)
        elif tensor.HasField("raw_data"):
            expected = _stored_bytes(tensor)
            if expected and len(tensor.raw_data) != expected:
                raise NormfoldError(
                    f"{path}: tensor '{tensor.name}' holds {len(tensor.raw_data)} bytes but its shape "
                    f"{list(tensor.dims)} needs {expected}"
                )


def _proto_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
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
        raise NormfoldError(f"{owner}: tensor '{tensor.name}' has no usable external data location "
                            f"({location!r})")
    numbers = {}
    for key in ("offset", "length"):
        value = entries.get(key, "")
        if value and not (value.isascii() and value.isdigit()):
            raise NormfoldError(f"{owner}: tensor '{tensor.name}' has external data {key} '{value}', "
                                "not a non-negative integer")
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
    needed = _stored_bytes(tensor)
    if length is not None and needed and length != needed:
        raise NormfoldError(f"{owner}: tensor '{tensor.name}' has external data length {length} but its shape "
                            f"{list(tensor.dims)} needs {needed} bytes")
    if offset + (needed if length is None else length) > literal.stat().st_size:
        raise NormfoldError(
            f"{owner}: external data file '{location}' is too short for tensor '{tensor.name}'"
        )


_UNSIZED = {"STRING", "INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2"}


@functools.cache
def _itemsize(data_type: int) -> int:
    """Bytes per element of an ONNX dtype (0 for strings, packed sub-byte and unknown types)."""
    try:
        if onnx.TensorProto.DataType.Name(data_type) in _UNSIZED:
            return 0
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 0


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes a tensor's raw data takes, from its dims and dtype (0 for strings and packed sub-byte types)."""
    itemsize = _itemsize(tensor.data_type)
    if not itemsize:
        return 0
    count = 1
    for dim in tensor.dims:
        count *= dim
    return itemsize * count


def external_tensors(model: ir.Model) -> Iterator[ir.ExternalTensor]:
    """Every tensor of the model stored outside the .onnx file: initializers of every graph, attribute tensors."""
    for scope in iter_scopes(model):
        if isinstance(scope.body, ir.Graph):
            for value in scope.body.initializers.values():
                if isinstance(value.const_value, ir.ExternalTensor):
                    yield value.const_value
        for node in scope.body:
            for attr in node.attributes.values() if node.attributes else ():
                if not attr.is_ref() and attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                    yield attr.value


def has_external_data(model: ir.Model) -> bool:
    """Whether any tensor of the model is stored outside the .onnx file."""
    return next(external_tensors(model), None) is not None


def model_files(path: Path, model: ir.Model) -> set[Path]:
    """The model file and every external data file it reads, resolved."""
    files = {path.resolve()}
    files.update((Path(t.base_dir) / t.location).resolve() for t in external_tensors(model))
    return files


def check_output_path(target: Path, source: Path, model: ir.Model, *, in_place: bool = False) -> set[Path]:
    """Refuse (usage error) an output that is not a plain file path, or that would overwrite the input's files.

    Returns the input's files (the model and its external data files), which the write must not replace.
    """
    require_name_fits(target)
    if not target.name or str(target).endswith(os.sep) or is_folder(target):
        raise NormfoldError(f"{target}: not a file path (it names a folder)", exit_code=EXIT_USAGE)
    _check_binary_name(target)
    if target.exists() and not target.is_file():
        raise NormfoldError(f"{target}: exists and is not a regular file; refusing to replace it", exit_code=EXIT_USAGE)
    inputs = model_files(source, model)
    if target.resolve() in inputs - ({source.resolve()} if in_place else set()):
        what = "the input" if target.resolve() == source.resolve() else "an external data file of the input"
        hint = "; use --in-place" if what == "the input" else ""
        raise NormfoldError(f"{target}: refusing to overwrite {what}{hint}", exit_code=EXIT_USAGE)
    return inputs


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    verify: Callable[[Path], None] | None = None,
    replaced_files: Iterable[Path] = (),
    protected: Iterable[Path] = (),
    check: bool = True,
) -> None:
    """Write the model atomically: into a temporary folder beside the target, checked, then renamed.

    With `external_data` (default: when the model has external tensors), tensors go to a data file beside
    the model: `<name>.data`, or `<name>.1.data`, ... when that name is taken (by the input, by the model
    being replaced, by anything), claimed exclusively just before the renames. The data file is renamed
    into place first and the model last, so a crash between them, or another process writing the same
    output, never pairs a model with data it was not written with. The output is verified with
    `onnx.checker.check_model(full_check=True)`, then by `verify(staged_path)` (which raises to refuse
    it), before it replaces anything. Once the model is in place, the data files of the model it
    replaced, and `replaced_files` (an in-place input's), are deleted unless another model in that folder
    reads them; files in `protected` (the input's) are never deleted unless listed in `replaced_files`.
    `check=False` skips onnx's full check, for temporary files normfold derived from a checked model.
    """
    path = Path(path)
    folder = path.parent
    if not is_folder(folder):
        raise NormfoldError(f"{path}: output folder '{folder}' does not exist")
    _check_binary_name(path)
    if external_data is None:
        external_data = has_external_data(model)
    staged_data = _data_base_name(path) + ".data" if external_data else None
    _materialize_attribute_tensors(model)
    try:
        # the staging folder's name stays short whatever the output's: the output's own name must fit inside it
        with tempfile.TemporaryDirectory(dir=folder, prefix=f".{path.name[:32]}.", suffix=".tmp") as staging:
            staged = Path(staging) / path.name
            _write_checked(model, staged, staged_data, path, check)
            if verify is not None:
                verify(staged)
            os.chmod(staged, 0o666 & ~_umask())
            replaced = _data_files_read_by(path)
            kept = {path.resolve()}
            if staged_data is not None:
                kept.add(_move_data_file(staged, staged_data, path).resolve())
            os.replace(staged, path)
    except OSError as error:
        raise NormfoldError(f"cannot write {path}: {error.strerror or error}") from None
    doomed = (replaced - {Path(p).resolve() for p in protected}) | {Path(p).resolve() for p in replaced_files}
    doomed -= kept
    if doomed:  # only then are the folder's other models read
        for old in doomed - _data_files_read_by_others(folder, path):
            old.unlink(missing_ok=True)


def _data_base_name(path: Path) -> str:
    """The stem of the output's data file names: the output's name, or its hash when a suffix would not fit."""
    if len(os.fsencode(path.name)) + 16 <= name_limit(path.parent):
        return path.name
    return hashlib.sha256(os.fsencode(path.name)).hexdigest()


def _claim_data_file(path: Path) -> Path:
    """Create, exclusively, the first free name of `<base>.data`, `<base>.1.data`, ...: a name no existing file
    (the input's data, the replaced model's data, another writer's) has."""
    base, counter = _data_base_name(path), 0
    while True:
        candidate = path.parent / (f"{base}.data" if counter == 0 else f"{base}.{counter}.data")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return candidate
        except FileExistsError:
            counter += 1


def _move_data_file(staged: Path, staged_data: str, path: Path) -> Path:
    """Move the staged data file to a freshly claimed name beside `path` (the staged model follows it)."""
    claimed = _claim_data_file(path)
    try:
        if claimed.name != staged_data:
            _rename_data_file(staged, staged_data, claimed.name)
        os.chmod(staged.parent / claimed.name, 0o666 & ~_umask())
        os.replace(staged.parent / claimed.name, claimed)
    except BaseException:
        claimed.unlink(missing_ok=True)
        raise
    return claimed


def _rename_data_file(staged: Path, old: str, new: str) -> None:
    """Point the staged model's external tensors at the data file's final name (only the small .onnx changes)."""
    proto = onnx.load(str(staged), load_external_data=False)
    for tensor in _proto_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(proto, str(staged))
    os.replace(staged.parent / old, staged.parent / new)


# Models at most this big are read to learn which data files they use; an .onnx with its weights outside
# is small, and one with weights inside has no data files to protect.
_SCAN_BYTES = 64 << 20


def _data_files_read_by(model_path: Path) -> set[Path]:
    """The external data files an existing model file reads (resolved); empty when it is not one."""
    try:
        if not model_path.is_file() or model_path.stat().st_size > _SCAN_BYTES:
            return set()
        proto = onnx.load(str(model_path), load_external_data=False)
    except (OSError, DecodeError, ValueError):  # not an ONNX file: it reads no data files
        return set()
    files = set()
    for tensor in _proto_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            try:
                files.add((model_path.parent / external_data_entries(tensor, model_path)[0]).resolve())
            except NormfoldError:  # a malformed entry names no file that could be shared
                continue
    return files


def _data_files_read_by_others(folder: Path, written: Path) -> set[Path]:
    """The data files that the other models (*.onnx) in `folder` read."""
    others = [p for p in folder.glob("*.onnx") if p.resolve() != written.resolve()]
    return set().union(*(_data_files_read_by(other) for other in others))


def _write_checked(model: ir.Model, staged: Path, data_name: str | None, path: Path, check: bool = True) -> None:
    """Serialize the model to `staged` and run onnx's full check on it.

    Without external data the checker reads the serialized bytes in a second thread while they
    are written (it releases the GIL); with external data (written now or referenced) it reads the
    staged files afterwards.
    """
    if data_name is not None or has_external_data(model):
        _serialize(lambda: ir.save(model, staged, external_data=data_name), path)
        if check:
            _full_check(str(staged), path)  # by path: the checker also finds the external data files
        return
    data = _serialize(lambda: serde.serialize_model(model).SerializeToString(), path)
    if not check:
        staged.write_bytes(data)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        checked = pool.submit(_full_check, data, path)
        staged.write_bytes(data)
        checked.result()


def _serialize(write: Callable[[], Any], path: Path) -> Any:
    """Run a serialization; a model that cannot be serialized (e.g. a corrupt string in the input) is a user error."""
    try:
        return write()
    except ir.serde.SerdeError as error:
        cause: BaseException = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise NormfoldError(f"{path}: the model cannot be written: {describe(cause)}") from None


def _full_check(model: str | bytes, path: Path) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise NormfoldError(
            f"{path}: the result fails onnx's full model check (shape inference), so nothing was written: "
            f"{describe(error)}"
        ) from None


def _materialize_attribute_tensors(model: ir.Model) -> None:
    """Attribute tensors stored externally are read into memory: they are written inline, beside the model."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for name, attr in list(node.attributes.items()):
            if not attr.is_ref() and attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                node.attributes[name] = ir.AttrTensor(name, ir.tensor(attr.value.numpy(), name=attr.value.name))


def _check_binary_name(path: Path) -> None:
    """normfold writes binary ONNX; a name onnx.load would read as another format (.json, .textproto) is refused."""
    implied = onnx.serialization.registry.get_format_from_file_extension(path.suffix)
    if implied not in (None, "protobuf"):
        raise NormfoldError(f"{path}: onnx reads a '{path.suffix}' file as {implied}, but normfold writes binary ONNX; "
                            "name the output .onnx", exit_code=EXIT_USAGE)


def require_name_fits(target: Path) -> None:
    """Refuse (usage error) an output whose file name is longer than its file system accepts."""
    length, limit = len(os.fsencode(target.name)), name_limit(target.parent)
    if length > limit:
        raise NormfoldError(f"{target}: the file name is {length} bytes, over this file system's limit of {limit}; "
                            "choose a shorter one with -o", exit_code=EXIT_USAGE)


def is_folder(path: Path) -> bool:
    """The path names a folder; False also when it cannot be looked at (a name too long, a loop of links), so
    that the error comes from the one place that opens it."""
    try:
        return path.is_dir()
    except OSError:
        return False


def name_limit(folder: Path) -> int:
    """The longest file name, in bytes, the file system holding `folder` accepts (255 where it cannot say)."""
    try:
        return os.pathconf(folder if str(folder) else ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


