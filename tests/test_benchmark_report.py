"""benchmarks/report.py: the scale tables (fold, check and validate), the per-BN overhead by phase and targets
8-11 rendered from hand-made measurements, PASS and MISS, and n/a with why when a part was not measured."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import ModuleType

import pytest
from benchmark_module import load_benchmark_run

MB = 10**6


@pytest.fixture(scope="module")
def report() -> ModuleType:
    """benchmarks/report.py, imported as benchmarks/run.py imports it (run.py puts benchmarks/ on sys.path)."""
    return load_benchmark_run().report


def _timing(seconds: float, rss: int, error: str | None = None) -> dict:
    return {"seconds": seconds, "rss": rss, "error": error, "runs": [seconds]}


def _stack(name: str, fold_s: float, io_s: float) -> dict:
    """A per-model result as bench_model saves it, with only what the targets read."""
    return {
        "name": name,
        "bytes": 3 * MB,
        "external": False,
        "float64": True,
        "float64_note": None,
        "timings": {"normfold": _timing(fold_s, 140 * 2**20), "io": _timing(io_s, 117 * 2**20)},
        "checks": {},
    }


def _tool(seconds: list[float], rss: int) -> dict:
    return {"seconds": seconds, "rss": rss}


def _scale_model(name: str, size: int, fold_rss: int, check_rss: int, validate_rss: int) -> dict:
    return {
        "name": name,
        "bytes": size,
        "external": name.endswith("external"),
        "weights": 40,
        "tools": {
            "io": _tool([2.0, 2.2, 2.1], 80 * 2**20),
            "normfold": _tool([2.4, 2.5, 2.6], fold_rss),
            "check": _tool([1.5, 1.6, 1.7], check_rss),
            "validate": _tool([6.0, 6.1, 6.2], validate_rss),
        },
    }


def _scale(passing: bool = True) -> dict:
    """Scale measurements: with `passing`, every tool at most 0.4x the size and fold at 1.19x the I/O limit."""
    size = 450 * MB
    small = int(0.4 * size)
    models = [_scale_model("scale_forty_external", size, small, small, small)]
    models.append(
        _scale_model("scale_forty_inline", size, small, small, small if passing else int(2.5 * size))
        if passing
        else _scale_model("scale_forty_inline", size, int(4.3 * size), small, int(2.5 * size))
    )
    folder_times = {
        "normfold fold DIR --no-validate": [7.5, 7.6, 7.4],
        "normfold fold DIR --no-validate -j 2": [5.8, 5.9, 5.7],
        "onnxslim MODEL OUT, per model": [131.0, 132.0, 133.0] if passing else [7.0, 7.0, 7.0],
    }
    return {
        "runs": 3,
        "models": models,
        "folder": {
            "count": 50,
            "bytes": 50 * 290_000,
            "runs": 3,
            "times": folder_times,
            "errors": {"onnxsim MODEL OUT, per model": "no `onnxsim` script installed"},
        },
    }


def _startup(check_s: float) -> dict:
    return {
        "runs": 3,
        "times": {
            'python -c "import onnx"': [0.60, 0.61, 0.62],
            "normfold --help": [0.30, 0.31, 0.32],
            "normfold check --help": [0.30, 0.31, 0.32],
            "normfold check models/resnet_block.onnx": [check_s] * 3,
        },
    }


PHASES = {
    "runs": 3,
    "models": [
        {
            "name": "stack1000",
            "bn": 1000,
            "folded": 1000,
            "seconds": {"load": [0.7] * 3, "fold": [0.9] * 3, "save": [0.3] * 3},
        },
        {
            "name": "stack5000",
            "bn": 5000,
            "folded": 5000,
            "seconds": {"load": [3.1] * 3, "fold": [4.5] * 3, "save": [1.5] * 3},
        },
    ],
}


def _targets(report: ModuleType, **parts: object) -> dict[str, tuple[str, str]]:
    """Targets 8-11 by number: (result, measured)."""
    results = [_stack("stack1000", 3.6, 3.0), _stack("stack5000", 8.0, 7.0)]
    rows = report.targets(results, scale=parts.get("scale"), startup=parts.get("startup"), phases=parts.get("phases"))
    return {
        label.split(".")[0]: (result, measured)
        for label, result, measured in rows
        if label[:2] in ("8.", "9.", "10", "11")
    }


def test_every_scale_target_passes_when_measured_within_its_limit(report: ModuleType) -> None:
    found = _targets(report, scale=_scale(), startup=_startup(0.8), phases=PHASES)
    assert {number: result for number, (result, _) in found.items()} == {
        "8": "PASS",
        "9": "PASS",
        "10": "PASS",
        "11": "PASS",
    }
    assert "fold --no-validate: worst" in found["8"][1] and "validate: worst" in found["8"][1]
    assert "over 0.5x on 0 of 2" in found["8"][1]
    assert "worst stack1000 1.20x; over 1.3x: none" in found["9"][1]
    assert "per-BN us load/fold/save: stack1000 700/900/300, stack5000 620/900/300" in found["9"][1]
    assert "`normfold check models/resnet_block.onnx` 0.80 s (1.31x)" in found["10"][1]
    assert (
        "one process 6.7 models/s (7.50 s)" in found["11"][1] and "-j 2 8.6 models/s (0.77x the time)" in found["11"][1]
    )
    assert "onnxslim per model 0.4 models/s (17.6x normfold's time)" in found["11"][1]
    assert "onnxsim skipped: no `onnxsim` script installed" in found["11"][1]


def test_scale_targets_miss_with_the_figures_that_miss(report: ModuleType) -> None:
    slow = _scale(passing=False)
    slow["models"][0]["tools"]["normfold"]["seconds"] = [4.0, 4.0, 4.0]  # 1.90x the I/O limit's 2.1 s
    found = _targets(report, scale=slow, startup=_startup(1.2), phases=PHASES)
    assert {number: result for number, (result, _) in found.items()} == {
        "8": "MISS",
        "9": "MISS",
        "10": "MISS",
        "11": "MISS",
    }
    assert "fold --no-validate: worst scale_forty_inline 4.30x" in found["8"][1]
    assert "validate: worst scale_forty_inline 2.50x" in found["8"][1] and "over 0.5x on 1 of 2" in found["8"][1]
    assert "over 1.3x: scale_forty_external 1.90x" in found["9"][1]
    assert "(1.97x)" in found["10"][1]
    assert "onnxslim per model 7.1 models/s" in found["11"][1]


def test_a_failed_tool_is_a_miss_with_its_reason(report: ModuleType) -> None:
    failed = _scale()
    failed["models"][1]["tools"]["validate"]["error"] = "killed: out of memory"
    found = _targets(report, scale=failed)
    assert found["8"][0] == "MISS"
    assert "validate: worst scale_forty_external 0.40x" in found["8"][1]
    assert "scale_forty_inline FAILED: killed: out of memory" in found["8"][1]
    assert _targets(report, startup={"runs": 3, "error": "normfold --help: exit 2"})["10"] == (
        "MISS",
        "FAILED: normfold --help: exit 2",
    )


def test_targets_not_measured_are_na_with_why(report: ModuleType) -> None:
    found = _targets(report)
    assert found["8"] == ("n/a", f"scale tables {report.SCALE_ABSENT}")
    assert found["10"] == ("n/a", report.STARTUP_ABSENT)
    assert found["11"] == ("n/a", f"folder of small models {report.SCALE_ABSENT}")
    result, measured = found["9"]
    assert result == "n/a"  # the stacks pass, but the scale models were not measured
    assert "worst stack1000 1.20x" in measured and "scale models not measured (--no-scale)" in measured
    assert "per-BN overhead by phase not measured" in measured
    assert "--no-scale" in report.SCALE_ABSENT


def test_scale_results_saved_before_check_and_validate_still_render(report: ModuleType) -> None:
    older = _scale()
    for entry in older["models"]:
        del entry["tools"]["check"], entry["tools"]["validate"]
    text = "\n".join(report.scale_lines(older))
    assert "not measured (results saved before check and validate were measured)" in text
    result, measured = _targets(report, scale=older)["8"]
    assert result == "n/a" and "check: not measured" in measured and "validate: not measured" in measured


def test_the_scale_tables_show_each_tool_against_the_model_size(report: ModuleType) -> None:
    measured = _scale(passing=False)
    lines = report.scale_lines(measured)
    assert "## check and validate however the weights are split" in lines
    fold_row = next(line for line in lines if line.startswith("| scale_forty_inline | 40 | 429 | no | 1845 |"))
    assert "| 4.30x | MISS | 2.50 |" in fold_row and fold_row.endswith("| 1.19x | PASS |")
    check_rows = [line for line in lines if line.startswith("| scale_forty_inline") and "FAILED" not in line]
    assert (
        check_rows[-1]
        == "| scale_forty_inline | 40 | 429 | no | 172 | 0.40x | PASS | 1.60 | 1073 | 2.50x | MISS | 6.10 |"
    )
    copied = copy.deepcopy(measured)
    copied["models"][0]["tools"]["check"]["error"] = "exit 3"
    assert any("| FAILED: exit 3 | - | - | - |" in line for line in report.scale_lines(copied))


def test_the_per_bn_phase_table(report: ModuleType) -> None:
    lines = report.phases_lines(PHASES)
    assert lines[0] == "## Per-BN overhead by phase"
    assert "| stack1000 | 1000 | 0.700 | 0.900 | 0.300 | 1.900 | 700 | 900 | 300 | 1900 |" in lines
    assert "| stack5000 | 5000 | 3.100 | 4.500 | 1.500 | 9.100 | 620 | 900 | 300 | 1820 |" in lines
    assert "| stack5000 - stack1000 | 4000 | 2.400 | 3.600 | 1.200 | 7.200 | 600 | 900 | 300 | 1800 |" in lines
    assert report.phases_lines(None)[2] == report.PHASES_ABSENT
    assert report.phases_lines({"error": "exit 1"})[2] == "FAILED: exit 1"


def test_the_full_report_appends_the_new_sections(report: ModuleType) -> None:
    results = [_stack("stack1000", 3.6, 3.0)]
    text = report.render(results, [], [], None, [], 1.0, None, "cmd", None, _scale(), PHASES)
    order = [
        "## Targets",
        "## Start-up",
        "## Per-BN overhead by phase",
        "## Memory however the weights are split",
        "## check and validate however the weights are split",
        "## A folder of 50 small models",
    ]
    positions = [text.index(heading) for heading in order]
    assert positions == sorted(positions)
    absent = report.render(results, [], [], None, [], 1.0, None, "cmd")
    assert f"## Memory however the weights are split\n\n{report.SCALE_ABSENT}" in absent
    assert "| 8. peak RSS <= 0.5x model size for fold, check and validate on every scale model | n/a |" in absent


def test_each_scale_round_folds_checks_and_validates_that_rounds_output(
    report: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """measure_models with a stand-in for run.run_once: check's exit 1 is a finished run, validate reads the
    fold output of its own round, and a round whose fold failed validates nothing."""
    scale = sys.modules["scale"]

    def write_models(folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        external, inline = folder / "scale_forty_external.onnx", folder / "scale_forty_inline.onnx"
        for path in (external, inline, external.with_name(f"{external.name}.data")):
            path.write_bytes(b"0" * 1000)
        return [external, inline]

    calls: list[list[str]] = []

    def run_once(command: list[str], timeout: float, log: Path, rss_limit: int | None, cwd: Path | None = None):
        calls.append(command)
        log.write_text("")
        tool = Path(command[1]).name if command[0].endswith("python") or "tools.py" in command[1] else command[1]
        if tool == "fold":
            if "inline" in command[2] and len([c for c in calls if c[1] == "fold"]) == 4:
                log.write_text("Error: the fold failed\n")
                return 1.0, 300, 1, None  # the inline model's second round
            Path(command[command.index("-o") + 1]).write_bytes(b"folded")
        if tool == "validate":
            assert Path(command[3]).read_bytes() == b"folded"  # this round's output, still there
        return 1.0, {"check": 200, "validate": 400}.get(tool, 300), 1 if tool == "check" else 0, None

    monkeypatch.setattr(scale, "write_scale_models", write_models)
    monkeypatch.setattr(scale, "_script", lambda name: "normfold")
    measured = scale.measure_models(run_once, tmp_path, runs=2, timeout=10)
    assert [c[1] for c in calls[:4]] == [str(scale.HERE / "tools.py"), "fold", "check", "validate"]
    assert calls[3][-2:] == ["--provider", "cpu"] and calls[3][2] == calls[2][2] == calls[1][2]
    external, inline = measured
    assert external["tools"]["check"] == {"seconds": [1.0, 1.0], "rss": 200}
    assert external["tools"]["validate"] == {"seconds": [1.0, 1.0], "rss": 400}
    assert inline["tools"]["normfold"]["error"] == "Error: the fold failed"
    assert inline["tools"]["validate"]["error"] == "nothing to validate: the fold failed in this round"
    assert inline["tools"]["validate"]["seconds"] == [1.0]  # the first round's
    assert not list((tmp_path / "scale" / "out").glob("*.onnx"))  # outputs removed at the end
