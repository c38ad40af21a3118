"""normfold's benchmark: normfold against the I/O limit and the peer tools, one table per question.

    python benchmarks/run.py [--big] [--runs N] [--markdown benchmarks/RESULTS.md]   (the full run)
    python benchmarks/run.py --quick|--models NAME,... [--scale] [--phases] [--markdown OTHER.md]  (partial)
    python benchmarks/run.py --no-scale|--no-phases [--markdown OTHER.md]               (partial)
    python benchmarks/run.py --startup-only [--startup-runs N]
    python benchmarks/run.py --scale-only [--runs N] [--small-models N] [--markdown scale.md]
    python benchmarks/run.py --report-only --workdir DIR [--markdown FILE]             (render DIR/results.json)

Models, outputs and logs go to a temporary folder that is removed at the end (its size printed), unless
--keep-temp; --workdir DIR writes them to DIR instead and keeps it (--resume and --report-only read it).
A partial run (--quick, --models, --startup-only, --scale-only, --no-scale, --no-phases) never writes
benchmarks/RESULTS.md, the committed full results. The report records the command line exactly as it ran.

Every transform runs in a fresh process: whole-process wall time (median of --runs), peak RSS of
that process (os.wait4's rusage). normfold runs twice: `--no-validate`, and as users run it by
default (validation on, float64 reference included), the latter killed past --default-fold-timeout
or --rss-limit and then shown as failed. Beside them, a process that only creates an ONNX Runtime
CPU session (ORT_DISABLE_ALL, as normfold validates) and runs it once, as the memory yardstick of
validation. Then one evaluation process per model checks every output (benchmarks/evaluate.py); when
its float64 reference runs past those limits, it runs again without it. Peers that are not importable
are skipped with the reason; AIMET runs in the interpreter given by --aimet-python (or
$NORMFOLD_BENCH_AIMET_PYTHON) since it needs torch.

After the models, in the same run: the per-BN overhead by phase (benchmarks/phases.py, in a process of its
own: load, fold and save of stack1000 and stack5000, median of --runs, about a minute), then the scale
tables (benchmarks/scale.py, 20-45 minutes and ~4 GiB of disk: peak RSS and time of `fold --no-validate`,
`check` and `validate` on ~450 MB models split into one, forty or four thousand weights, external data and
inline, beside the I/O limit, median of --runs; then a folder of --small-models small models against
onnxslim and onnxsim per model), last the start-up table (benchmarks/startup.py): `normfold --help`,
`normfold check --help` and `normfold check` on a small model against `import onnx`. --no-phases,
--no-scale and --no-startup leave a part out; --quick and --models leave out the phases and the scale
tables unless given --phases or --scale (they take longer than the models such a run measures). --resume
also reuses WORKDIR/phases.json and WORKDIR/scale.json. --scale-only measures only the scale tables.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"  # the committed results of a full run
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import scale  # noqa: E402
import startup  # noqa: E402

import models  # noqa: E402

PEERS = {  # tool -> module that must be importable
    "onnxscript": "onnxscript",
    "onnxoptimizer": "onnxoptimizer",
    "onnxsim": "onnxsim",
    "onnxslim": "onnxslim",
    "ort-basic": "onnxruntime",
    "aimet": "aimet_onnx",
}
FLOAT64_LIMIT = 200 * 2**20
SLOW_RUN_S = 10.0
GiB = 2**30
BASELINES = ("normfold", "normfold-default", "io", "ort-session")  # measured --runs times on every model
NOT_EVALUATED = ("io", "ort-session")  # they write no model
# Starts a measured command as its child and writes the child's pid, then its wall seconds and peak RSS,
# to the file named first. Measured processes are not started from this one: Linux carries the RSS
# high-water mark of the address space an exec replaces into ru_maxrss, so every child of this process
# (which has imported numpy and onnx and built the models) would report at least this process's RSS.
SPAWN = """\
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
report = open(sys.argv[1], "w")
report.write(f"{pid}\\n")
report.flush()
_, status, usage = os.wait4(pid, 0)
report.write(f"{time.perf_counter() - start} {usage.ru_maxrss * 1024}\\n")
report.close()
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""
# The memory yardstick of validation: an ONNX Runtime CPU session as normfold's validation creates it
# (ORT_DISABLE_ALL), run once on seeded random inputs, symbolic dimensions 1.
ORT_SESSION = """\
import sys
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(dtypes[i.type])
         for i in session.get_inputs()}
session.run(None, feeds)
"""
BIG_NEEDS_DISK, BIG_NEEDS_MEMORY = 30 * 2**30, 20 * 2**30


