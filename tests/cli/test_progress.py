"""The phase a command is in, on stderr, only when stderr is a terminal: load, fold, write, validate with their
seconds, rewritten in place and cleared at the end; the node records printed as validation starts."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from cli_helpers import MODELS, RESNET_LINES, invoke

from normfold.cli import verbosity
from normfold.fold_file import FoldFileResult, Phase, fold_file
from normfold.validate import ValidationConfig

PHASE = re.compile(r"(load|fold|write|validate) \d+\.\ds")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr taken for a terminal."""
    monkeypatch.setattr(verbosity, "stderr_is_terminal", lambda: True)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    shutil.copy(MODELS / "resnet_block.onnx", tmp_path / "resnet_block.onnx")
    return tmp_path / "resnet_block.onnx"


def first_appearances(stderr: str) -> list[str]:
    """The phases in the order the progress line first shows each."""
    return list(dict.fromkeys(PHASE.findall(stderr)))


def test_fold_shows_each_phase_in_place_and_clears_it(terminal: None, model: Path) -> None:
    result = invoke("fold", model, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert first_appearances(result.stderr) == ["load", "fold", "write", "validate"]
    assert "\n" not in result.stderr and result.stderr.startswith("\r")
    assert re.search(r"\r *\r$", result.stderr)  # the last thing written blanks the line out
    assert "\r" not in result.stdout
    assert result.stdout.splitlines()[:7] == RESNET_LINES
    # the records come out once the fold is written, before validation starts
    output = result.output
    assert (
        output.index("| write ")
        < output.index(RESNET_LINES[0])
        < output.index("| validate ")
        < output.index("validate: PASSED")
    )


def test_validate_shows_its_phase(terminal: None, model: Path) -> None:
    assert invoke("fold", model, "--no-validate", "-q").exit_code == 0
    result = invoke("validate", model, model.with_name("resnet_block.folded.onnx"), "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert first_appearances(result.stderr) == ["validate"]
    assert re.search(r"\r *\r$", result.stderr) and "\r" not in result.stdout


@pytest.mark.parametrize("flag", ["-q", "--json"])
def test_nothing_with_quiet_or_json(terminal: None, model: Path, flag: str) -> None:
    for args in (["fold", model, "-o", model.with_name(f"out{flag}.onnx")], ["validate", model, model]):
        result = invoke(*args, "--provider", "cpu", flag)
        assert result.exit_code == 0 and result.stderr == "", result.output


def test_nothing_when_stderr_is_not_a_terminal(model: Path) -> None:
    """CI logs and pipes get the report alone (the CliRunner's stderr is not a terminal)."""
    assert not verbosity.stderr_is_terminal()
    fold = invoke("fold", model, "--provider", "cpu")
    validate = invoke("validate", model, model, "--provider", "cpu")
    assert (fold.exit_code, fold.stderr, validate.exit_code, validate.stderr) == (0, "", 0, "")


def test_fold_file_reports_its_phases_to_a_callback(model: Path) -> None:
    """The library's hook: each phase as it starts, from `write` on with the outcome, whose fold is done."""
    heard: list[tuple[Phase, bool]] = []

    def progress(phase: Phase, outcome: FoldFileResult | None) -> None:
        heard.append((phase, outcome is not None and bool(outcome.fold.records)))

    fold_file(model, model.with_name("a.onnx"), validation=ValidationConfig(providers=("cpu",)), progress=progress)
    assert heard == [("load", False), ("fold", False), ("write", True), ("validate", True)]
    heard.clear()
    fold_file(model, model.with_name("b.onnx"), progress=progress)
    assert heard == [("load", False), ("fold", False), ("write", True)]
