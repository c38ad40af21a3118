"""Per-BN overhead of `normfold fold --no-validate`, phase by phase, in one process.

    python benchmarks/phases.py [--runs N] OUTPUT_FOLDER MODEL [MODEL ...]

Times, with normfold.phase_timing (time.perf_counter), the library calls `normfold fold --no-validate` makes (normfold/fold_file.py):
load = normfold.model_reading.load_model_file(MODEL, keep_proto=False), fold = normfold.folding.fold(model,
in_place=True) and normfold.mapped_pages.return_freed_heap() (which fold_file runs right after it), save =
normfold.atomic_write.save_model(model, OUTPUT_FOLDER/<name>.out.onnx) (onnx's full check included). Every
model runs N times (default 3), its output removed before each run; imports are paid before the first timer.
Prints one JSON line: {"runs": N, "models": [{"name", "bn" (BatchNormalization nodes the fold saw),
"folded", "seconds": {"load": [...], "fold": [...], "save": [...]}}]}. benchmarks/run.py runs it on stack1000
and stack5000 in a process of its own (so the benchmark's own imports and models stay out of it) and renders
the table (report.phases_lines): median seconds per phase and microseconds per BN.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

from normfold.phase_timing import time_phases as time_fold_phases

PHASES = ("load", "fold", "save")


def time_phases(model: Path, output: Path) -> tuple[dict[str, float], int, int]:
    """Seconds of each phase of one fold of `model` into `output` (normfold.phase_timing's figures, the
    release of the replaced weights counted in fold), BatchNormalization nodes seen and folded."""
    for stale in (output, output.with_name(f"{output.name}.data")):
        stale.unlink(missing_ok=True)
    gc.collect()  # the previous run's garbage, not this run's
    times = time_fold_phases(model, output)
    seconds = {"load": times.load, "fold": times.fold + times.release, "save": times.write}
    return seconds, times.batchnorms, times.folded


def measure(models: list[Path], folder: Path, runs: int) -> dict:
    """Every model's phase seconds over `runs` runs (see the module's docstring for the layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    measured = []
    for model in models:
        entry: dict = {"name": model.stem, "bn": 0, "folded": 0, "seconds": {phase: [] for phase in PHASES}}
        output = folder / f"{model.stem}.out.onnx"
        for _ in range(runs):
            seconds, entry["bn"], entry["folded"] = time_phases(model, output)
            for phase in PHASES:
                entry["seconds"][phase].append(seconds[phase])
        for stale in (output, output.with_name(f"{output.name}.data")):
            stale.unlink(missing_ok=True)
        measured.append(entry)
    return {"runs": runs, "models": measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per model (median)")
    parser.add_argument("output_folder", type=Path, help="where the folded models are written (and removed)")
    parser.add_argument("models", type=Path, nargs="+", help="ONNX files to fold")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    print(json.dumps(measure(args.models, args.output_folder, args.runs)))


if __name__ == "__main__":
    main()