@dataclasses.dataclass
class Timing:
    """Median wall time and largest peak RSS over the runs, or why the tool failed."""

    seconds: float | None = None
    rss: int | None = None
    error: str | None = None
    runs: list[float] = dataclasses.field(default_factory=list)


def run_once(
    command: list[str], timeout: float, log: Path, rss_limit: int | None = None, cwd: Path | None = None
) -> tuple[float, int, int, str | None]:
    """Wall seconds, peak RSS bytes and exit status of one process, and why it was killed if it was:
    after `timeout`, or (polled every 50 ms) once its RSS passes `rss_limit` bytes. The process is
    started by SPAWN, which reports its wall time and peak RSS (the exit status is SPAWN's, the same),
    in `cwd` (default: this process's)."""
    killed: list[str] = []
    finished = threading.Event()
    report_file = log.with_suffix(".spawn")
    report_file.unlink(missing_ok=True)
    with open(log, "wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", SPAWN, str(report_file), *command],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            cwd=cwd,
        )

        def kill(reason: str) -> None:
            if not killed and not finished.is_set():
                killed.append(reason)
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill, [f"timeout after {timeout:.0f} s"])
        timer.start()
        if rss_limit is not None:
            threading.Thread(
                target=_watch_rss, args=(report_file, rss_limit, start, finished, kill), daemon=True
            ).start()
        _, status, _ = os.wait4(process.pid, 0)
        finished.set()
        wall, rss = time.perf_counter() - start, 0
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    reported = report_file.read_text().split() if report_file.exists() else []
    if len(reported) == 3:
        wall, rss = float(reported[1]), int(reported[2])
    return wall, rss, process.returncode, (killed or [None])[0]


def _watch_rss(
    report_file: Path, limit: int, start: float, finished: threading.Event, kill: Callable[[str], None]
) -> None:
    """Kill the process SPAWN started (its pid is the report's first line) once its RSS passes `limit`."""
    page, pid = os.sysconf("SC_PAGE_SIZE"), None
    while not finished.wait(0.05):
        try:
            if pid is None:
                pid = int(report_file.read_text().split("\n")[0])
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):  # the report not written yet, or the process gone
            continue
        if rss > limit:
            kill(
                f"killed at {rss / GiB:.1f} GiB RSS (limit {limit / GiB:g} GiB) after {time.perf_counter() - start:.0f} s"
            )
            return


def measure(
    command: list[str], output: Path, runs: int, timeout: float, repeat_slow: bool = True, rss_limit: int | None = None
) -> Timing:
    """Median wall time over `runs` (one run only when it takes over SLOW_RUN_S and not `repeat_slow`);
    the first failed run (or one killed past `timeout` or `rss_limit`) makes the result a failure."""
    timing, peak = Timing(), 0
    log = output.with_suffix(".log")
    for _ in range(runs):
        if timing.runs and not repeat_slow and timing.runs[0] > SLOW_RUN_S:
            break
        for stale in (output, output.with_name(f"{output.name}.data")):
            stale.unlink(missing_ok=True)
        wall, rss, code, killed = run_once(command, timeout, log, rss_limit)
        if code != 0:
            reason = killed or _last_line(log, code)
            return Timing(error=reason[:160])
        timing.runs.append(wall)
        peak = max(peak, rss)
    timing.seconds, timing.rss = statistics.median(timing.runs), peak
    return timing


def _last_line(log: Path, code: int) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {code}"


