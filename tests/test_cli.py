"""The `normfold` command line: reports, output paths, --json, --in-place, and one-line errors on bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from graphs import bn_node, bn_params, rng
from numerics import assert_fold_exact, random_feeds
from onnx import helper, numpy_helper

from normfold.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

RESNET_LINES = [
    "FOLDED   BatchNormalization 'batchnormalization7': into Conv 'conv2' (backward)",
    "FOLDED   BatchNormalization 'batchnormalization15': into Conv 'conv10' (backward)",
    "FOLDED   BatchNormalization 'batchnormalization23': into Conv 'conv18' (backward)",
    "FOLDED   BatchNormalization 'batchnormalization32': into Conv 'conv27' (backward)",
    "FOLDED   BatchNormalization 'batchnormalization40': into Conv 'conv35' (backward)",
    "FOLDED   BatchNormalization 'batchnormalization47': into Conv 'conv42' (backward)",
    "STRIPPED Dropout 'dropout53': removed",
]
RESNET_SUMMARY = "BatchNormalization folded 6/6, Dropout stripped 1/1, nodes 23 -> 16"


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def fold_lines(stdout: str) -> list[str]:
    """The fold report's lines, without the validation lines (tests/validate checks those)."""
    lines = stdout.splitlines()
    validation = [line for line in lines if line.startswith("validate: ")]
    assert validation[-1] in ("validate: PASSED: equivalent",) or validation[-1].startswith("validate: SKIPPED: "), stdout
    return [line for line in lines if not line.startswith("validate: ")]


