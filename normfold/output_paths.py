"""Which paths normfold may write a model to: a file (not a folder) with a name its file system and onnx accept,
never one of the input's own files."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir

from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.external_data import model_files


def check_output_path(target: Path, source: Path, model: ir.Model, *, in_place: bool = False) -> set[Path]:
    """Refuse (usage error) an output that is not a plain file path, or that would overwrite the input's files.

    Returns the input's files (the model and its external data files), which the write must not replace.
    """
    require_name_fits(target)
    if not target.name or str(target).endswith(os.sep) or is_folder(target):
        raise NormfoldError(f"{target}: not a file path (it names a folder)", exit_code=EXIT_USAGE)
    require_binary_name(target)
    if target.exists() and not target.is_file():
        raise NormfoldError(f"{target}: exists and is not a regular file; refusing to replace it", exit_code=EXIT_USAGE)
    inputs = model_files(source, model)
    if target.resolve() in inputs - ({source.resolve()} if in_place else set()):
        what = "the input" if target.resolve() == source.resolve() else "an external data file of the input"
        hint = "; use --in-place" if what == "the input" else ""
        raise NormfoldError(f"{target}: refusing to overwrite {what}{hint}", exit_code=EXIT_USAGE)
    return inputs


def require_binary_name(path: Path) -> None:
    """normfold writes binary ONNX; a name onnx.load would read as another format (.json, .textproto) is refused."""
    implied = onnx.serialization.registry.get_format_from_file_extension(path.suffix)
    if implied not in (None, "protobuf"):
        raise NormfoldError(
            f"{path}: onnx reads a '{path.suffix}' file as {implied}, but normfold writes binary ONNX; "
            "name the output .onnx",
            exit_code=EXIT_USAGE,
        )


def require_name_fits(target: Path) -> None:
    """Refuse (usage error) an output whose file name is longer than its file system accepts."""
    length, limit = len(os.fsencode(target.name)), name_limit(target.parent)
    if length > limit:
        raise NormfoldError(
            f"{target}: the file name is {length} bytes, over this file system's limit of {limit}; "
            "choose a shorter one with -o",
            exit_code=EXIT_USAGE,
        )


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