def available_tools(aimet_python: str | None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Command prefix per tool (input, output, mode appended), and the reason for each skipped peer."""
    normfold_cli = shutil.which("normfold", path=str(Path(sys.executable).parent)) or shutil.which("normfold")
    commands = {
        "normfold": [normfold_cli, "fold"],
        "normfold-default": [normfold_cli, "fold"],
        "io": [sys.executable, str(HERE / "tools.py"), "io"],
        "ort-session": [sys.executable, "-c", ORT_SESSION],
    }
    skipped = {}
    for tool, module in PEERS.items():
        python = sys.executable
        if tool == "aimet" and importlib.util.find_spec(module) is None and aimet_python:
            python = aimet_python
            probe = subprocess.run([python, "-c", f"import {module}.batch_norm_fold"], capture_output=True, text=True)
            if probe.returncode != 0:
                skipped[tool] = f"{aimet_python} cannot import {module}: {probe.stderr.strip().splitlines()[-1:]}"
                continue
        elif importlib.util.find_spec(module) is None:
            why = " (aimet-onnx needs torch; pass --aimet-python)" if tool == "aimet" else ""
            skipped[tool] = f"{module} is not installed{why}"
            continue
        commands[tool] = [python, str(HERE / "tools.py"), tool]
    return commands, skipped


def tool_command(tool: str, prefix: list[str], model: Path, output: Path, external: bool) -> list[str]:
    if tool == "normfold":
        return [*prefix, str(model), "-o", str(output), "--no-validate"]
    if tool == "normfold-default":
        return [*prefix, str(model), "-o", str(output)]
    if tool == "ort-session":
        return [*prefix, str(model)]
    return [*prefix, str(model), str(output), "external" if external else "inline"]


def evaluate(
    model: Path, outputs: dict[str, Path], float64: bool, folder: Path, timeout: float, rss_limit: int | None
) -> tuple[dict, str | None]:
    """The checks of every output, and why the evaluation process was killed (timeout, RSS), if it was."""
    job = {
        "original": str(model),
        "candidates": {k: str(v) for k, v in outputs.items()},
        "float64": float64,
        "latency": ["normfold"],
    }
    job_file, result_file = folder / "evaluate.job.json", folder / "evaluate.result.json"
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    log = folder / "evaluate.log"
    _, _, code, killed = run_once(
        [sys.executable, str(HERE / "evaluate.py"), str(job_file), str(result_file)], timeout, log, rss_limit
    )
    if code != 0:
        return {"error": killed or _last_line(log, code)}, killed
    return json.loads(result_file.read_text()), None


def bench_model(name: str, args: argparse.Namespace, commands: dict[str, list[str]]) -> dict:
    path = models.write_model(name, args.workdir / "models")
    size, external = models.model_bytes(path), models.has_external_data(path)
    folder = args.workdir / "out" / name
    folder.mkdir(parents=True, exist_ok=True)
    timings, outputs = {}, {}
    rss_limit = int(args.rss_limit * GiB)
    for tool, prefix in commands.items():
        output = folder / f"{tool}.onnx"
        ours = tool in BASELINES
        runs = args.runs if ours or name in report.FOLD_SPEEDUP_MODELS else args.peer_runs
        timeout = args.timeout * 10 if ours else args.timeout
        limit = None
        if tool == "normfold-default":
            timeout, limit = args.default_fold_timeout, rss_limit
        timings[tool] = measure(tool_command(tool, prefix, path, output, external), output, runs, timeout, ours, limit)
        if timings[tool].error is None and tool not in NOT_EVALUATED:
            outputs[tool] = output
        status = f"{timings[tool].seconds:.2f} s" if timings[tool].error is None else f"FAILED: {timings[tool].error}"
        print(f"  {name:28} {tool:16} {status}", flush=True)
    float64, float64_note = size <= FLOAT64_LIMIT, None
    checks, killed = evaluate(path, outputs, float64, folder, args.timeout * 10, rss_limit if float64 else None)
    if killed and float64:
        float64, float64_note = False, f"skipped: with it the evaluation was {killed}"
        print(f"  {name:28} {'evaluation':16} float64 reference {float64_note}", flush=True)
        checks, _ = evaluate(path, outputs, False, folder, args.timeout * 10, None)
    result = {
        "name": name,
        "bytes": size,
        "external": external,
        "float64": float64,
        "float64_note": float64_note,
        "timings": {k: dataclasses.asdict(v) for k, v in timings.items()},
        "checks": checks,
    }
    (folder / "result.json").write_text(json.dumps(result))
    return result


def saved_or_bench(name: str, args: argparse.Namespace, commands: dict[str, list[str]]) -> dict:
    """With --resume, a model's result from an earlier (interrupted) run in the same workdir."""
    saved = args.workdir / "out" / name / "result.json"
    if args.resume and saved.exists():
        print(f"  {name:28} (from {saved})", flush=True)
        return json.loads(saved.read_text())
    return bench_model(name, args, commands)


def machine() -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    versions = []
    for package in (
        "normfold",
        "onnx",
        "onnx-ir",
        "onnxscript",
        "onnxruntime-gpu",
        "onnxruntime",
        "onnxoptimizer",
        "onnxsim",
        "onnxslim",
        "aimet-onnx",
        "torch",
        "numpy",
    ):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}",
        f"machine: {os.cpu_count()} CPUs ({cpu}), {memory / 2**20:.1f} GiB memory, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"versions: {', '.join(versions)}",
    ]