def invoke(*args: str | os.PathLike[str]) -> Result:
    """Run `normfold ARGS` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="normfold")


def run_script(*args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed `normfold` console script as a real process."""
    script = shutil.which("normfold")
    assert script is not None, "the normfold console script is not installed"
    return subprocess.run([script, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def sha256(path: Path) -> str:
    """Hex digest of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` (relative name -> digest); symlinks by their target text."""
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            files[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            files[name] = sha256(path)
    return files


def temp_leftovers(folder: Path) -> list[Path]:
    """Temporary files an interrupted or failed save might leave behind."""
    return sorted(folder.glob(".*.tmp"))


def op_types(model: onnx.ModelProto) -> list[str]:
    """Op types of the main graph, in order."""
    return [node.op_type for node in model.graph.node]


def data_locations(path: Path) -> set[str]:
    """The external-data `location` of every initializer of the model at `path` (without loading the data)."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        entry.value
        for tensor in model.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }


def set_data_location(source: Path, target: Path, location: str) -> None:
    """Save a copy of the model at `source` whose external tensors all point at `location`."""
    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(target))


def save_external(model: onnx.ModelProto, path: Path, location: str = "w.data") -> None:
    """Save `model` with every tensor in one external data file `location` beside it."""
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=location, size_threshold=0,
    )


def build_model(nodes: Sequence[onnx.NodeProto], initializers: dict[str, np.ndarray], check: bool = True) -> onnx.ModelProto:
    """Opset-17 model: input `x` [1, 3, 8, 8], output `y` [1, 8, 8, 8] (shaped, so the checker accepts it)."""
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8, 8])],
        [numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    return model


def conv_bn_model(mean_channels: int = 8) -> onnx.ModelProto:
    """Conv(3->8) then BN 'bn'; the BN mean has `mean_channels` values (8 is consistent)."""
    generator = rng(0)
    params = bn_params("bn", 8, generator)
    params["bn_mean"] = params["bn_mean"][:mean_channels]
    weight = generator.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("c", "y", "bn"),
    ]
    return build_model(nodes, {"w": weight, **params})


def assert_one_line_error(result: Result, message: str, exit_code: int) -> None:
    """Exit code as given, stderr exactly `normfold: error: MESSAGE`, nothing on stdout, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stderr == f"normfold: error: {message}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output


def assert_equivalent_fold(original_path: Path, folded_path: Path) -> onnx.ModelProto:
    """The folded file is valid, has no BN/Dropout, and computes what the original computes."""
    onnx.checker.check_model(str(folded_path), full_check=True)
    original, folded = onnx.load(str(original_path)), onnx.load(str(folded_path))
    assert not {"BatchNormalization", "Dropout"} & set(op_types(folded))
    assert_fold_exact(original, folded, random_feeds(original))
    return folded


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A private folder holding copies of the example models."""
    for name in ("resnet_block.onnx", "training_export.onnx"):
        shutil.copyfile(MODELS / name, tmp_path / name)
    return tmp_path


# --------------------------------------------------------------------------------------------------
# Folding a good model
# --------------------------------------------------------------------------------------------------


def test_fold_with_output_reports_every_node_and_writes_equivalent_model(workdir: Path) -> None:
    """`fold MODEL -o OUT`: one line per BN/Dropout, the summary, `wrote OUT`, and a valid folded model."""
    source, target = workdir / "resnet_block.onnx", workdir / "out.onnx"
    before = sha256(source)
    result = invoke("fold", source, "-o", target)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert fold_lines(result.stdout) == [*RESNET_LINES, RESNET_SUMMARY, f"wrote {target}"]
    assert sha256(source) == before
    assert_equivalent_fold(source, target)
    assert not (workdir / "resnet_block.folded.onnx").exists()
    assert temp_leftovers(workdir) == []


def test_default_output_is_beside_the_input(workdir: Path) -> None:
    """Without -o the model goes to `NAME.folded.onnx` in the input's folder, not the working directory."""
    source = workdir / "resnet_block.onnx"
    before = sha256(source)
    result = invoke("fold", source)
    expected = workdir / "resnet_block.folded.onnx"
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"wrote {expected}"
    assert sha256(source) == before
    assert_equivalent_fold(source, expected)
    assert sorted(p.name for p in workdir.iterdir()) == ["resnet_block.folded.onnx", "resnet_block.onnx", "training_export.onnx"]


def test_installed_script_with_relative_paths(workdir: Path) -> None:
    """The console script works as a real process, relative to its working directory."""
    source = workdir / "resnet_block.onnx"
    before = sha256(source)
    process = run_script("fold", "resnet_block.onnx", cwd=workdir)
    assert process.returncode == 0, process.stderr
    assert process.stderr == ""
    assert fold_lines(process.stdout) == [*RESNET_LINES, RESNET_SUMMARY, "wrote resnet_block.folded.onnx"]
    assert sha256(source) == before
    assert_equivalent_fold(source, workdir / "resnet_block.folded.onnx")


def test_json_report(workdir: Path) -> None:
    """`--json` prints one JSON document: the report, its counts, every node, input and output paths."""
    source, target = workdir / "resnet_block.onnx", workdir / "out.onnx"
    before = sha256(source)
    result = invoke("fold", source, "-o", target, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert set(report) == {"normfold_report", "version", "summary", "nodes", "input", "output", "validation"}
    assert report["validation"]["normfold_report"] == "validate" and report["validation"]["passed"] is True
    assert report["normfold_report"] == "fold"
    assert report["version"] == 1
    assert report["summary"] == {
        "batchnorm_total": 6, "batchnorm_folded": 6, "dropout_total": 1, "dropout_stripped": 1,
        "switched_to_inference": 0, "nodes_before": 23, "nodes_after": 16,
    }
    bn_pairs = [("batchnormalization7", "conv2"), ("batchnormalization15", "conv10"), ("batchnormalization23", "conv18"),
                ("batchnormalization32", "conv27"), ("batchnormalization40", "conv35"), ("batchnormalization47", "conv42")]
    expected_nodes = [
        {"graph": "main", "node": bn, "op_type": "BatchNormalization", "action": "folded",
         "detail": f"into Conv '{conv}' (backward)", "reason": ""}
        for bn, conv in bn_pairs
    ] + [{"graph": "main", "node": "dropout53", "op_type": "Dropout", "action": "stripped", "detail": "removed",
          "reason": ""}]
    assert report["nodes"] == expected_nodes
    assert report["input"] == str(source)
    assert report["output"] == str(target)
    assert sha256(source) == before
    assert_equivalent_fold(source, target)


def test_training_form_is_reported_as_skipped(workdir: Path) -> None:
    """Training-mode BN and constant-true Dropout are left in place, each with its reason; exit 0."""
    source = workdir / "training_export.onnx"
    before = sha256(source)
    result = invoke("fold", source)
    assert result.exit_code == 0, result.output
    lines = fold_lines(result.stdout)
    assert len(lines) == 4, lines
    bn_line, dropout_line, summary, wrote = lines
    assert bn_line.startswith("SKIPPED  BatchNormalization '")
    assert "training_mode=1" in bn_line
    assert dropout_line.startswith("SKIPPED  Dropout '")
    assert "training_mode is constant true" in dropout_line
    assert summary == ("BatchNormalization folded 0/1, Dropout stripped 0/1, nodes 7 -> 7; 2 node(s) left in "
                       "training mode (add --eval to convert them first)")
    target = workdir / "training_export.folded.onnx"
    assert wrote == f"wrote {target}"
    assert sha256(source) == before
    onnx.checker.check_model(str(target), full_check=True)
    assert op_types(onnx.load(str(target))).count("BatchNormalization") == 1
    assert op_types(onnx.load(str(target))).count("Dropout") == 1


# --------------------------------------------------------------------------------------------------
# Overwriting the input
# --------------------------------------------------------------------------------------------------


def test_in_place_replaces_the_input(workdir: Path) -> None:
    """`--in-place` writes the folded model over MODEL and nothing else."""
    source = workdir / "resnet_block.onnx"
    pristine = workdir / "pristine.onnx"
    shutil.copyfile(source, pristine)
    result = invoke("fold", source, "--in-place")
    assert result.exit_code == 0, result.output
    assert fold_lines(result.stdout) == [*RESNET_LINES, RESNET_SUMMARY, f"wrote {source}"]
    assert sha256(source) != sha256(pristine)
    assert_equivalent_fold(pristine, source)
    assert not (workdir / "resnet_block.folded.onnx").exists()
    assert temp_leftovers(workdir) == []


@pytest.mark.parametrize("spelling", ["same", "dotted"])
def test_output_equal_to_input_needs_in_place(workdir: Path, spelling: str) -> None:
    """`-o MODEL` (however spelled) is a usage error that leaves MODEL untouched."""
    source = workdir / "resnet_block.onnx"
    target = source if spelling == "same" else workdir / "." / ".." / workdir.name / "resnet_block.onnx"
    before = snapshot(workdir)
    result = invoke("fold", source, "-o", target)
    assert_one_line_error(result, f"{target}: refusing to overwrite the input; use --in-place", exit_code=2)
    assert snapshot(workdir) == before


def test_in_place_with_output_is_a_usage_error(workdir: Path) -> None:
    """`--in-place` and `-o` together exit 2 and write nothing."""
    source = workdir / "resnet_block.onnx"
    before = snapshot(workdir)
    result = invoke("fold", source, "--in-place", "-o", workdir / "out.onnx")
    assert_one_line_error(result, "--in-place and --output exclude each other", exit_code=2)
    assert snapshot(workdir) == before


def test_output_folder_missing(workdir: Path) -> None:
    """An output in a folder that does not exist is a one-line error, and nothing is created."""
    source = workdir / "resnet_block.onnx"
    target = workdir / "nowhere" / "out.onnx"
    before = snapshot(workdir)
    result = invoke("fold", source, "-o", target)
    assert_one_line_error(result, f"{target}: output folder '{target.parent}' does not exist", exit_code=3)
    assert snapshot(workdir) == before


# --------------------------------------------------------------------------------------------------
# Unusable input: one line on stderr, exit 3, nothing written
# --------------------------------------------------------------------------------------------------


def _bad_input(folder: Path, kind: str) -> tuple[Path, str]:
    """Create a bad input of the given kind in `folder`; returns its path and the expected message."""
    path = folder / f"{kind}.onnx"
    if kind == "missing":
        return path, f"{path}: no such file"
    if kind == "directory":
        path.mkdir()
        return path, "no .onnx files in the given folders"
    if kind == "empty":
        path.write_bytes(b"")
        return path, f"{path}: empty file, not an ONNX model"
    corrupt = "not a readable ONNX model (Error parsing message with type 'onnx.ModelProto': Wire format was corrupt)"
    if kind == "truncated":
        data = (MODELS / "resnet_block.onnx").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, f"{path}: {corrupt}"
    if kind == "text":
        path.write_text("hello, I am a text file\n")
        return path, f"{path}: {corrupt}"
    if kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64)))
        return path, f"{path}: {corrupt}"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "truncated", "text", "png"])
