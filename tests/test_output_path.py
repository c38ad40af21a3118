"""`normfold.output_paths.check_output_path`: each refusal with its exact message (a usage error, exit 2), and each
accepted output with the input files it returns (the model and its external data, resolved)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from graphs import bn_node, bn_params, make_model, rng

from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.model_reading import load_model
from normfold.output_paths import check_output_path


@dataclasses.dataclass(frozen=True)
class Inputs:
    """A folder holding `m.onnx` (tensors inline) and `e.onnx` (tensors in `e.onnx.data`), both loaded."""

    folder: Path
    plain: Path
    external: Path
    models: dict[Path, ir.Model]

    @property
    def data(self) -> Path:
        """The external data file of `e.onnx`."""
        return self.folder / "e.onnx.data"

    @property
    def limit(self) -> int:
        """The longest file name the folder's file system accepts, in bytes."""
        return os.pathconf(self.folder, "PC_NAME_MAX")


@pytest.fixture()
def inputs(tmp_path: Path) -> Inputs:
    """The two input models in tmp_path, with a sub-folder `sub` beside them."""
    generator = rng(0)
    model = make_model([bn_node("x", "y", "bn")], {"x": [1, 2, 3, 3]}, ["y"], bn_params("bn", 2, generator))
    plain, external = tmp_path / "m.onnx", tmp_path / "e.onnx"
    onnx.save(model, str(plain))
    onnx.save_model(
        model,
        str(external),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="e.onnx.data",
        size_threshold=0,
    )
    (tmp_path / "sub").mkdir()
    return Inputs(tmp_path, plain, external, {plain: load_model(plain), external: load_model(external)})


def _fifo(inputs: Inputs, name: str) -> Path:
    """A named pipe `name` in the folder."""
    path = inputs.folder / name
    os.mkfifo(path)
    return path


def _folder(inputs: Inputs, name: str) -> Path:
    """A sub-folder `name` of the folder."""
    path = inputs.folder / name
    path.mkdir()
    return path


def _link(inputs: Inputs, name: str, to: str) -> Path:
    """A symlink `name` in the folder pointing at `to` (relative)."""
    path = inputs.folder / name
    path.symlink_to(to)
    return path


def _existing(inputs: Inputs, name: str) -> Path:
    """A regular file `name` in the folder, written with a few bytes."""
    path = inputs.folder / name
    path.write_bytes(b"old")
    return path


Target = Callable[[Inputs], Path]
Message = Callable[[Inputs, Path], str]


def _text(suffix: str, implied: str) -> Message:
    """The refusal of a name onnx would read as a text format."""
    return lambda i, t: (
        f"{t}: onnx reads a '{suffix}' file as {implied}, but normfold writes binary ONNX; name the output .onnx"
    )


def _too_long(length: Callable[[int], int]) -> Message:
    """The refusal of a name of `length(limit)` bytes, over the file system's limit."""
    return lambda i, t: (
        f"{t}: the file name is {length(i.limit)} bytes, over this file system's limit of "
        f"{i.limit}; choose a shorter one with -o"
    )


def _fixed(tail: str) -> Message:
    """The refusal `TARGET: tail`."""
    return lambda i, t: f"{t}: {tail}"


NOT_A_FILE = _fixed("not a file path (it names a folder)")
NOT_REGULAR = _fixed("exists and is not a regular file; refusing to replace it")
THE_INPUT = _fixed("refusing to overwrite the input; use --in-place")
ITS_DATA = _fixed("refusing to overwrite an external data file of the input")