def big_fits(workdir: Path) -> str | None:
    """Why the >2 GB model cannot run here, or None."""
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    memory = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable")
    )
    if free < BIG_NEEDS_DISK:
        return f"--big needs {BIG_NEEDS_DISK / 2**30:.0f} GiB free disk in {workdir}, {free / 2**30:.1f} GiB free"
    if memory < BIG_NEEDS_MEMORY:
        return f"--big needs {BIG_NEEDS_MEMORY / 2**30:.0f} GiB available memory, {memory / 2**30:.1f} GiB available"
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked: a partial run may not write RESULTS.md, --resume needs the folder it resumes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(models.QUICK)}, one run each")
    parser.add_argument(
        "--models",
        type=lambda text: [n for n in text.split(",") if n],
        metavar="NAME,...",
        help=f"only these models (of {', '.join(models.model_names(False, False))}), in this order",
    )
    parser.add_argument(
        "--big",
        action="store_true",
        help="also a >2 GB model with external data (off by default: needs ~30 GiB disk and ~20 GiB memory)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs per normfold (both ways), I/O and ORT session measurement, and per peer on "
        "resnet50 and stack1000 (default 3, --quick 1)",
    )
    parser.add_argument("--peer-runs", type=int, default=None, help="runs per peer on the other models (default 1)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60,
        help="seconds before one peer run is killed (normfold --no-validate, I/O, the ORT session "
        "and the evaluation: 10x this)",
    )
    parser.add_argument(
        "--default-fold-timeout",
        type=float,
        default=300,
        help="seconds before one default (validating) normfold fold is killed",
    )
    parser.add_argument(
        "--rss-limit",
        type=float,
        default=8,
        help="GiB of RSS at which a default normfold fold, or an evaluation with the float64 reference, "
        "is killed (the evaluation then runs again without float64)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="write models, outputs, logs and results.json here and keep them (needed by --resume and "
        "--report-only); default: a new temporary folder, removed at the end",
    )
    parser.add_argument(
        "--keep-temp",
        action="store_true",
        help="keep the temporary folder (without --workdir) instead of removing it at the end",
    )
    parser.add_argument(
        "--aimet-python",
        default=os.environ.get("NORMFOLD_BENCH_AIMET_PYTHON"),
        help="a Python with aimet-onnx (and torch) installed, if not this one",
    )
    parser.add_argument(
        "--markdown", type=Path, help="also write the report to this file (benchmarks/RESULTS.md: full runs only)"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="TOOL",
        choices=sorted(PEERS),
        help="leave out a peer (repeatable), e.g. --skip aimet",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip profiling normfold on its worst model")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse per-model results (and phases.json, scale.json) already in --workdir",
    )
    parser.add_argument("--report-only", action="store_true", help="re-render WORKDIR/results.json, measure nothing")
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=7,
        help="rounds of the start-up table (each runs its four commands once; median)",
    )
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up table")
    parser.add_argument(
        "--startup-only",
        action="store_true",
        help="measure only the start-up table and print it (--markdown then writes only it)",
    )
    parser.add_argument(
        "--scale-only",
        action="store_true",
        help="measure only the scale tables: peak RSS and time of fold --no-validate, check and validate "
        "on ~450 MB models split three ways (external data and inline) beside the I/O limit, and a folder of "
        "small models against onnxslim and onnxsim per model (needs ~4 GiB of disk)",
    )
    parser.add_argument(
        "--small-models",
        type=int,
        default=models.SMALL_MODELS,
        help="models in the folder of small models (the scale tables)",
    )
    parser.add_argument(
        "--scale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure the scale tables in this run, after the models (default: yes, but not with --quick or "
        "--models; 20-45 minutes, ~4 GiB of disk)",
    )
    parser.add_argument(
        "--phases",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure the per-BN overhead by phase on stack1000 and stack5000 (default: yes, but not with "
        "--quick or --models; about a minute)",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.models or [] if n not in models.model_names(False, False)]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(models.model_names(False, False))}")
    if args.startup_runs < 1:
        parser.error("--startup-runs must be at least 1")
    if args.small_models < 1:
        parser.error("--small-models must be at least 1")
    if args.scale_only and args.scale is False:
        parser.error("--scale-only measures only the scale tables: --no-scale leaves nothing to measure")
    subset = bool(args.quick or args.models)
    args.no_scale, args.no_phases = args.scale is False, args.phases is False  # partial_run: left out on request
    args.scale = not subset if args.scale is None else args.scale
    args.phases = not subset if args.phases is None else args.phases
    if args.workdir is None and (args.resume or args.report_only):
        parser.error(
            f"--{'resume' if args.resume else 'report-only'} reads an earlier run's folder: give it with "
            "--workdir (a run keeps it when given --workdir, or --keep-temp)"
        )
    if args.workdir is not None and args.keep_temp:
        parser.error("--keep-temp keeps the temporary folder of a run without --workdir; a --workdir is always kept")
    partial = partial_run(args)
    if partial and writes_results(args.markdown):
        parser.error(
            f"{partial}, and {RESULTS.relative_to(HERE.parent)} holds the full run's results: write this "
            "report elsewhere (e.g. --markdown quick.md)"
        )
    args.runs = args.runs or (1 if args.quick else 3)
    args.peer_runs = args.peer_runs or 1
    return args


