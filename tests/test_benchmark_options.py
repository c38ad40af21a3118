"""benchmarks/run.py: the report records the command exactly as it ran, a partial run never writes the committed
benchmarks/RESULTS.md, and the temporary work folder is removed (or kept with --keep-temp) and reported."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from benchmark_module import load_benchmark_run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """benchmarks/run.py as a module (it puts benchmarks/ on sys.path for its own helpers)."""
    return load_benchmark_run()


@pytest.mark.parametrize(
    "partial", [["--quick"], ["--models", "mlp"], ["--startup-only"], ["--no-scale"], ["--no-phases"]]
)
def test_a_partial_run_may_not_write_the_committed_results(
    bench: ModuleType, partial: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = RESULTS.read_bytes()
    with pytest.raises(SystemExit) as stopped:
        bench.parse_args([*partial, "--markdown", str(RESULTS)])
    assert stopped.value.code == 2
    assert "benchmarks/RESULTS.md holds the full run's results: write this report elsewhere" in capsys.readouterr().err
    assert RESULTS.read_bytes() == before


def test_full_and_partial_runs_choose_their_files(bench: ModuleType, tmp_path: Path) -> None:
    assert bench.parse_args(["--markdown", str(RESULTS)]).markdown == RESULTS
    quick = bench.parse_args(["--quick", "--markdown", str(tmp_path / "quick.md")])
    assert quick.markdown == tmp_path / "quick.md" and quick.runs == 1
    assert bench.partial_run(quick) and not bench.partial_run(bench.parse_args([]))


@pytest.mark.parametrize(
    ("argv", "scale", "phases"),
    [
        ([], True, True),
        (["--quick"], False, False),
        (["--models", "mlp,stack100"], False, False),
        (["--quick", "--scale"], True, False),
        (["--models", "mlp", "--phases"], False, True),
        (["--no-scale"], False, True),
        (["--no-phases", "--scale"], True, False),
    ],
)
def test_a_full_run_measures_scale_and_phases_and_a_subset_only_when_asked(
    bench: ModuleType, argv: list[str], scale: bool, phases: bool
) -> None:
    args = bench.parse_args(argv)
    assert (args.scale, args.phases) == (scale, phases)


def test_leaving_out_the_scale_tables_is_a_partial_run(bench: ModuleType) -> None:
    assert bench.partial_run(bench.parse_args(["--no-scale"])) == "--no-scale leaves out the scale tables"
    assert bench.partial_run(bench.parse_args(["--scale"])) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scale-only", "--no-scale"], "--no-scale leaves nothing to measure"),
        (["--resume"], "--resume reads an earlier run's folder: give it with --workdir"),
        (["--report-only"], "--report-only reads an earlier run's folder: give it with --workdir"),
        (["--workdir", "x", "--keep-temp"], "--keep-temp keeps the temporary folder of a run without --workdir"),
    ],
)
def test_work_folder_options_that_do_not_fit(
    bench: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_recorded_command_is_the_argv_quoted(bench: ModuleType) -> None:
    argv = ["python", "benchmarks/run.py", "--quick", "--markdown", "my results.md"]
    assert bench.recorded_command(argv) == "python benchmarks/run.py --quick --markdown 'my results.md'"
    assert shlex.split(bench.recorded_command(argv)) == argv
    assert bench.recorded_command() == shlex.join(sys.orig_argv)


def test_the_temporary_folder_is_removed_and_its_size_reported(bench: ModuleType, tmp_path: Path) -> None:
    folder = tmp_path / "normfold-bench-x"
    (folder / "out").mkdir(parents=True)
    (folder / "out" / "model.onnx").write_bytes(b"0" * 2_500_000)
    kept = bench.release_workdir(folder, temporary=True, keep=True)
    assert folder.exists() and kept.startswith(f"kept {folder} (2.5 MB)") and "rm -rf" in kept
    assert bench.release_workdir(folder, temporary=False, keep=False).startswith(f"kept {folder} (2.5 MB)")
    assert folder.exists()
    removed = bench.release_workdir(folder, temporary=True, keep=False)
    assert removed == f"removed the temporary folder {folder} (2.5 MB; --keep-temp keeps it)"
    assert not folder.exists()


def _saved_run(folder: Path, command: str, partial: str | None, **parts: object) -> None:
    """A results.json as a run with no models and no start-up table leaves it (plus `parts`, e.g. phases)."""
    folder.mkdir()
    (folder / "results.json").write_text(
        json.dumps(
            {
                "results": [],
                "header": ["date: now"],
                "notes": [],
                "tools": [],
                "elapsed": 1.0,
                "startup": None,
                "command": command,
                "partial": partial,
                **parts,
            }
        )
    )


def test_report_only_records_both_commands_as_they_ran(tmp_path: Path) -> None:
    """The installed interpreter runs the script as a user would; the report names both command lines verbatim."""
    work = tmp_path / "work"
    _saved_run(work, "python benchmarks/run.py --models mlp --workdir work", "--models runs a subset of the models")
    argv = [
        sys.executable,
        "benchmarks/run.py",
        "--report-only",
        "--no-profile",
        "--workdir",
        str(work),
        "--markdown",
        str(tmp_path / "again.md"),
    ]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "again.md").read_text().splitlines()
    assert lines[0] == "# normfold benchmark"
    assert lines[2] == (
        f"Command: `python benchmarks/run.py --models mlp --workdir work` (re-rendered by `{shlex.join(argv)}`)"
    )
    assert done.stdout.splitlines()[-1].startswith(f"kept {work} (")


def test_report_only_of_a_partial_run_may_not_write_the_committed_results(bench: ModuleType, tmp_path: Path) -> None:
    work = tmp_path / "work"
    _saved_run(work, "python benchmarks/run.py --quick --workdir work", "--quick runs 4 small models")
    before = RESULTS.read_bytes()
    with pytest.raises(SystemExit, match="is from a partial run"):
        bench.main(["--report-only", "--no-profile", "--workdir", str(work), "--markdown", str(RESULTS)])
    assert RESULTS.read_bytes() == before


def test_report_only_renders_the_saved_phases_and_scale_tables(bench: ModuleType, tmp_path: Path) -> None:
    work = tmp_path / "work"
    phases = {
        "runs": 1,
        "models": [
            {"name": "stack1000", "bn": 1000, "folded": 1000, "seconds": {"load": [0.5], "fold": [1.0], "save": [0.25]}}
        ],
    }
    scale = {"error": "SystemExit: scale benchmark: no `normfold` script beside this interpreter or on PATH"}
    _saved_run(work, "python benchmarks/run.py --workdir work", None, phases=phases, scale=scale)
    bench.main(["--report-only", "--no-profile", "--workdir", str(work), "--markdown", str(tmp_path / "again.md")])
    text = (tmp_path / "again.md").read_text()
    assert "| stack1000 | 1000 | 0.500 | 1.000 | 0.250 | 1.750 | 500 | 1000 | 250 | 1750 |" in text
    assert "## Memory however the weights are split\n\nFAILED: SystemExit: scale benchmark: no `normfold`" in text
    assert (
        "| 8. peak RSS <= 0.5x model size for fold, check and validate on every scale model | n/a | scale measurement FAILED"
        in text
    )
