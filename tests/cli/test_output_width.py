"""What `fold`, `validate` and `check` print: by default every line fits 100 columns (paths and names lose their
middle, free text its end, nothing wraps); -v prints every figure and full lines, as before; -q only the verdict
line, with the same exit codes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from cli_helpers import MODELS, RESNET_LINES, RESNET_SUMMARY, invoke
from click.testing import Result

WIDTH = 100
FIGURE = r"-?\d[\d.e+-]*"
SHORT_PASS = rf"PASSED '{{output}}' on cpu \| max abs {FIGURE} \| atol {FIGURE} rtol 0\.0001 \| float64 ok"
FULL_PASS = (
    rf"PASSED \| output '{{output}}' \| cpu \| max abs {FIGURE} \| max rel {FIGURE} \| mean abs {FIGURE} \| "
    rf"median abs {FIGURE} \| {FIGURE} eps \| vs float64: reference {FIGURE}, candidate {FIGURE} \| "
    rf"atol {FIGURE} \(rounding\) rtol 0\.0001"
)
OUTPUTS = {"resnet_block.onnx": "logits", "mlp.onnx": "scores"}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """The example models and a file that is not ONNX, in a folder whose path alone takes most of a line."""
    folder = tmp_path / "exported-models-in-a-folder-whose-name-pushes-every-line-past-a-hundred-columns"
    folder.mkdir()
    for name in ("resnet_block.onnx", "mlp.onnx", "training_export.onnx"):
        shutil.copy(MODELS / name, folder / name)
    (folder / "broken.onnx").write_bytes(b"not a model")
    return folder


def assert_fits(result: Result) -> None:
    """Every line of stdout and stderr in WIDTH columns."""
    long = [line for line in (result.stdout + result.stderr).splitlines() if len(line) > WIDTH]
    assert not long, "\n".join(long)


def test_quickstart_prints_the_essentials_in_100_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Quickstart's command: the node records, the summary, one line per output, the verdict, the output."""
    (tmp_path / "models").mkdir()
    shutil.copy(MODELS / "resnet_block.onnx", tmp_path / "models" / "resnet_block.onnx")
    monkeypatch.chdir(tmp_path)
    result = invoke("fold", "models/resnet_block.onnx", "--provider", "cpu")
    assert result.exit_code == 0 and result.stderr == "", result.output
    *head, output, verdict, wrote = result.stdout.splitlines()
    assert head == [*RESNET_LINES, RESNET_SUMMARY]
    assert re.fullmatch("validate: " + SHORT_PASS.format(output="logits"), output), output
    assert [verdict, wrote] == ["validate: PASSED: equivalent", "wrote models/resnet_block.folded.onnx"]


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_fold_validate_and_check_fit_100_columns(models: Path, name: str) -> None:
    model, folded = models / name, models / name.replace(".onnx", ".folded.onnx")
    fold = invoke("fold", model, "--provider", "cpu")
    assert fold.exit_code == 0, fold.output
    assert_fits(fold)
    output, *verdict = [line for line in fold.stdout.splitlines() if line.startswith("validate: ")]
    assert re.fullmatch("validate: " + SHORT_PASS.format(output=OUTPUTS[name]), output), output
    assert verdict == ["validate: PASSED: equivalent"]
    assert fold.stdout.splitlines()[-1].startswith("wrote ") and fold.stdout.endswith(f"/{folded.name}\n")
    validate = invoke("validate", model, folded, "--provider", "cpu")
    assert validate.exit_code == 0, validate.output
    assert_fits(validate)
    assert re.fullmatch(SHORT_PASS.format(output=OUTPUTS[name]), validate.stdout.splitlines()[-2])
    check = invoke("check", model, folded)
    assert check.exit_code == 1, check.output
    assert_fits(check)
    assert check.stdout.splitlines()[-1] == "1 of 2 model(s) deployment-ready"
    assert check.stdout.splitlines()[-2].startswith("READY    ")


def test_batches_fit_100_columns(models: Path, tmp_path: Path) -> None:
    """fold of a folder (a broken file and a training-mode model among them), validate of two folders, check of
    a folder."""
    fold = invoke("fold", models, "--provider", "cpu")
    assert fold.exit_code == 3, fold.output
    assert_fits(fold)
    assert fold.stdout.splitlines()[-1] == "3 of 4 model(s) folded and written"
    candidates = tmp_path / "folded-models-in-a-second-folder-whose-name-is-every-bit-as-long-as-the-first"
    candidates.mkdir()
    for name in ("resnet_block.onnx", "mlp.onnx", "training_export.onnx"):
        shutil.copy(models / name.replace(".onnx", ".folded.onnx"), candidates / name)
    (models / "broken.onnx").unlink()
    for name in ("resnet_block", "mlp", "training_export"):
        (models / f"{name}.folded.onnx").unlink()
    validate = invoke("validate", models, candidates, "--provider", "cpu")
    assert validate.exit_code == 0, validate.output
    assert_fits(validate)
    assert validate.stdout.splitlines()[-1] == "3 of 3 pair(s) equivalent"
    check = invoke("check", models, candidates)
    assert check.exit_code == 1, check.output
    assert_fits(check)
    assert check.stdout.splitlines()[-1] == "2 of 6 model(s) deployment-ready"


