"""The scale tables: do `normfold fold --no-validate`, `normfold check` and `normfold validate` stay within
0.5x a large model's size in peak RSS however its weights are split, and how many small models per second
does a folder fold at?

Models (benchmarks/models.py, generated into the work folder): about 450 MB of Conv 3x3 + BN layers as one
weight, forty of 11 MB and four thousand of 0.11 MB, each with external data and inline. On each, in every
round, one after the other so all see the same machine: the I/O limit (onnx_ir.load + onnx_ir.save of the
same model, external data memory-mapped), `normfold fold MODEL -o OUT --no-validate`, `normfold check
MODEL` (exit 1, "not deployment-ready", is a finished run, as in the start-up table) and `normfold validate
MODEL OUT --provider cpu` on that round's fold output. Then a folder of small models: `normfold fold DIR
--no-validate` (one process, and -j 2) against onnxslim and onnxsim run once per model, a process each,
as scripts run them. Every process is measured by run.run_once (wall time, peak RSS).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from startup import FINISHED as CHECK_FINISHED

from models import SCALE_SHAPES, has_external_data, model_bytes, write_scale_models, write_small_models

HERE = Path(__file__).resolve().parent
# run.run_once: (command, timeout, log, rss_limit, cwd) -> (wall seconds, peak RSS bytes, exit status, why killed)
RunOnce = Callable[..., tuple[float, int, int, str | None]]
PEER_CLIS = ("onnxslim", "onnxsim")
# The tools run on each scale model, in this order every round ("normfold": fold --no-validate).
SCALE_TOOLS = ("io", "normfold", "check", "validate")
# The ways of folding the folder of small models (keys of measure_folder's "times").
ONE_PROCESS = "normfold fold DIR --no-validate"
TWO_JOBS = f"{ONE_PROCESS} -j 2"


def per_model_way(peer: str) -> str:
    """The folder table's name of running `peer` once per model."""
    return f"{peer} MODEL OUT, per model"


def _script(name: str) -> str | None:
    """A console script installed beside this interpreter, else on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def _run(
    run_once: RunOnce, command: list[str], timeout: float, log: Path, finished: tuple[int, ...] = (0,)
) -> tuple[float, int, str | None]:
    """(wall seconds, peak RSS bytes, why it failed or None) of one process; an exit status in `finished`
    is a finished run."""
    wall, rss, code, killed = run_once(command, timeout, log, None)
    if code in finished and killed is None:
        return wall, rss, None
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return wall, rss, (killed or (lines[-1] if lines else f"exit {code}"))[:200]


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def measure_models(run_once: RunOnce, workdir: Path, runs: int, timeout: float) -> list[dict]:
    """Per scale model: its bytes, weights, external or not, and per tool (SCALE_TOOLS: io, normfold, check,
    validate) every run's seconds and the largest peak RSS, or the last failure."""
    normfold = _script("normfold")
    if normfold is None:
        raise SystemExit("scale benchmark: no `normfold` script beside this interpreter or on PATH")
    folder = workdir / "scale"
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    io_out, fold_out = out / "io.onnx", out / "normfold.onnx"
    print("  writing the scale models (about 2.7 GB)", flush=True)
    results = []
    for path in write_scale_models(folder / "models"):
        shape = path.stem.rsplit("_", 1)[0]
        external = has_external_data(path)
        commands = {
            "io": [
                sys.executable,
                str(HERE / "tools.py"),
                "io",
                str(path),
                str(io_out),
                "external" if external else "inline",
            ],
            "normfold": [normfold, "fold", str(path), "-o", str(fold_out), "--no-validate"],
            "check": [normfold, "check", str(path)],
            "validate": [normfold, "validate", str(path), str(fold_out), "--provider", "cpu"],
        }
        entry: dict = {
            "name": path.stem,
            "bytes": model_bytes(path),
            "external": external,
            "weights": SCALE_SHAPES[shape][0],
            "tools": {t: {"seconds": [], "rss": 0} for t in commands},
        }
        for round_number in range(runs):
            _remove(io_out, _data(io_out), fold_out, _data(fold_out))  # validate reads this round's fold output
            for tool, command in commands.items():
                timing = entry["tools"][tool]
                if tool == "validate" and not fold_out.exists():
                    timing["error"] = "nothing to validate: the fold failed in this round"
                    continue
                finished = CHECK_FINISHED if tool == "check" else (0,)
                wall, rss, error = _run(run_once, command, timeout, out / f"{tool}.log", finished)
                if tool == "io":
                    _remove(io_out, _data(io_out))  # nothing reads it: free the disk before normfold writes
                if error is not None:
                    timing["error"] = error
                    continue
                timing["seconds"].append(wall)
                timing["rss"] = max(timing["rss"], rss)
                print(
                    f"  {path.stem:24} {tool:9} run {round_number + 1}/{runs}: {wall:6.2f} s, {rss / 2**20:6.0f} MiB",
                    flush=True,
                )
        _remove(io_out, _data(io_out), fold_out, _data(fold_out))
        results.append(entry)
    return results