REFUSALS = [
    pytest.param(
        lambda i: i.folder / ("n" * i.limit + ".onnx"), "plain", False, _too_long(lambda n: n + 5), id="name-too-long"
    ),
    pytest.param(
        lambda i: i.folder / ("é" * (i.limit // 2 + 1) + ".onnx"),
        "plain",
        False,
        _too_long(lambda n: 2 * (n // 2 + 1) + 5),
        id="name-too-long-in-bytes-not-characters",
    ),
    pytest.param(lambda i: i.folder / "sub", "plain", False, NOT_A_FILE, id="existing-folder"),
    pytest.param(lambda i: _folder(i, "dir.onnx"), "plain", False, NOT_A_FILE, id="folder-named-like-a-model"),
    pytest.param(lambda i: _link(i, "to_sub.onnx", "sub"), "plain", False, NOT_A_FILE, id="symlink-to-a-folder"),
    pytest.param(lambda i: Path("/"), "plain", False, NOT_A_FILE, id="root"),
    pytest.param(lambda i: Path("."), "plain", False, NOT_A_FILE, id="dot"),
    pytest.param(lambda i: i.folder / "out.json", "plain", False, _text(".json", "json"), id="json"),
    pytest.param(
        lambda i: i.folder / "out.textproto", "plain", False, _text(".textproto", "textproto"), id="textproto"
    ),
    pytest.param(lambda i: i.folder / "out.pbtxt", "plain", False, _text(".pbtxt", "textproto"), id="pbtxt"),
    pytest.param(lambda i: i.folder / "out.onnxtxt", "plain", False, _text(".onnxtxt", "onnxtxt"), id="onnxtxt"),
    pytest.param(lambda i: _folder(i, "d.json"), "plain", False, NOT_A_FILE, id="folder-checked-before-text-suffix"),
    pytest.param(
        lambda i: _fifo(i, "p.json"), "plain", False, _text(".json", "json"), id="text-suffix-checked-before-file-kind"
    ),
    pytest.param(lambda i: _fifo(i, "pipe.onnx"), "plain", False, NOT_REGULAR, id="named-pipe"),
    pytest.param(lambda i: Path("/dev/null"), "plain", False, NOT_REGULAR, id="device"),
    pytest.param(lambda i: i.plain, "plain", False, THE_INPUT, id="the-input"),
    pytest.param(
        lambda i: i.folder / "sub" / ".." / "m.onnx", "plain", False, THE_INPUT, id="the-input-spelled-otherwise"
    ),
    pytest.param(lambda i: _link(i, "alias.onnx", "m.onnx"), "plain", False, THE_INPUT, id="symlink-to-the-input"),
    pytest.param(lambda i: i.external, "external", False, THE_INPUT, id="the-input-with-external-data"),
    pytest.param(lambda i: i.data, "external", False, ITS_DATA, id="the-inputs-data-file"),
    pytest.param(lambda i: i.data, "external", True, ITS_DATA, id="the-inputs-data-file-even-in-place"),
]


def _source(inputs: Inputs, which: str) -> Path:
    """The plain or the external-data input."""
    return inputs.plain if which == "plain" else inputs.external


@pytest.mark.parametrize("target, which, in_place, message", REFUSALS)
def test_refused_output(inputs: Inputs, target: Target, which: str, in_place: bool, message: Message) -> None:
    """An output that is no file path, a text format, not a regular file, or the input's: this usage error."""
    path, source = target(inputs), _source(inputs, which)
    with pytest.raises(NormfoldError) as caught:
        check_output_path(path, source, inputs.models[source], in_place=in_place)
    assert caught.value.exit_code == EXIT_USAGE
    assert str(caught.value) == message(inputs, path)


ACCEPTED = [
    pytest.param(lambda i: i.folder / "out.onnx", "plain", False, ["m.onnx"], id="new-file"),
    pytest.param(lambda i: _existing(i, "old.onnx"), "plain", False, ["m.onnx"], id="existing-file-replaced"),
    pytest.param(
        lambda i: i.folder / ("n" * (i.limit - 5) + ".onnx"), "plain", False, ["m.onnx"], id="name-at-the-limit"
    ),
    pytest.param(lambda i: i.folder / "out", "plain", False, ["m.onnx"], id="no-suffix"),
    pytest.param(lambda i: i.folder / "out.pb", "plain", False, ["m.onnx"], id="pb-is-binary"),
    pytest.param(lambda i: i.folder / "out.JSON", "plain", False, ["m.onnx"], id="upper-case-suffix-is-binary"),
    pytest.param(lambda i: i.folder / "out.onnx.data", "plain", False, ["m.onnx"], id="data-suffix"),
    pytest.param(
        lambda i: _link(i, "dangling.onnx", "missing.onnx"), "plain", False, ["m.onnx"], id="dangling-symlink"
    ),
    pytest.param(
        lambda i: i.folder / "nowhere" / "out.onnx", "plain", False, ["m.onnx"], id="missing-folder-left-to-the-write"
    ),
    pytest.param(lambda i: i.plain, "plain", True, ["m.onnx"], id="in-place"),
    pytest.param(
        lambda i: i.folder / "out.onnx", "external", False, ["e.onnx", "e.onnx.data"], id="input-with-external-data"
    ),
    pytest.param(lambda i: i.external, "external", True, ["e.onnx", "e.onnx.data"], id="in-place-with-external-data"),
    pytest.param(
        lambda i: i.folder / "sub" / "e.onnx.data",
        "external",
        False,
        ["e.onnx", "e.onnx.data"],
        id="data-file-name-in-another-folder",
    ),
]


@pytest.mark.parametrize("target, which, in_place, files", ACCEPTED)
def test_accepted_output(inputs: Inputs, target: Target, which: str, in_place: bool, files: list[str]) -> None:
    """An accepted output returns the input's files (resolved), which the write must not replace."""
    source = _source(inputs, which)
    returned = check_output_path(target(inputs), source, inputs.models[source], in_place=in_place)
    assert returned == {(inputs.folder / name).resolve() for name in files}