def test_unreadable_input(tmp_path: Path, kind: str) -> None:
    """Missing, empty, truncated and non-ONNX inputs: exact one-line error, exit 3, no files (an empty folder: 2)."""
    path, message = _bad_input(tmp_path, kind)
    before = snapshot(tmp_path)
    result = invoke("fold", path)
    assert_one_line_error(result, message, exit_code=2 if kind == "directory" else 3)
    assert snapshot(tmp_path) == before
    assert temp_leftovers(tmp_path) == []


def test_unreadable_input_in_a_real_process(tmp_path: Path) -> None:
    """The installed script prints no traceback either."""
    path, message = _bad_input(tmp_path, "truncated")
    process = run_script("fold", path.name, cwd=tmp_path)
    assert process.returncode == 3
    assert process.stdout == ""
    assert process.stderr == f"normfold: error: {message.replace(str(path), path.name)}\n"


def test_inconsistent_batchnorm_parameters(tmp_path: Path) -> None:
    """A BN whose mean has 4 values while the others have 8 is named, with every shape."""
    path = tmp_path / "bad_bn.onnx"
    onnx.save(conv_bn_model(mean_channels=4), str(path))
    before = snapshot(tmp_path)
    result = invoke("fold", path)
    assert result.exit_code == 3
    message = result.stderr.removeprefix("normfold: error: ").rstrip("\n")
    if "invalid ONNX model" in message:  # the checker caught it first: it must still point at the BN
        assert "BatchNormalization" in message or "bn" in message
        assert_one_line_error(result, message, exit_code=3)
    else:
        assert_one_line_error(
            result,
            "BatchNormalization 'bn' has inconsistent parameter shapes: scale [8], B [8], mean [4], var [8]",
            exit_code=3,
        )
    assert snapshot(tmp_path) == before