def partial_run(args: argparse.Namespace) -> str | None:
    """Why this run measures less than the full benchmark, or None for a full run."""
    if args.quick:
        return f"--quick runs {len(models.QUICK)} small models"
    if args.models:
        return "--models runs a subset of the models"
    if args.startup_only:
        return "--startup-only measures only the start-up table"
    if args.scale_only:
        return "--scale-only measures only the scale tables"
    if getattr(args, "no_scale", False):
        return "--no-scale leaves out the scale tables"
    if getattr(args, "no_phases", False):
        return "--no-phases leaves out the per-BN overhead by phase"
    return None


def writes_results(markdown: Path | None) -> bool:
    """Whether --markdown names the committed full results, benchmarks/RESULTS.md."""
    return markdown is not None and markdown.resolve() == RESULTS.resolve()


def recorded_command(argv: Sequence[str] | None = None) -> str:
    """The command line as it ran (interpreter, script and every option), quoted for a shell."""
    return shlex.join(sys.orig_argv if argv is None else argv)


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files below `folder` (links not followed)."""
    return sum(path.lstat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def release_workdir(workdir: Path, temporary: bool, keep: bool) -> str:
    """Remove the temporary folder unless `keep`, and say what became of the folder and how large it was."""
    if not workdir.exists():
        return f"work folder {workdir}: not created"
    size = f"{folder_bytes(workdir) / 10**6:.1f} MB"
    if temporary and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
        return f"removed the temporary folder {workdir} ({size}; --keep-temp keeps it)"
    return f"kept {workdir} ({size}): models, outputs, logs and results.json; delete it with rm -rf {shlex.quote(str(workdir))}"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark in its work folder, then remove or report that folder, also after a failure or Ctrl-C."""
    args = parse_args(argv)
    args.command = recorded_command(None if argv is None else [sys.executable, __file__, *argv])
    temporary = args.workdir is None
    if temporary:
        args.workdir = Path(tempfile.mkdtemp(prefix="normfold-bench-"))
    try:
        benchmark(args)
    finally:
        print(release_workdir(args.workdir, temporary, args.keep_temp), flush=True)


