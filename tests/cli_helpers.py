"""Helpers for tests of the `normfold` command line (tests/cli and the other tests that run it): invoking it
in-process or as the installed script, snapshots of folders, the small models the error tests build, and the
one-line error and equivalent-fold checks."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner, Result
from graphs import bn_node, bn_params, op_types, rng
from numerics import assert_fold_exact, random_feeds
from onnx import helper, numpy_helper

from normfold.cli import main

MODELS = Path(__file__).resolve().parent.parent / "models"

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


def fold_lines(stdout: str) -> list[str]:
    """The fold report's lines without the validation lines (tests/validate checks those), whose verdict must be
    `validate: PASSED: equivalent`."""
    lines = stdout.splitlines()
    validation = [line for line in lines if line.startswith("validate: ")]
    assert validation[-1] == "validate: PASSED: equivalent", stdout
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


def data_locations(path: Path) -> set[str]:
    """The external-data `location` of every initializer of the model at `path` (without loading the data)."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        entry.value for tensor in model.graph.initializer for entry in tensor.external_data if entry.key == "location"
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
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )


def build_model(
    nodes: Sequence[onnx.NodeProto], initializers: dict[str, np.ndarray], check: bool = True
) -> onnx.ModelProto:
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


def break_folds_gemm_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `fold_file`'s fold add 1 to the first Gemm's bias: a wrong fold that validation must catch."""
    import normfold.fold_file as fold_file_module

    real_fold = fold_file_module.fold

    def broken_fold(model: Any, **kwargs: Any) -> Any:
        result = real_fold(model, **kwargs)
        gemm = next(node for node in result.model.graph if node.op_type == "Gemm")
        bias = gemm.inputs[2]
        bias.const_value = ir.tensor(bias.const_value.numpy() + 1.0, name=bias.name)
        return result

    monkeypatch.setattr(fold_file_module, "fold", broken_fold)
