"""The batch modes' final table: `normfold fold` and `normfold validate` on several models.

One line per model, then a blank line, an aligned table (header, dashes, one row per model), the count line;
the worst exit code; -j 2 prints the same; `--json` carries the same facts as numbers.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import numpy_helper

from normfold.cli import main
from normfold.cli.batch import failure_reason, worst_comparison
from normfold.cli.batch_table import fit_table, render_table, shorten
from normfold.fold_file import FoldFileResult, NotWrittenError
from normfold.folding import fold
from normfold.validate import OutputComparison, Tolerance, ValidationReport
from normfold.validate.compare import Metrics

MODELS = Path(__file__).resolve().parent.parent / "models"
FOLD_HEADER = ["MODEL", "STATUS", "BN FOLDED", "DROPOUT STRIPPED", "NODES", "VALIDATION", "MAX ABS", "EXIT", "REASON"]
VALIDATE_HEADER = ["REFERENCE", "CANDIDATE", "STATUS", "MAX ABS", "WORST OUTPUT", "PROVIDERS", "EXIT", "REASON"]
SHORT_FOLD_HEADER = ["MODEL", "STATUS", "BN", "DROPOUT", "NODES", "VALIDATION", "MAX ABS", "EXIT", "REASON"]
SHORT_VALIDATE_HEADER = ["MODEL", "STATUS", "MAX ABS", "WORST OUTPUT", "EXIT", "REASON"]
NOT_ONNX = "not a readable ONNX model ("
ROUNDING = 1e-5  # the folds of the shipped models differ from their inputs by float32 rounding, far below this


def invoke(*args: str | os.PathLike[str]) -> Result:
    """Run `normfold ARGS` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="normfold")