def benchmark(args: argparse.Namespace) -> None:
    """Measure (or, with --report-only, re-render) and print the report; --markdown also writes it."""
    if args.report_only:
        saved = json.loads((args.workdir / "results.json").read_text())
        partial = saved.get("partial")
        if partial and writes_results(args.markdown):
            raise SystemExit(
                f"{args.workdir / 'results.json'} is from a partial run ({partial}); "
                f"{RESULTS.relative_to(HERE.parent)} holds the full run's results: write it elsewhere"
            )
        render(
            args,
            saved["results"],
            saved["header"],
            saved["notes"],
            saved["tools"],
            saved["elapsed"],
            saved.get("startup"),
            saved.get("command", "not recorded"),
            rerendered_by=args.command,
            scale=saved.get("scale"),
            phases=saved.get("phases"),
        )
        return
    if args.startup_only:
        text = "\n".join([f"Command: `{args.command}`", "", *report.startup_lines(measure_startup(args))])
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
        return
    if args.scale_only:
        header = machine()
        for line in header:
            print(line, flush=True)
        started = time.perf_counter()
        measured = scale.measure_scale(run_once, args.workdir, args.runs, args.timeout * 10, args.small_models)
        (args.workdir / "scale.json").write_text(json.dumps(measured))
        text = "\n".join(
            [
                "# normfold at scale",
                "",
                f"Command: `{args.command}`",
                "",
                *[f"- {line}" for line in header],
                f"- benchmark wall time: {time.perf_counter() - started:.0f} s",
                "",
                *report.scale_lines(measured),
            ]
        )
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
        return
    header = machine()
    commands, skipped = available_tools(args.aimet_python)
    for tool in args.skip:
        commands.pop(tool, None)
        skipped[tool] = "left out with --skip"
    names = args.models or models.model_names(args.quick, False)
    notes = [f"skipped peer {tool}: {why}" for tool, why in skipped.items()]
    if args.big:
        why_not = big_fits(args.workdir)
        names += ["big"] if why_not is None else []
        notes += [f"skipped big model: {why_not}"] if why_not else []
    else:
        notes.append("big (>2 GB, external data) model not run: pass --big (needs ~30 GiB disk, ~20 GiB memory)")
    notes.append(
        f"a peer run is killed after {args.timeout:.0f} s (normfold --no-validate, I/O and the ORT session after "
        f"{10 * args.timeout:.0f} s); a default (validating) normfold fold after {args.default_fold_timeout:.0f} s "
        f"or at {args.rss_limit:g} GiB RSS, and then shown as failed"
    )
    notes.append(
        "ORT session: a process that only creates an ONNX Runtime CPU InferenceSession (ORT_DISABLE_ALL, as "
        "normfold validates) on the original model and runs it once on seeded random inputs (symbolic dims 1)"
    )
    notes.append(
        f"float64 reference skipped for models over {FLOAT64_LIMIT / 2**20:.0f} MiB "
        "(onnx's reference evaluator holds a float64 copy of every weight)"
    )
    notes.append(
        f"runs: normfold (--no-validate and default), I/O and ORT session median of {args.runs}; peers median "
        f"of {args.runs} on {' and '.join(report.FOLD_SPEEDUP_MODELS)}, {args.peer_runs} elsewhere, and one run "
        f"when it takes over {SLOW_RUN_S:.0f} s (AIMET: torch import); time is the whole process (interpreter "
        "start and imports included)"
    )
    for line in header + notes:
        print(line, flush=True)
    started = time.perf_counter()
    results = [saved_or_bench(name, args, commands) for name in names]
    phases = saved_or_measure("phases", args, measure_phases) if args.phases else None
    measured_scale = saved_or_measure("scale", args, measure_full_scale) if args.scale else None
    start_up = None if args.no_startup else measure_startup(args)
    elapsed = time.perf_counter() - started
    (args.workdir / "results.json").write_text(
        json.dumps(
            {
                "results": results,
                "header": header,
                "notes": notes,
                "tools": list(commands),
                "elapsed": elapsed,
                "startup": start_up,
                "scale": measured_scale,
                "phases": phases,
                "command": args.command,
                "partial": partial_run(args),
            }
        )
    )
    render(
        args,
        results,
        header,
        notes,
        list(commands),
        elapsed,
        start_up,
        args.command,
        scale=measured_scale,
        phases=phases,
    )