def test_consistent_batchnorm_control(tmp_path: Path) -> None:
    """The same model with consistent parameters folds (so the previous test's failure is the shapes)."""
    path = tmp_path / "good_bn.onnx"
    onnx.save(conv_bn_model(mean_channels=8), str(path))
    result = invoke("fold", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "FOLDED   BatchNormalization 'bn': into Conv 'conv' (backward)"
    assert_equivalent_fold(path, tmp_path / "good_bn.folded.onnx")


def test_undefined_value_is_an_invalid_graph(tmp_path: Path) -> None:
    """A node consuming a value nothing defines is rejected by the checker, as one line."""
    path = tmp_path / "undefined.onnx"
    onnx.save(build_model([helper.make_node("Relu", ["nope"], ["y"], name="relu")], {}, check=False), str(path))
    before = snapshot(tmp_path)
    result = invoke("fold", path)
    message = result.stderr.removeprefix("normfold: error: ").rstrip("\n")
    assert message.startswith(f"{path}: invalid ONNX model: ")
    assert "'nope'" in message
    assert_one_line_error(result, message, exit_code=3)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# External data
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def external_model(tmp_path: Path) -> Path:
    """resnet_block saved as `models/m.onnx` with all tensors in `models/w.data`."""
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "m.onnx"
    save_external(onnx.load(str(MODELS / "resnet_block.onnx")), path)
    assert data_locations(path) == {"w.data"}
    return path


@pytest.mark.parametrize("cwd", ["model_folder", "elsewhere"])
def test_external_data_folds_and_stays_external(
    external_model: Path, cwd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model with external data folds; the output keeps its tensors in `OUT.data` beside OUT."""
    folder = external_model.parent
    monkeypatch.chdir(folder if cwd == "model_folder" else tmp_path)
    before = snapshot(folder)
    target = folder / "out.onnx"
    result = invoke("fold", external_model, "-o", target)
    assert result.exit_code == 0, result.output
    assert fold_lines(result.stdout) == [*RESNET_LINES, RESNET_SUMMARY, f"wrote {target}"]
    assert (folder / "out.onnx.data").is_file()
    assert data_locations(target) == {"out.onnx.data"}
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"out.onnx", "out.onnx.data"}
    assert temp_leftovers(folder) == []
    assert_equivalent_fold(MODELS / "resnet_block.onnx", target)


def test_output_data_file_does_not_clobber_input_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fold a.onnx -o b.onnx` where a.onnx keeps its tensors in `b.onnx.data` must not alter a's data."""
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "a.onnx"
    original = onnx.load(str(MODELS / "resnet_block.onnx"))
    save_external(original, source, location="b.onnx.data")
    before = snapshot(tmp_path)
    result = invoke("fold", source, "-o", tmp_path / "b.onnx")
    # Refusing (one line, exit 2 or 3) or succeeding are both fine; damaging the input is not.
    assert result.exit_code in (0, 2, 3), result.output
    assert "Traceback" not in result.output
    after = snapshot(tmp_path)
    assert {name: after[name] for name in before} == before
    reloaded = onnx.load(str(source))
    for expected, actual in zip(original.graph.initializer, reloaded.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(actual), numpy_helper.to_array(expected))


def test_external_data_missing(external_model: Path) -> None:
    """Deleting the data file: one line naming the file and a tensor, exit 3, nothing written."""
    folder = external_model.parent
    (folder / "w.data").unlink()
    before = snapshot(folder)
    result = invoke("fold", external_model)
    assert_one_line_error(result, f"{external_model}: external data file 'w.data' of tensor 'conv_w1' is missing", exit_code=3)
    assert snapshot(folder) == before


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_the_folder(external_model: Path, where: str) -> None:
    """`../outside.data` and absolute locations are refused before anything is read."""
    folder = external_model.parent
    outside = folder.parent / "outside.data"
    shutil.copyfile(folder / "w.data", outside)
    location = "../outside.data" if where == "parent" else str(outside)
    path = folder / "escaping.onnx"
    set_data_location(external_model, path, location)
    before = snapshot(folder.parent)
    result = invoke("fold", path)
    assert_one_line_error(
        result, f"{path}: tensor 'conv_w1' points outside the model's folder for its data ('{location}')", exit_code=3
    )
    assert "outside the model's folder" in result.stderr
    assert snapshot(folder.parent) == before


def test_external_data_symlink_escaping_the_folder(external_model: Path) -> None:
    """A symlink inside the folder that points at a file outside it is refused like `../`."""
    folder = external_model.parent
    outside = folder.parent / "outside.data"
    shutil.copyfile(folder / "w.data", outside)
    (folder / "link.data").symlink_to(Path("..") / "outside.data")
    path = folder / "linked.onnx"
    set_data_location(external_model, path, "link.data")
    before = snapshot(folder.parent)
    result = invoke("fold", path)
    assert_one_line_error(
        result, f"{path}: tensor 'conv_w1' points outside the model's folder for its data ('link.data')", exit_code=3
    )
    assert snapshot(folder.parent) == before


def test_external_data_symlink_inside_the_folder(external_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink that stays inside the folder is either followed or refused cleanly (onnx's checker refuses links)."""
    folder = external_model.parent
    monkeypatch.chdir(folder)  # see CWD_BUG
    (folder / "link.data").symlink_to("w.data")
    path = folder / "linked.onnx"
    set_data_location(external_model, path, "link.data")
    before = snapshot(folder)
    result = invoke("fold", path, "-o", folder / "out.onnx")
    assert result.exit_code in (0, 3), result.output
    if result.exit_code == 0:
        assert_equivalent_fold(MODELS / "resnet_block.onnx", folder / "out.onnx")
    else:
        message = result.stderr.removeprefix("normfold: error: ").rstrip("\n")
        assert "link.data" in message
        assert_one_line_error(result, message, exit_code=3)
        assert snapshot(folder) == before


# --------------------------------------------------------------------------------------------------
# Help and version
# --------------------------------------------------------------------------------------------------


def _commands() -> dict[str, click.Command]:
    """Every subcommand, loaded the way `normfold` loads them (on demand)."""
    with click.Context(main) as ctx:
        return {name: main.get_command(ctx, name) for name in main.list_commands(ctx)}


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help(flag: str) -> None:
    """`normfold --help` lists every command with its short help and the exit codes."""
    result = invoke(flag)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: normfold ")
    assert "Exit codes: 0 success, 1 mismatch or not ready, 2 usage, 3 unusable input." in result.stdout
    for name, command in _commands().items():
        assert f"  {name} " in result.stdout
        assert command.get_short_help_str().rstrip(".")[:20] in result.stdout


def test_every_command_has_help() -> None:
    """Every command and every one of its options is documented, and `CMD --help` exits 0."""
    assert list(_commands()) == ["fold", "validate", "mode", "calibrate", "mc", "check"]
    for name, command in _commands().items():
        assert command.help and command.help.strip(), name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts}"
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"Usage: normfold {name} ")
        assert command.help.strip().splitlines()[0] in result.stdout


def test_fold_help_names_its_options() -> None:
    """`normfold fold --help` shows -o/--output, --in-place and --json."""
    result = invoke("fold", "--help")
    assert result.exit_code == 0
    for option in ("-o, --output", "--in-place", "--json"):
        assert option in result.stdout


def test_version() -> None:
    """`normfold --version` prints the package version."""
    from normfold import __version__

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"normfold, version {__version__}\n"


# --------------------------------------------------------------------------------------------------
# Output paths that must be refused, and external-data corner cases (from the adversarial review)


def test_output_that_is_not_a_regular_file_is_refused(workdir: Path) -> None:
    source = workdir / "resnet_block.onnx"
    fifo = workdir / "pipe.onnx"
    os.mkfifo(fifo)
    result = invoke("fold", source, "-o", fifo)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"normfold: error: {fifo}: exists and is not a regular file; refusing to replace it"
    folder = invoke("fold", source, "-o", workdir)
    assert folder.exit_code == 2 and "is a directory" in folder.stderr


def test_output_onto_the_inputs_external_data_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    save_external(onnx.load(str(MODELS / "resnet_block.onnx")), source, location="m.onnx.data")
    before = snapshot(tmp_path)
    for command in (["fold"], ["mode", "--eval"]):
        result = invoke(*command, source, "-o", tmp_path / "m.onnx.data")
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().endswith("refusing to overwrite an external data file of the input")
    assert snapshot(tmp_path) == before


def test_in_place_with_external_data_leaves_no_orphan(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    save_external(onnx.load(str(MODELS / "resnet_block.onnx")), source, location="m.onnx.data")
    for _ in range(2):
        assert invoke("fold", source, "--in-place", "--provider", "cpu").exit_code == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", data_locations(source).pop()]
    assert_equivalent_fold(MODELS / "resnet_block.onnx", source)


def test_truncated_external_data_without_length_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    save_external(onnx.load(str(MODELS / "resnet_block.onnx")), source, location="w.data")
    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in list(tensor.external_data):
            if entry.key == "length":
                tensor.external_data.remove(entry)
    onnx.save(model, str(source))
    with open(tmp_path / "w.data", "r+b") as handle:
        handle.truncate(1000)
    result = invoke("fold", source)
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert "is too short for tensor" in result.stderr


# --------------------------------------------------------------------------------------------------
# Several models: one line each, a summary, the worst exit code; one failure never stops the others


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_batch_fold_of_a_folder(tmp_path: Path, jobs: str) -> None:
    for name in ("resnet_block.onnx", "mlp.onnx"):
        shutil.copy(MODELS / name, tmp_path / name)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    result = invoke("fold", tmp_path, "-j", jobs, "--provider", "cpu")
    assert result.exit_code == 3, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"FAILED    {tmp_path / 'broken.onnx'}: {tmp_path / 'broken.onnx'}: not a readable ONNX model " \
        "(Error parsing message with type 'onnx.ModelProto': Wire format was corrupt)"
    assert lines[1].startswith(f"FOLDED    {tmp_path / 'mlp.onnx'}: BatchNormalization folded 2/2, Dropout stripped 2/2")
    assert lines[2].startswith(f"FOLDED    {tmp_path / 'resnet_block.onnx'}: BatchNormalization folded 6/6")
    assert lines[-1] == "2 of 3 model(s) folded and written"
    assert (tmp_path / "mlp.folded.onnx").is_file() and (tmp_path / "resnet_block.folded.onnx").is_file()
    again = invoke("fold", tmp_path / "mlp.onnx", tmp_path / "resnet_block.onnx", "--provider", "cpu", "--json")
    document = json.loads(again.stdout)
    assert again.exit_code == 0 and [m["status"] for m in document["models"]] == ["FOLDED", "FOLDED"]
    assert invoke("fold", tmp_path, "-o", tmp_path / "x.onnx").exit_code == 2