def test_verbose_prints_every_figure_and_full_lines(models: Path) -> None:
    """-v prints what the commands printed before they fitted 100 columns: every figure, whole paths and reasons."""
    model, folded = models / "resnet_block.onnx", models / "resnet_block.folded.onnx"
    fold = invoke("fold", model, "--provider", "cpu", "-v")
    assert fold.exit_code == 0, fold.output
    lines = fold.stdout.splitlines()
    assert lines[:8] == [*RESNET_LINES, RESNET_SUMMARY]
    assert re.fullmatch("validate: " + FULL_PASS.format(output="logits"), lines[-3]), lines[-3]
    assert lines[-2:] == ["validate: PASSED: equivalent", f"wrote {folded}"]
    validate = invoke("validate", model, folded, "--provider", "cpu", "-v").stdout.splitlines()
    assert validate[0] == f"validate {folded} against {model}: 1 sample(s) from random inputs (seed 0), provider(s) cpu"
    assert re.fullmatch(FULL_PASS.format(output="logits"), validate[1])
    check = invoke("check", models / "training_export.onnx", "-v").stdout.splitlines()
    path = models / "training_export.onnx"
    assert check[1] == (
        f"  training-bn 'batchnormalization8': training_mode=1: normalizes with batch statistics; "
        f"TensorRT refuses training-mode BatchNormalization (fix: normfold mode --eval {path} (or "
        f"normfold fold --eval {path}))"
    )
    batch = invoke("fold", models, "--provider", "cpu", "-v").stdout.splitlines()
    assert batch[0] == (
        f"FAILED    {models / 'broken.onnx'}: {models / 'broken.onnx'}: not a readable ONNX model "
        "(Error parsing message with type 'onnx.ModelProto': Wire format was corrupt)"
    )
    assert batch[5].split() == [
        "MODEL",
        "STATUS",
        "BN",
        "FOLDED",
        "DROPOUT",
        "STRIPPED",
        "NODES",
        "VALIDATION",
        "MAX",
        "ABS",
        "EXIT",
        "REASON",
    ]


def test_quiet_prints_only_the_verdict_line_with_the_same_exit_codes(models: Path) -> None:
    model, folded = models / "mlp.onnx", models / "mlp.folded.onnx"
    fold = invoke("fold", model, "--provider", "cpu", "-q")
    assert (fold.exit_code, fold.stderr) == (0, "")
    (line,) = fold.stdout.splitlines()
    assert line.startswith("wrote ") and line.endswith("/mlp.folded.onnx") and len(line) <= WIDTH
    strict = invoke(
        "fold", model, "-o", models / "strict.onnx", "--provider", "cpu", "--atol", "0", "--rtol", "0", "-q"
    )
    assert strict.exit_code == 1 and strict.stdout == "" and not (models / "strict.onnx").exists()
    assert len(strict.stderr.splitlines()) == 1 and strict.stderr.startswith(
        "normfold: error: the folded model differs"
    )
    assert invoke("fold", models / "broken.onnx", "-q").exit_code == 3
    assert invoke("validate", model, folded, "--provider", "cpu", "-q").stdout == "PASSED: equivalent\n"
    differs = invoke("validate", model, folded, "--provider", "cpu", "--atol", "0", "--rtol", "0", "-q")
    assert (differs.exit_code, differs.stdout) == (1, "FAILED: 1 of 1 output comparison(s) differ\n")
    check = invoke("check", model, folded, "-q")
    assert (check.exit_code, check.stdout) == (1, "1 of 2 model(s) deployment-ready\n")
    assert invoke("check", folded, "-q").stdout == "1 of 1 model(s) deployment-ready\n"
    batch = invoke("fold", models, "--provider", "cpu", "-q")
    assert (batch.exit_code, batch.stdout) == (3, "3 of 4 model(s) folded and written\n")
    both = invoke("check", model, "-q", "-v")
    assert both.exit_code == 2 and both.stderr == "normfold: error: -q and -v exclude each other\n"