def measure_startup(args: argparse.Namespace) -> dict:
    """The start-up table's measurements (benchmarks/startup.py), in WORKDIR/startup."""
    return startup.measure_startup(run_once, args.workdir / "startup", args.startup_runs)


PHASE_MODELS = ("stack1000", "stack5000")


def saved_or_measure(part: str, args: argparse.Namespace, measure_part: Callable[[argparse.Namespace], dict]) -> dict:
    """A part of the full run (phases, scale): with --resume, WORKDIR/<part>.json from an earlier run, else
    measured now and saved there (also when it failed: {"error": why}, which --resume measures again)."""
    saved = args.workdir / f"{part}.json"
    if args.resume and saved.exists():
        earlier = json.loads(saved.read_text())
        if "error" not in earlier:
            print(f"  {part:28} (from {saved})", flush=True)
            return earlier
    measured = measure_part(args)
    saved.write_text(json.dumps(measured))
    return measured


def measure_phases(args: argparse.Namespace) -> dict:
    """Per-BN overhead by phase on PHASE_MODELS (benchmarks/phases.py, a process of its own), or {"error": why}."""
    paths = [models.write_model(name, args.workdir / "models") for name in PHASE_MODELS]
    print(f"  per-BN overhead by phase on {', '.join(PHASE_MODELS)}, {args.runs} run(s) each", flush=True)
    command = [sys.executable, str(HERE / "phases.py"), "--runs", str(args.runs), str(args.workdir / "phases")]
    try:
        done = subprocess.run(
            [*command, *map(str, paths)], capture_output=True, text=True, timeout=args.timeout * 10 * len(paths)
        )
    except subprocess.TimeoutExpired as expired:
        return {"error": f"timeout after {expired.timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": ((done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])[:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_full_scale(args: argparse.Namespace) -> dict:
    """The scale tables as part of the full run (benchmarks/scale.py), or {"error": why} if they fail."""
    try:
        return scale.measure_scale(run_once, args.workdir, args.runs, args.timeout * 10, args.small_models)
    except (Exception, SystemExit) as error:  # the rest of the run still renders; the report shows why
        return {"error": f"{type(error).__name__}: {error}"[:200]}


def render(
    args: argparse.Namespace,
    results: list[dict],
    header: list[str],
    notes: list[str],
    tools: list[str],
    elapsed: float,
    start_up: dict | None,
    command: str,
    rerendered_by: str | None = None,
    scale: dict | None = None,
    phases: dict | None = None,
) -> None:
    """Print the report and write it to --markdown; it records `command`, the run that measured, and
    `rerendered_by`, the --report-only run that rendered it again; `scale` and `phases` None when not measured."""
    profile = None
    if not args.no_profile:
        profile = report.profile_worst(results, args.workdir, HERE)
    text = report.render(
        results, header, notes, profile, tools, elapsed, start_up, command, rerendered_by, scale, phases
    )
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