def table(stdout: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header's names and each row as {name: cell}; asserts the columns line up under the dashes."""
    lines = stdout.splitlines()
    start = lines.index("") + 1
    header, rule, *body = lines[start:-1]
    spans = [match.span() for match in re.finditer(r"-+", rule)]
    assert rule == "  ".join("-" * (end - begin) for begin, end in spans), rule
    rows = [_cells(line, spans) for line in [header, *body]]
    for index, (begin, end) in enumerate(spans):
        assert max(len(row[index]) for row in rows) == end - begin, f"column {index} is not as wide as its widest cell"
    names = rows[0]
    return names, [dict(zip(names, row)) for row in rows[1:]]


def _cells(line: str, spans: list[tuple[int, int]]) -> list[str]:
    """Cut one line at the rule's columns, checking that the two-space gaps between them are blank."""
    assert line == line.rstrip(), f"trailing blanks: {line!r}"
    for (_, end), (begin, _) in zip(spans, spans[1:]):
        assert line[end:begin] in ("  ", ""), f"misaligned: {line!r}"
    return [line[begin:end].rstrip() for begin, end in spans]


def per_model_lines(stdout: str) -> list[str]:
    """The lines printed as each model finished, before the table."""
    lines = stdout.splitlines()
    return lines[: lines.index("")]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two shipped models and a file that is not ONNX at all."""
    for name in ("resnet_block.onnx", "mlp.onnx"):
        shutil.copy(MODELS / name, tmp_path / name)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    return tmp_path


# --------------------------------------------------------------------------------------------------
# The renderer


def test_render_table_aligns_columns_two_spaces_apart() -> None:
    lines = render_table(("A", "LONG HEADER", "C"), [["wide cell", "x", ""], ["b", "yy", "last"]])
    assert lines == [
        "A          LONG HEADER  C",
        "---------  -----------  ----",
        "wide cell  x",
        "b          yy           last",
    ]


def test_fit_table_squeezes_paths_cuts_reasons_and_drops_columns_in_order() -> None:
    rows = [
        [
            "models/broken.onnx",
            "FAILED",
            "-",
            "-",
            "-",
            "-",
            "-",
            "3",
            "not a readable ONNX model (Error parsing message with type 'onnx.ModelProto': Wire format was corrupt)",
        ],
        ["models/training_export.onnx", "FOLDED", "0/1", "0/1", "7 -> 7", "passed", "9.54e-07", "0", ""],
    ]
    assert fit_table(SHORT_FOLD_HEADER, rows[1:], droppable=(6, 4, 7)) == [
        "MODEL                        STATUS  BN   DROPOUT  NODES   VALIDATION  MAX ABS   EXIT  REASON",
        "---------------------------  ------  ---  -------  ------  ----------  --------  ----  ------",
        "models/training_export.onnx  FOLDED  0/1  0/1      7 -> 7  passed      9.54e-07  0",
    ]
    assert fit_table(SHORT_FOLD_HEADER, rows, droppable=(6, 4, 7)) == [
        "MODEL                        STATUS  BN   DROPOUT  VALIDATION  EXIT  REASON",
        "---------------------------  ------  ---  -------  ----------  ----  ----------------------------",
        "models/broken.onnx           FAILED  -    -        -           3     not a readable ONNX model...",
        "models/training_export.onnx  FOLDED  0/1  0/1      passed      0",
    ]
    rows[0][0] = "/tmp/pytest-of-someone/pytest-1234/test_fold_table_has_a_row_per_model0/broken.onnx"
    assert fit_table(SHORT_FOLD_HEADER, rows, droppable=(6, 4, 7)) == [
        "MODEL                               STATUS  BN   DROPOUT  VALIDATION  REASON",
        "----------------------------------  ------  ---  -------  ----------  ----------------------------",
        "/tmp/pytest-of-some.../broken.onnx  FAILED  -    -        -           not a readable ONNX model...",
        "models/training_export.onnx         FOLDED  0/1  0/1      passed",
    ]


def test_shorten_cuts_long_text_at_a_word() -> None:
    assert shorten("short  reason\n here", 72) == "short reason here"
    cut = shorten("not a readable ONNX model (Error parsing message with type 'onnx.ModelProto')", 40)
    assert cut == "not a readable ONNX model (Error..."
    assert shorten("x" * 50, 20) == "x" * 17 + "..."


def comparison(output: str, passed: bool, max_abs: float | None, problem: str = "", nan: int = 0) -> OutputComparison:
    """One compared output with made-up figures: `max_abs` None means the outputs were not comparable."""
    metrics = None if max_abs is None else Metrics(max_abs, 0.0, 1.0, 0.0, 0.0, 0.0, 0 if passed else 7, nan, 0)
    return OutputComparison(output, "cpu", passed, Tolerance(None, 1e-4), metrics, problem)


def test_the_worst_comparison_is_a_failure_then_the_largest_error() -> None:
    close, far = comparison("close", False, 1e-3), comparison("far", True, 0.5)
    report = ValidationReport("r.onnx", "c.onnx", ["cpu"], [], 1, "random", [far, close])
    assert worst_comparison(report) is close
    shape = comparison("shape", False, None, "shape [2] != reference [3]")
    report.comparisons.append(shape)
    assert worst_comparison(report) is shape
    report.comparisons[:] = [close, far]
    report.comparisons[0] = comparison("close", True, 1e-3)
    assert worst_comparison(report).output == "far"
    assert worst_comparison(ValidationReport("r", "c", ["cpu"], [], 1, "random", [])) is None


def test_failure_reason_names_the_output_and_what_is_wrong() -> None:
    assert (
        failure_reason(comparison("y", False, None, "shape [2] != reference [3]"))
        == "output 'y' (cpu): shape [2] != reference [3]"
    )
    assert (
        failure_reason(comparison("y", False, 0.1, nan=2))
        == "output 'y' (cpu): 7 element(s) beyond tolerance, 2 NaN mismatch(es)"
    )
    assert (
        failure_reason(comparison("y", False, 0.1, "candidate is 9x further from float64 than the reference"))
        == "output 'y' (cpu): 7 element(s) beyond tolerance, candidate is 9x further from float64 than the reference"
    )


# --------------------------------------------------------------------------------------------------
# normfold fold


def test_fold_table_fits_100_columns_by_default(folder: Path) -> None:
    """Paths lose their middle (never their file name), the reason its end; optional columns go when needed."""
    result = invoke("fold", folder, "--provider", "cpu")
    assert result.exit_code == 3, result.output
    assert all(len(line) <= 100 for line in result.stdout.splitlines()), result.stdout
    assert [line.split()[0] for line in per_model_lines(result.stdout)] == ["FAILED", "FOLDED", "FOLDED"]
    assert result.stdout.splitlines()[-1] == "2 of 3 model(s) folded and written"
    names, (broken, mlp, resnet) = table(result.stdout)
    assert names[:4] == SHORT_FOLD_HEADER[:4] and names[-1] == "REASON" and set(names) <= set(SHORT_FOLD_HEADER)
    assert [row["MODEL"].rpartition("/")[2] for row in (broken, mlp, resnet)] == [
        "broken.onnx",
        "mlp.onnx",
        "resnet_block.onnx",
    ]
    assert broken["REASON"].startswith("not a readable ONNX model") and broken["REASON"].endswith("...")
    assert [(row["BN"], row["DROPOUT"], row["VALIDATION"]) for row in (broken, mlp, resnet)] == [
        ("-", "-", "-"),
        ("2/2", "2/2", "passed"),
        ("6/6", "1/1", "passed"),
    ]


def test_fold_table_has_a_row_per_model_and_the_failure(folder: Path) -> None:
    result = invoke("fold", folder, "--provider", "cpu", "-v")
    assert result.exit_code == 3, result.output
    assert [line.split()[:2] for line in per_model_lines(result.stdout)] == [
        ["FAILED", f"{folder / 'broken.onnx'}:"],
        ["FOLDED", f"{folder / 'mlp.onnx'}:"],
        ["FOLDED", f"{folder / 'resnet_block.onnx'}:"],
    ]
    assert result.stdout.splitlines()[-1] == "2 of 3 model(s) folded and written"
    names, rows = table(result.stdout)
    assert names == FOLD_HEADER
    broken, mlp, resnet = rows
    assert broken | {"REASON": ""} == {
        "MODEL": str(folder / "broken.onnx"),
        "STATUS": "FAILED",
        "BN FOLDED": "-",
        "DROPOUT STRIPPED": "-",
        "NODES": "-",
        "VALIDATION": "-",
        "MAX ABS": "-",
        "EXIT": "3",
        "REASON": "",
    }
    assert broken["REASON"].startswith(NOT_ONNX) and broken["REASON"].endswith("...") and len(broken["REASON"]) <= 72
    assert {k: mlp[k] for k in FOLD_HEADER if k != "MAX ABS"} == {
        "MODEL": str(folder / "mlp.onnx"),
        "STATUS": "FOLDED",
        "BN FOLDED": "2/2",
        "DROPOUT STRIPPED": "2/2",
        "NODES": "10 -> 6",
        "VALIDATION": "passed",
        "EXIT": "0",
        "REASON": "",
    }
    assert {k: resnet[k] for k in FOLD_HEADER if k != "MAX ABS"} == {
        "MODEL": str(folder / "resnet_block.onnx"),
        "STATUS": "FOLDED",
        "BN FOLDED": "6/6",
        "DROPOUT STRIPPED": "1/1",
        "NODES": "23 -> 16",
        "VALIDATION": "passed",
        "EXIT": "0",
        "REASON": "",
    }
    assert all(0 <= float(row["MAX ABS"]) < ROUNDING for row in (mlp, resnet))
    assert (folder / "mlp.folded.onnx").is_file() and (folder / "resnet_block.folded.onnx").is_file()


def test_fold_table_is_the_same_with_two_jobs(folder: Path) -> None:
    one = invoke("fold", folder, "--provider", "cpu", "-j", "1", "-v")
    two = invoke("fold", folder, "--provider", "cpu", "-j", "2", "-v")
    assert one.exit_code == two.exit_code == 3
    assert len(table(two.stdout)[1]) == 3
    assert two.stdout == one.stdout


def test_fold_table_shows_a_validation_mismatch_and_no_validation(folder: Path) -> None:
    models = (folder / "mlp.onnx", folder / "resnet_block.onnx")
    strict = invoke("fold", *models, "--provider", "cpu", "--atol", "0", "--rtol", "0", "-v")
    assert strict.exit_code == 1, strict.output
    assert strict.stdout.splitlines()[-1] == "0 of 2 model(s) folded and written"
    mlp, resnet = table(strict.stdout)[1]
    assert [mlp["STATUS"], mlp["BN FOLDED"], mlp["NODES"], mlp["VALIDATION"], mlp["EXIT"]] == [
        "FAILED",
        "2/2",
        "10 -> 6",
        "failed",
        "1",
    ]
    assert re.fullmatch(r"output 'scores' \(cpu\): [1-9]\d* element\(s\) beyond tolerance", mlp["REASON"])
    assert re.fullmatch(r"output 'logits' \(cpu\): [1-9]\d* element\(s\) beyond tolerance", resnet["REASON"])
    assert 0 < float(resnet["MAX ABS"]) < ROUNDING
    assert not (folder / "mlp.folded.onnx").exists() and not (folder / "resnet_block.folded.onnx").exists()
    unchecked = invoke("fold", *models, "--no-validate", "-v")
    assert unchecked.exit_code == 0, unchecked.output
    assert [(r["STATUS"], r["VALIDATION"], r["MAX ABS"], r["EXIT"]) for r in table(unchecked.stdout)[1]] == [
        ("FOLDED", "not validated", "-", "0")
    ] * 2


def test_fold_table_shows_a_validation_that_could_not_run(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot_validate(source: Path, target: Path, **settings: Any) -> FoldFileResult:
        partial = FoldFileResult(fold(source), None, source, target, written=False)
        raise NotWrittenError("cannot validate the folded model, so nothing was written (random nodes)", partial, 3)

    monkeypatch.setattr(importlib.import_module("normfold.cli.fold_command"), "fold_file", cannot_validate)
    result = invoke("fold", folder / "mlp.onnx", folder / "resnet_block.onnx", "-v")
    assert result.exit_code == 3, result.output
    assert [
        (r["STATUS"], r["BN FOLDED"], r["VALIDATION"], r["MAX ABS"], r["EXIT"], r["REASON"])
        for r in table(result.stdout)[1]
    ] == [
        ("FAILED", "2/2", "error", "-", "3", "cannot validate the folded model, so nothing was written (random nodes)"),
        ("FAILED", "6/6", "error", "-", "3", "cannot validate the folded model, so nothing was written (random nodes)"),
    ]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_fold_json_has_the_row_facts_as_numbers(folder: Path, jobs: str) -> None:
    result = invoke("fold", folder, "--provider", "cpu", "--json", "-j", jobs)
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    assert (document["normfold_report"], document["version"], document["exit_code"]) == ("fold-batch", 1, 3)
    broken, mlp, resnet = document["models"]
    assert broken["status"] == "FAILED" and broken["exit_code"] == 3 and broken["output"] is None
    assert broken["summary"] is None and broken["validation"] is None and broken["max_abs"] is None
    assert broken["reason"].startswith(NOT_ONNX) and broken["reason"].endswith("Wire format was corrupt)")
    assert broken["detail"] == f"{folder / 'broken.onnx'}: {broken['reason']}"
    assert mlp["summary"] == {
        "batchnorm_total": 2,
        "batchnorm_folded": 2,
        "dropout_total": 2,
        "dropout_stripped": 2,
        "affine_total": 0,
        "affine_folded": 0,
        "switched_to_inference": 0,
        "nodes_before": 10,
        "nodes_after": 6,
    }
    assert resnet["summary"]["batchnorm_folded"] == 6 and resnet["summary"]["nodes_after"] == 16
    for row, name in ((mlp, "mlp"), (resnet, "resnet_block")):
        assert (row["status"], row["exit_code"], row["validation"], row["reason"]) == ("FOLDED", 0, "passed", None)
        assert row["output"] == str(folder / f"{name}.folded.onnx") and row["path"] == str(folder / f"{name}.onnx")
        assert isinstance(row["max_abs"], float) and 0 <= row["max_abs"] < ROUNDING


# --------------------------------------------------------------------------------------------------
# normfold validate with two folders


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[Path, Path]:
    """orig/ and folded/: an equivalent pair, a pair whose last weights are scaled by 5%, one with no candidate."""
    originals, candidates = tmp_path / "orig", tmp_path / "folded"
    originals.mkdir()
    candidates.mkdir()
    for name in ("mlp.onnx", "orphan.onnx", "scaled.onnx"):
        shutil.copy(MODELS / "mlp.onnx", originals / name)
    assert invoke("fold", originals / "mlp.onnx", "-o", candidates / "mlp.onnx", "--provider", "cpu").exit_code == 0
    model = onnx.load(str(MODELS / "mlp.onnx"))
    weight = next(t for t in model.graph.initializer if t.name.startswith("fc3_w"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.05), weight.name))
    onnx.save(model, str(candidates / "scaled.onnx"))
    return originals, candidates


def test_validate_table_names_pairs_below_their_folders_by_default(pairs: tuple[Path, Path]) -> None:
    originals, candidates = pairs
    result = invoke("validate", originals, candidates, "--provider", "cpu")
    assert result.exit_code == 3, result.output
    assert all(len(line) <= 100 for line in result.stdout.splitlines()), result.stdout
    assert [line.split()[0] for line in per_model_lines(result.stdout)] == ["PASSED", "UNUSABLE", "FAILED"]
    assert result.stdout.splitlines()[-1] == "1 of 3 pair(s) equivalent"
    names, (good, orphan, scaled) = table(result.stdout)
    assert names == SHORT_VALIDATE_HEADER
    assert {k: good[k] for k in names if k != "MAX ABS"} == {
        "MODEL": "mlp.onnx",
        "STATUS": "PASSED",
        "WORST OUTPUT": "scores [cpu]",
        "EXIT": "0",
        "REASON": "",
    }
    assert orphan == {
        "MODEL": "orphan.onnx",
        "STATUS": "UNUSABLE",
        "MAX ABS": "-",
        "WORST OUTPUT": "-",
        "EXIT": "3",
        "REASON": "no such file",
    }
    assert re.match(r"output 'scores' \(cpu\): [1-9]\d* element\(s\) beyond", scaled["REASON"])


def test_validate_table_has_a_row_per_pair(pairs: tuple[Path, Path]) -> None:
    originals, candidates = pairs
    result = invoke("validate", originals, candidates, "--provider", "cpu", "-v")
    assert result.exit_code == 3, result.output
    assert [line.split()[0] for line in per_model_lines(result.stdout)] == ["PASSED", "UNUSABLE", "FAILED"]
    assert result.stdout.splitlines()[-1] == "1 of 3 pair(s) equivalent"
    names, (good, orphan, scaled) = table(result.stdout)
    assert names == VALIDATE_HEADER
    assert {k: good[k] for k in VALIDATE_HEADER if k != "MAX ABS"} == {
        "REFERENCE": str(originals / "mlp.onnx"),
        "CANDIDATE": str(candidates / "mlp.onnx"),
        "STATUS": "PASSED",
        "WORST OUTPUT": "scores [cpu]",
        "PROVIDERS": "cpu",
        "EXIT": "0",
        "REASON": "",
    }
    assert 0 <= float(good["MAX ABS"]) < ROUNDING
    assert orphan == {
        "REFERENCE": str(originals / "orphan.onnx"),
        "CANDIDATE": str(candidates / "orphan.onnx"),
        "STATUS": "UNUSABLE",
        "MAX ABS": "-",
        "WORST OUTPUT": "-",
        "PROVIDERS": "-",
        "EXIT": "3",
        "REASON": "no such file",
    }
    assert [scaled["STATUS"], scaled["WORST OUTPUT"], scaled["PROVIDERS"], scaled["EXIT"]] == [
        "FAILED",
        "scores [cpu]",
        "cpu",
        "1",
    ]
    assert float(scaled["MAX ABS"]) > 1e-3
    assert re.match(r"output 'scores' \(cpu\): [1-9]\d* element\(s\) beyond tolerance", scaled["REASON"])


def test_validate_table_is_the_same_with_two_jobs(pairs: tuple[Path, Path]) -> None:
    one = invoke("validate", *pairs, "--provider", "cpu", "-j", "1")
    two = invoke("validate", *pairs, "--provider", "cpu", "-j", "2")
    assert one.exit_code == two.exit_code == 3
    assert len(table(two.stdout)[1]) == 3
    assert two.stdout == one.stdout


def test_validate_json_has_the_row_facts_as_numbers(pairs: tuple[Path, Path]) -> None:
    originals, candidates = pairs
    result = invoke("validate", originals, candidates, "--provider", "cpu", "--json", "-j", "2")
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    assert (document["normfold_report"], document["version"], document["exit_code"]) == ("validate-batch", 1, 3)
    good, orphan, scaled = document["pairs"]
    expected: dict[str, Any] = {
        "status": "PASSED",
        "exit_code": 0,
        "providers": ["cpu"],
        "outputs_compared": 1,
        "worst_output": "scores",
        "worst_section": "cpu",
        "reason": None,
    }
    assert {k: good[k] for k in expected} == expected
    assert isinstance(good["max_abs"], float) and 0 <= good["max_abs"] < ROUNDING
    assert orphan == {
        "reference": str(originals / "orphan.onnx"),
        "candidate": str(candidates / "orphan.onnx"),
        "status": "UNUSABLE",
        "detail": f"{candidates / 'orphan.onnx'}: no such file",
        "exit_code": 3,
        "providers": None,
        "outputs_compared": None,
        "worst_output": None,
        "worst_section": None,
        "max_abs": None,
        "reason": "no such file",
    }
    assert (scaled["status"], scaled["exit_code"], scaled["worst_output"]) == ("FAILED", 1, "scores")
    assert scaled["max_abs"] > 1e-3 and scaled["reason"].startswith("output 'scores' (cpu): ")
