"""Writing a model atomically: staged beside the target, checked, then renamed into place, its data file first
under a freshly claimed name, the data files it replaces deleted only when no other model reads them."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from onnx_ir import serde

from normfold.errors import NormfoldError, describe
from normfold.external_data import data_files_read_by, data_files_read_by_others, has_external_data, proto_tensors
from normfold.inline_streaming import needs_streaming, write_inline
from normfold.model_reading import CONCURRENT_CHECK_BYTES
from normfold.output_paths import is_folder, name_limit, require_binary_name


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
    require_binary_name(path)
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
            replaced = data_files_read_by(path)
            kept = {path.resolve()}
            if staged_data is not None:
                kept.add(_move_data_file(staged, staged_data, path).resolve())
            os.replace(staged, path)
    except OSError as error:
        raise NormfoldError(f"cannot write {path}: {error.strerror or error}") from None
    doomed = (replaced - {Path(p).resolve() for p in protected}) | {Path(p).resolve() for p in replaced_files}
    doomed -= kept
    if doomed:  # only then are the folder's other models read
        for old in doomed - data_files_read_by_others(folder, path):
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
    for tensor in proto_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(proto, str(staged))
    os.replace(staged.parent / old, staged.parent / new)


def _write_checked(model: ir.Model, staged: Path, data_name: str | None, path: Path, check: bool = True) -> None:
    """Serialize the model to `staged` and run onnx's full check on it.

    Without external data the checker reads the serialized bytes in a second thread while they
    are written (it releases the GIL), unless they are CONCURRENT_CHECK_BYTES or more: then it reads
    the staged file once the bytes are written and freed, as it does with external data (written now
    or referenced), so the model's bytes and the checker's copies of them are never in memory together.
    A model with large weights inside (`inline_streaming.needs_streaming`) is written and checked with
    external data, then rewritten as one file: its weights are never serialized in memory.
    """
    if data_name is not None or has_external_data(model):
        _serialize(lambda: ir.save(model, staged, external_data=data_name), path)
        if check:
            _full_check(str(staged), path)  # by path: the checker also finds the external data files
        return
    if needs_streaming(model):  # large: written with external data, checked so, then made one file
        external = staged.with_name(f".external.{staged.name}")
        _serialize(lambda: ir.save(model, external, external_data=f"{external.name}.data"), path)
        if check:
            _full_check(str(external), path)
        write_inline(external, staged)
        external.unlink()
        external.with_name(f"{external.name}.data").unlink(missing_ok=True)
        return
    data = _serialize(lambda: serde.serialize_model(model).SerializeToString(), path)
    if not check or len(data) >= CONCURRENT_CHECK_BYTES:
        staged.write_bytes(data)
        del data
        if check:
            _full_check(str(staged), path)
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