def _data(model: Path) -> Path:
    """The external data file a model written by normfold or tools.py may have beside it."""
    return model.with_name(f"{model.name}.data")


def measure_folder(run_once: RunOnce, workdir: Path, runs: int, timeout: float, count: int) -> dict:
    """The folder of `count` small models: per way of folding it, every round's total wall seconds (one process,
    or the sum over a process per model), or why it failed or was skipped."""
    folder = workdir / "scale" / "small"
    peers_out = workdir / "scale" / "small-out"
    peers_out.mkdir(parents=True, exist_ok=True)
    models = write_small_models(folder, count)
    normfold = _script("normfold")
    assert normfold is not None
    ways: dict[str, Callable[[], tuple[float, str | None]]] = {}

    def one_invocation(extra: list[str]) -> Callable[[], tuple[float, str | None]]:
        def run() -> tuple[float, str | None]:
            _remove(*folder.glob("*.folded.onnx"))
            wall, _, error = _run(
                run_once, [normfold, "fold", str(folder), "--no-validate", *extra], timeout, peers_out / "normfold.log"
            )
            return wall, error

        return run

    def per_model(script: str) -> Callable[[], tuple[float, str | None]]:
        def run() -> tuple[float, str | None]:
            total = 0.0
            for model in models:
                wall, _, error = _run(
                    run_once,
                    [script, str(model), str(peers_out / model.name)],
                    timeout,
                    peers_out / f"{Path(script).name}.log",
                )
                if error is not None:
                    return total, f"{model.name}: {error}"
                total += wall
            return total, None

        return run

    ways[ONE_PROCESS] = one_invocation([])
    ways[TWO_JOBS] = one_invocation(["-j", "2"])
    skipped = {}
    for peer in PEER_CLIS:
        script = _script(peer)
        if script is None:
            skipped[per_model_way(peer)] = f"no `{peer}` script installed"
        else:
            ways[per_model_way(peer)] = per_model(script)
    times: dict[str, list[float]] = {way: [] for way in ways}
    errors: dict[str, str] = dict(skipped)
    for round_number in range(runs):
        for way, run in ways.items():
            if way in errors:
                continue
            wall, error = run()
            if error is not None:
                errors[way] = error
                continue
            times[way].append(wall)
            print(f"  folder of {count}: {way:40} run {round_number + 1}/{runs}: {wall:6.2f} s", flush=True)
    _remove(*folder.glob("*.folded.onnx"))
    return {
        "count": count,
        "bytes": sum(model_bytes(m) for m in models),
        "runs": runs,
        "times": times,
        "errors": errors,
    }


def measure_scale(run_once: RunOnce, workdir: Path, runs: int, timeout: float, count: int) -> dict:
    """Both scale measurements; the models are removed afterwards (2.7 GB), the small folder kept."""
    models = measure_models(run_once, workdir, runs, timeout)
    shutil.rmtree(workdir / "scale" / "models", ignore_errors=True)
    return {"runs": runs, "models": models, "folder": measure_folder(run_once, workdir, runs, timeout, count)}
