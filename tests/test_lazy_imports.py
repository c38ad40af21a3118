"""`normfold fold --no-validate` runs without importing ONNX Runtime, onnxscript or onnx's reference
evaluator: the whole-process time users pay is the fold's, not the validator's. `normfold --help` and every
`normfold COMMAND --help` import none of onnx, onnx_ir, numpy (seconds of start-up); `check` no runtime, and
none of the modules it does not use."""

from __future__ import annotations

import functools
import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from examples import MODELS

from normfold.cli import COMMANDS, SUMMARIES, main, option_values

HEAVY = ("onnxruntime", "onnxscript", "onnx.reference")
# What help must not load: each takes from a tenth of a second (numpy) to seconds (onnx_ir, with sympy).
HEAVY_FOR_HELP = ("onnx", "onnx_ir", "sympy", "numpy", "ml_dtypes", "onnxruntime", "onnxscript")
# What `check MODEL` does not use: the HTML report (without --report), the passes fold runs only when asked
# (--eval, --simplify, --fold-norm-affine) or that only `mode --train` runs, onnx_ir's common passes (shape
# inference, needed only when a model lacks a rank the fold asks for), and the validation engine.
UNUSED_BY_CHECK = (
    *HEAVY,
    "normfold.html_report",
    "normfold.passes.set_inference_mode",
    "normfold.passes.set_training_mode",
    "normfold.passes.simplify",
    "normfold.passes.fold_norm_affine",
    "onnx_ir.passes.common",
    "normfold.validate.engine",
)
PROBE = """
import json, sys
from normfold.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code
print(json.dumps({{"code": code, "loaded": [m for m in {modules!r} if m in sys.modules]}}))
"""


def _loaded_by(folder: Path, *args: str, modules: tuple[str, ...] = HEAVY) -> dict[str, object]:
    """Run the CLI in a fresh interpreter; from `folder`, so that `python -c` does not import the source tree."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(modules=modules), *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=folder,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def help_probe(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, object]]:
    """`normfold [COMMAND] --help` in a fresh interpreter, run once per command for all the tests below."""
    folder = tmp_path_factory.mktemp("help")
    return functools.cache(lambda *command: _loaded_by(folder, *command, "--help", modules=HEAVY_FOR_HELP))


def test_fold_without_validation_imports_no_runtime_or_optimizer(tmp_path: Path) -> None:
    probe = _loaded_by(
        tmp_path, "fold", str(MODELS / "resnet_block.onnx"), "-o", str(tmp_path / "f.onnx"), "--no-validate"
    )
    assert probe == {"code": 0, "loaded": []}


def test_fold_with_validation_and_simplify_imports_what_they_use(tmp_path: Path) -> None:
    probe = _loaded_by(
        tmp_path,
        "fold",
        str(MODELS / "resnet_block.onnx"),
        "-o",
        str(tmp_path / "f.onnx"),
        "--simplify",
        "--provider",
        "cpu",
    )
    assert probe["code"] == 0
    assert {"onnxruntime", "onnxscript"} <= set(probe["loaded"])  # type: ignore[arg-type]


def test_group_help_imports_no_command_module(help_probe: Callable[..., dict[str, object]]) -> None:
    assert help_probe() == {"code": 0, "loaded": []}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_imports_no_onnx_or_numpy(help_probe: Callable[..., dict[str, object]], command: str) -> None:
    assert help_probe(command) == {"code": 0, "loaded": []}


@pytest.mark.parametrize(
    ("copy", "source", "name"),
    [
        ("DEFAULT_FLAG", "normfold.passes.set_training_mode", "DEFAULT_FLAG"),
        ("RUNNING_VARIANCES", "normfold.passes.set_training_mode", "RUNNING_VARIANCES"),
        ("CALIBRATION_METHODS", "normfold.calibrate", "METHODS"),
    ],
)
def test_option_values_equal_the_library_constants_they_copy(copy: str, source: str, name: str) -> None:
    """The values help shows without importing the library modules are the values the commands accept."""
    assert getattr(option_values, copy) == getattr(importlib.import_module(source), name)


def test_check_imports_no_runtime_and_nothing_it_does_not_use(tmp_path: Path) -> None:
    probe = _loaded_by(tmp_path, "check", str(MODELS / "resnet_block.onnx"), modules=UNUSED_BY_CHECK)
    assert probe == {"code": 1, "loaded": []}  # 1: the model has a foldable BatchNormalization


def test_group_help_lists_every_command_with_its_summary() -> None:
    """The listing is SUMMARIES, in COMMANDS' order, and each command's own short help is the same line."""
    listed = CliRunner().invoke(main, ["--help"], prog_name="normfold", terminal_width=100)
    assert listed.exit_code == 0
    commands = listed.output.split("Commands:\n")[1].splitlines()
    assert [line.split()[0] for line in commands] == list(COMMANDS)
    for line, name in zip(commands, COMMANDS):
        assert line.split(None, 1)[1] == SUMMARIES[name]
        command = main.get_command(click.Context(main), name)
        assert command is not None and command.get_short_help_str(100) == SUMMARIES[name]
