"""Tables and the benchmark's targets from benchmarks/run.py's measurements (markdown, also printed)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from scale import ONE_PROCESS, TWO_JOBS
from startup import BASELINE, START_UP_LIMIT

MiB = 2**20
PEER_NAMES = ("onnxscript", "onnxoptimizer", "onnxsim", "onnxslim", "ort-basic", "aimet")
FOLD_SPEEDUP_MODELS = ("resnet50", "stack1000")
RSS_TARGET_MIN_BYTES = 400 * 10**6
# (label, numerator, denominator, field, limit): the default (validating) fold against --no-validate in time,
# and against a process that only creates an ONNX Runtime session and runs it once in peak RSS.
DEFAULT_FOLD_TARGETS = (
    ("6. default fold time <= 2x --no-validate", "normfold-default", "normfold", "seconds", 2.0),
    ("7. default fold peak RSS <= 2x ONNX Runtime session peak", "normfold-default", "ort-session", "rss", 2.0),
)
DEFAULT_FOLD_NAMES = {"normfold-default": "default fold", "normfold": "--no-validate", "ort-session": "ORT session"}
LABELS = {"io": "I/O limit", "normfold-default": "normfold default (validated)", "ort-session": "ORT session"}


def _table(head: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def _e(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:.0f}"


def _ops(entry: dict) -> tuple[int, int, int]:
    ops = entry.get("ops", {})
    return ops.get("BatchNormalization", 0), ops.get("Dropout", 0), sum(ops.values())


def _seconds(result: dict, tool: str) -> float | None:
    return result["timings"].get(tool, {}).get("seconds")


def ratio(result: dict) -> float | None:
    nf, io = _seconds(result, "normfold"), _seconds(result, "io")
    return None if nf is None or not io else nf / io


def model_rows(results: list[dict]) -> list[str]:
    rows = []
    for r in results:
        original = r["checks"].get("original", {})
        bn, dropout, nodes = _ops(original)
        f64 = _e(original.get("float64_error")) if r["float64"] else (r.get("float64_note") or "skipped (> 200 MiB)")
        rows.append([r["name"], f"{r['bytes'] / MiB:.1f}", "yes" if r["external"] else "no", bn, dropout, nodes, f64])
    return _table(["model", "MiB", "external data", "BN", "Dropout", "nodes", "original's max error vs float64"], rows)


def tool_rows(results: list[dict], tools: list[str]) -> list[str]:
    rows = []
    for r in results:
        original_f64 = r["checks"].get("original", {}).get("float64_error")
        for tool in tools:
            timing = r["timings"].get(tool)
            if timing is None:
                continue
            label = LABELS.get(tool, tool)
            if timing["error"]:
                rows.append([r["name"], label, "FAILED", "-", "-", "-", "-", timing["error"].replace("|", "/"), "-"])
                continue
            check = r["checks"].get(tool, {})
            if tool in ("io", "ort-session"):
                rows.append([r["name"], label, _s(timing["seconds"]), _mib(timing["rss"]), "", "", "", "", ""])
                continue
            bn, dropout, nodes = _ops(check)
            if "error" in check:
                verdict = f"ORT cannot run it: {check['error'][:80]}".replace("|", "/")
            else:
                verdict = f"{'yes' if check.get('equivalent') else 'NO'} ({_e(check.get('max_abs_diff'))})"
            f64 = f"{_e(check.get('float64_error'))} (orig {_e(original_f64)})" if "float64_error" in check else "-"
            rows.append(
                [r["name"], label, _s(timing["seconds"]), _mib(timing["rss"]), bn, dropout, nodes, verdict, f64]
            )
    head = [
        "model",
        "tool",
        "time s",
        "peak RSS MiB",
        "BN left",
        "Dropout left",
        "nodes",
        "equivalent (max abs diff)",
        "max error vs float64",
    ]
    return _table(head, rows)


def io_rows(results: list[dict]) -> list[str]:
    rows = []
    for r in results:
        nf, io = r["timings"]["normfold"], r["timings"]["io"]
        rss_ratio = f"{nf['rss'] / r['bytes']:.2f}" if nf["rss"] else "-"
        rows.append(
            [
                r["name"],
                _s(io["seconds"]),
                _s(nf["seconds"]),
                _s(ratio(r)),
                _mib(io["rss"]),
                _mib(nf["rss"]),
                f"{r['bytes'] / MiB:.1f}",
                rss_ratio,
            ]
        )
    head = [
        "model",
        "I/O limit s",
        "normfold s",
        "normfold / I/O",
        "I/O RSS MiB",
        "normfold RSS MiB",
        "model MiB",
        "normfold RSS / model size",
    ]
    return _table(head, rows)


def _timing(result: dict, tool: str) -> dict | None:
    """A tool's timing; None when it was not run (e.g. results saved before it was measured)."""
    return result["timings"].get(tool)


def _failed(timing: dict | None) -> str:
    return "not run" if timing is None else "FAILED: " + timing["error"].replace("|", "/")


def _ratio(result: dict, numerator: str, denominator: str, field: str) -> tuple[float | None, str | None]:
    """One tool's `field` (seconds, rss) over another's on a model, or why it cannot be computed."""
    for tool in (numerator, denominator):
        timing = _timing(result, tool)
        if timing is None or timing["error"]:
            return None, f"{DEFAULT_FOLD_NAMES[tool]} {_failed(timing)}"
    return _timing(result, numerator)[field] / _timing(result, denominator)[field], None


def _time_rss(timing: dict | None) -> list[str]:
    if timing is None or timing["error"]:
        return [_failed(timing), "-"]
    return [_s(timing["seconds"]), _mib(timing["rss"])]


def default_fold_rows(results: list[dict]) -> list[str]:
    rows = []
    for r in results:
        time_ratio, rss_ratio = (_ratio(r, *target[1:4])[0] for target in DEFAULT_FOLD_TARGETS)
        rows.append(
            [
                r["name"],
                *_time_rss(_timing(r, "normfold")),
                *_time_rss(_timing(r, "normfold-default")),
                _s(time_ratio),
                *_time_rss(_timing(r, "ort-session")),
                _s(rss_ratio),
            ]
        )
    head = [
        "model",
        "--no-validate s",
        "--no-validate RSS MiB",
        "default s",
        "default RSS MiB",
        "default / --no-validate time",
        "ORT session s",
        "ORT session RSS MiB",
        "default RSS / ORT session RSS",
    ]
    return _table(head, rows)


def latency_rows(results: list[dict]) -> list[str]:
    rows = []
    for r in results:
        original, folded = r["checks"].get("original", {}), r["checks"].get("normfold", {})
        if "latency_ms" not in original or "latency_ms" not in folded:
            continue
        o, f = original["latency_ms"], folded["latency_ms"]
        cells = [r["name"]]
        for level in ("disable", "all"):
            before, after = o.get(level), f.get(level)
            speedup = f"{before / after:.2f}x" if before is not None and after is not None else "-"
            cells += [_ms(before), _ms(after), speedup]
        rows.append(cells)
    head = [
        "model",
        "original DISABLE_ALL ms",
        "folded DISABLE_ALL ms",
        "speed-up",
        "original ENABLE_ALL ms",
        "folded ENABLE_ALL ms",
        "speed-up",
    ]
    return _table(head, rows)


def _ms(value: float | None) -> str:
    return "failed" if value is None else f"{value:.2f}"


def layer_rows(results: list[dict]) -> list[str]:
    rows = []
    for r in results:
        if not r["name"].startswith("stack"):
            continue
        depth = int(r["name"][5:])
        nf, io = _seconds(r, "normfold"), _seconds(r, "io")
        if nf is None or io is None:
            continue
        rows.append([depth, _s(nf), _s(io), f"{nf / depth * 1e3:.2f}", f"{(nf - io) / depth * 1e3:.2f}"])
    return _table(["layers", "normfold s", "I/O limit s", "ms per layer", "ms per layer beyond I/O"], rows)


def targets(
    results: list[dict], scale: dict | None = None, startup: dict | None = None, phases: dict | None = None
) -> list[tuple[str, str, str]]:
    """(target, PASS/MISS/n/a, measured) for targets 1-5 (time, speed, memory, error, what is left), 6-7 (the
    default fold) and 8-11 (scale, deep stacks, start-up, folder of small models; n/a where not measured)."""
    out = []
    ratios = {r["name"]: ratio(r) for r in results if ratio(r) is not None}
    over = {k: v for k, v in ratios.items() if v > 1.3}
    worst = max(ratios, key=ratios.get) if ratios else None
    out.append(
        (
            "1. normfold fold time <= 1.3x I/O limit on every model",
            "MISS" if over else "PASS",
            f"worst {worst} {ratios.get(worst, 0):.2f}x; over 1.3x: "
            + (", ".join(f"{k} {v:.2f}x" for k, v in over.items()) or "none"),
        )
    )
    measured, missed = [], False
    for r in results:
        if r["name"] not in FOLD_SPEEDUP_MODELS:
            continue
        nf = _seconds(r, "normfold")
        peers = {t: _seconds(r, t) for t in PEER_NAMES if _seconds(r, t) is not None}
        slower = {t: s for t, s in peers.items() if nf is None or s <= nf}
        missed |= bool(slower)
        fastest = min(peers, key=peers.get) if peers else None
        measured.append(
            f"{r['name']}: normfold {_s(nf)} s, fastest peer {fastest} {_s(peers.get(fastest))} s"
            + (f" (faster than normfold: {', '.join(slower)})" if slower else "")
        )
    out.append(
        (
            "2. normfold faster than every peer on ResNet-50 and the 1000-layer stack",
            "n/a" if not measured else ("MISS" if missed else "PASS"),
            "; ".join(measured) or "models not in this run",
        )
    )
    big = [r for r in results if r["bytes"] >= RSS_TARGET_MIN_BYTES and r["timings"]["normfold"]["rss"]]
    rss = {r["name"]: r["timings"]["normfold"]["rss"] / r["bytes"] for r in big}
    out.append(
        (
            "3. peak RSS <= 0.5x model size for models >= 400 MB",
            "n/a" if not rss else ("MISS" if max(rss.values()) > 0.5 else "PASS"),
            ", ".join(
                f"{k} {v:.2f}x ({r['timings']['normfold']['rss'] / MiB:.0f} MiB of {r['bytes'] / MiB:.0f} MiB)"
                for (k, v), r in zip(rss.items(), big)
            )
            or "no model >= 400 MB in this run",
        )
    )
    errors = []
    for r in results:
        original, folded = r["checks"].get("original", {}), r["checks"].get("normfold", {})
        if "float64_error" in original and "float64_error" in folded:
            errors.append((r["name"], folded["float64_error"], original["float64_error"]))
    bad = [e for e in errors if e[1] > 1.05 * e[2]]
    worst_e = max(errors, key=lambda e: e[1] / e[2] if e[2] else float("inf")) if errors else None
    out.append(
        (
            "4. folded error vs float64 <= 1.05x original's",
            "n/a" if not errors else ("MISS" if bad else "PASS"),
            (
                f"worst {worst_e[0]} {worst_e[1]:.2e} vs {worst_e[2]:.2e} ({worst_e[1] / worst_e[2]:.2f}x)"
                if worst_e
                else ""
            )
            + ("; over: " + ", ".join(f"{n} {a / b:.2f}x" for n, a, b in bad) if bad else ""),
        )
    )
    left = []
    for r in results:
        checks = r["checks"]
        nf_bn, nf_drop, _ = _ops(checks.get("normfold", {}))
        for tool in PEER_NAMES:
            entry = checks.get(tool, {})
            if "ops" not in entry or not entry.get("equivalent"):
                continue
            bn, drop, _ = _ops(entry)
            if bn < nf_bn or drop < nf_drop:
                left.append(f"{r['name']}: normfold leaves BN {nf_bn} / Dropout {nf_drop}, {tool} {bn} / {drop}")
    out.append(
        (
            "5. no BN/Dropout left that an (equivalent) peer removes",
            "MISS" if left else "PASS",
            "; ".join(left) or "normfold leaves no more BN or Dropout than any peer whose output is equivalent",
        )
    )
    out += default_fold_targets(results)
    out += scale_targets(results, scale, startup, phases)
    return out


def default_fold_targets(results: list[dict]) -> list[tuple[str, str, str]]:
    """Targets 6 and 7: a failed or killed default fold is a miss, with its reason."""
    measured = [r for r in results if _timing(r, "normfold-default") is not None]
    out = []
    for label, numerator, denominator, field, limit in DEFAULT_FOLD_TARGETS:
        ratios = {r["name"]: _ratio(r, numerator, denominator, field) for r in measured}
        values = {name: value for name, (value, _) in ratios.items() if value is not None}
        failed = [f"{name}: {why}" for name, (_, why) in ratios.items() if why]
        over = {name: value for name, value in values.items() if value > limit}
        worst = max(values, key=values.get) if values else None
        text = (
            [
                f"worst {worst} {values[worst]:.2f}x",
                f"over {limit:g}x: " + (", ".join(f"{k} {v:.2f}x" for k, v in over.items()) or "none"),
            ]
            if worst
            else []
        )
        result = "n/a" if not measured else ("MISS" if over or failed else "PASS")
        out.append((label, result, "; ".join(text + failed).replace("|", "/") or "not measured in this run"))
    return out


def profile_worst(results: list[dict], workdir: Path, here: Path) -> list[dict]:
    """cProfile + phase times of normfold on the model with the worst normfold / I/O ratio, and on the deepest stack."""
    ratios = {r["name"]: ratio(r) for r in results if ratio(r) is not None}
    chosen = [max(ratios, key=ratios.get)] if ratios else []
    deepest = [r["name"] for r in results if r["name"].startswith("stack")]
    chosen += [deepest[-1]] if deepest and deepest[-1] not in chosen else []
    profiles = []
    for name in chosen:
        model = workdir / "models" / f"{name}.onnx"
        output = workdir / "out" / name / "profile.onnx"
        done = subprocess.run(
            [sys.executable, str(here / "profile_normfold.py"), str(model), str(output)], capture_output=True, text=True
        )
        if done.returncode == 0:
            profiles.append({"model": name} | json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            profiles.append({"model": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
    return profiles


def profile_lines(profiles: list[dict]) -> list[str]:
    lines = []
    for p in profiles:
        lines.append(f"### normfold on {p['model']}")
        lines.append("")
        if "error" in p:
            lines += [f"profiling failed: {p['error']}", ""]
            continue
        ph = p["phases"]
        total = ph["import"] + ph["load_model"] + ph["fold"] + ph["save_model"]
        lines.append("In-process phases of `normfold fold --no-validate` (seconds, share of their sum):")
        lines.append("")
        rows = [[k, f"{ph[k]:.3f}", f"{ph[k] / total:.0%}"] for k in ("import", "load_model", "fold", "save_model")]
        inner = [k for k in ph if k.startswith(("load:", "save:"))]
        rows += [[f"  {k}", f"{ph[k]:.3f}", f"{ph[k] / total:.0%}"] for k in inner]
        lines += _table(["phase", "s", "share"], rows)
        lines.append("Top functions by own time (cProfile, load + fold + save):")
        lines.append("")
        lines += _table(
            ["function", "calls", "own s", "cumulative s"],
            [[t["function"], t["calls"], f"{t['tottime']:.3f}", f"{t['cumtime']:.3f}"] for t in p["top"]],
        )
    return lines


def startup_lines(startup: dict | None) -> list[str]:
    """The start-up section: median seconds per command, its ratio to `import onnx`, PASS/MISS against the limit."""
    lines = ["## Start-up", ""]
    if startup is None:
        return lines + ["not measured in this run (--no-startup, or results saved before it was measured)", ""]
    if "error" in startup:
        return lines + [f"FAILED: {startup['error']}".replace("|", "/"), ""]
    lines += [
        f"Whole process, from the repository root; median of {startup['runs']} rounds, each running the four "
        "commands one after another (a first warm-up round not counted). Target: each normfold command at "
        f"most {START_UP_LIMIT:g}x `{BASELINE}`.",
        "",
    ]
    medians = {label: statistics.median(times) for label, times in startup["times"].items()}
    rows = []
    for label, median in medians.items():
        times = startup["times"][label]
        ratio_to_base = median / medians[BASELINE]
        verdict = "baseline" if label == BASELINE else ("PASS" if ratio_to_base <= START_UP_LIMIT else "MISS")
        rows.append([f"`{label}`", _s(median), f"{min(times):.2f}-{max(times):.2f}", f"{ratio_to_base:.2f}x", verdict])
    return lines + _table(["command", "median s", "min-max s", "/ import onnx", f"<= {START_UP_LIMIT:g}x"], rows)


def render(
    results: list[dict],
    header: list[str],
    notes: list[str],
    profiles: list[dict] | None,
    tools: list[str],
    elapsed: float,
    startup: dict | None,
    command: str,
    rerendered_by: str | None = None,
    scale: dict | None = None,
    phases: dict | None = None,
) -> str:
    """The whole report; `command` is the command line that measured, `rerendered_by` a --report-only run's;
    `scale` (benchmarks/scale.py) and `phases` (benchmarks/phases.py) None when not measured."""
    failed = [f"evaluation of {r['name']} failed: {r['checks']['error']}" for r in results if "error" in r["checks"]]
    again = f" (re-rendered by `{rerendered_by}`)" if rerendered_by else ""
    lines = ["# normfold benchmark", "", f"Command: `{command}`{again}", ""]
    lines += [f"- {line}" for line in header + notes + failed] + [f"- benchmark wall time: {elapsed:.0f} s", ""]
    lines += ["## Targets", ""]
    lines += _table(["target", "result", "measured"], [list(t) for t in targets(results, scale, startup, phases)])
    lines += ["## Models", ""] + model_rows(results)
    lines += [
        "## Every tool on every model",
        "",
        "Time: whole process, median. Equivalent: ORT CPU at ORT_DISABLE_ALL, seeded inputs, batch 1, "
        "rtol 1e-4 and atol 1e-4 x max|ref|. Error vs float64: max abs error of the tool's output against the "
        "original model evaluated in float64, with the original's own error beside it.",
        "",
    ]
    lines += tool_rows(results, tools)
    lines += ["## normfold against the I/O limit (onnx_ir.load + onnx_ir.save)", ""] + io_rows(results)
    lines += [
        "## normfold's default fold (validation on) against --no-validate and an ONNX Runtime session",
        "",
        "Default: `normfold fold MODEL -o OUT` (validation on, float64 reference as by default). ORT session: a "
        "process that only creates an ONNX Runtime CPU session (ORT_DISABLE_ALL, as normfold validates) on the "
        "original model and runs it once on seeded random inputs. Time: whole process, median; RSS: peak.",
        "",
    ]
    lines += default_fold_rows(results)
    lines += ["## Inference latency on ONNX Runtime CPU (batch 1, median)", ""] + latency_rows(results)
    lines += ["## Fold time per layer (Conv+BN+ReLU stacks)", ""] + layer_rows(results)
    lines += startup_lines(startup)
    if profiles:
        lines += ["## Where normfold's time goes", ""] + profile_lines(profiles)
    lines += phases_lines(phases)
    lines += (
        scale_lines(scale) if scale is not None else ["## Memory however the weights are split", "", SCALE_ABSENT, ""]
    )
    return "\n".join(lines) + "\n"


SCALE_RSS_LIMIT = 0.5
FOLD_TIME_LIMIT = 1.3
# The scale tools measured against the model's size (scale.SCALE_TOOLS less the I/O limit), as the report names them.
SCALE_TOOL_NAMES = {"normfold": "fold --no-validate", "check": "check", "validate": "validate"}
TIME_TARGET_STACKS = ("stack1000", "stack5000")
SCALE_ABSENT = "not measured in this run (--no-scale; --quick and --models leave it out unless --scale)"
PHASES_ABSENT = "not measured in this run (--no-phases; --quick and --models leave it out unless --phases)"
STARTUP_ABSENT = "not measured in this run (--no-startup, or results saved before it was measured)"
PHASE_NAMES = ("load", "fold", "save")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _scale_rss(entry: dict, tool: str) -> tuple[float | None, str | None]:
    """A scale tool's peak RSS over the model's size, or why there is none ("not run", "FAILED: ...")."""
    timing = entry["tools"].get(tool)
    if timing is None:
        return None, "not run"
    if "error" in timing:
        return None, f"FAILED: {timing['error']}".replace("|", "/")
    return timing["rss"] / entry["bytes"], None


def _scale_time_ratio(entry: dict) -> tuple[float | None, str | None]:
    """Median fold --no-validate time over the median I/O limit time on a scale model, or why there is none."""
    medians = []
    for tool, name in (("normfold", "fold"), ("io", "I/O limit")):
        timing = entry["tools"].get(tool)
        median = None if timing is None or "error" in timing else _median(timing["seconds"])
        if not median:
            return None, f"{name} {'not run' if timing is None else 'FAILED'}"
        medians.append(median)
    return medians[0] / medians[1], None


def _scale_cells(entry: dict, tool: str) -> list[str]:
    """Peak RSS MiB, / size, PASS/MISS against SCALE_RSS_LIMIT and median seconds of one scale tool."""
    value, why = _scale_rss(entry, tool)
    if value is None:
        return [str(why), "-", "-", "-"]
    timing = entry["tools"][tool]
    verdict = "PASS" if value <= SCALE_RSS_LIMIT else "MISS"
    return [_mib(timing["rss"]), f"{value:.2f}x", verdict, _s(_median(timing["seconds"]))]


def _scale_model_cells(entry: dict) -> list[object]:
    return [entry["name"], entry["weights"], _mib(entry["bytes"]), "yes" if entry["external"] else "no"]


def scale_lines(scale: dict) -> list[str]:
    """The scale sections: peak RSS / model size of fold --no-validate and its time against the I/O limit per
    model, the same for check and validate, then the folder's models per second per way of folding it."""
    if "error" in scale:
        return ["## Memory however the weights are split", "", f"FAILED: {scale['error']}".replace("|", "/"), ""]
    runs = scale["runs"]
    lines = [
        "## Memory however the weights are split",
        "",
        f"`normfold fold MODEL -o OUT --no-validate` beside the I/O limit (onnx_ir.load + onnx_ir.save of the "
        f"same model, external data memory-mapped), run one after the other in each of {runs} round(s). "
        "Models: about 450 MB of Conv 3x3 + BN layers as one weight, forty of 11 MB or four thousand of "
        f"0.11 MB. Peak RSS: the largest of the runs; time: whole process, median. Targets: peak RSS <= "
        f"{SCALE_RSS_LIMIT:g}x the model's size, time <= {FOLD_TIME_LIMIT:g}x the I/O limit's.",
        "",
    ]
    rows = []
    for entry in scale["models"]:
        io = entry["tools"]["io"]
        io_s = _median(io["seconds"])
        io_cells = (
            ["-", "-", "-"] if "error" in io else [_mib(io["rss"]), f"{io['rss'] / entry['bytes']:.2f}x", _s(io_s)]
        )
        time_ratio, why = _scale_time_ratio(entry)
        time_cells = (
            [why or "-", "-"] if time_ratio is None else [f"{time_ratio:.2f}x", _verdict(time_ratio, FOLD_TIME_LIMIT)]
        )
        rows.append([*_scale_model_cells(entry), *_scale_cells(entry, "normfold"), *io_cells, *time_cells])
    lines += _table(
        [
            "model",
            "weights",
            "MiB",
            "external data",
            "normfold peak RSS MiB",
            "/ size",
            f"<= {SCALE_RSS_LIMIT:g}x",
            "normfold s",
            "I/O limit RSS MiB",
            "I/O / size",
            "I/O s",
            "time / I/O",
            f"<= {FOLD_TIME_LIMIT:g}x",
        ],
        rows,
    )
    lines += ["## check and validate however the weights are split", ""]
    if not any(tool in entry["tools"] for entry in scale["models"] for tool in ("check", "validate")):
        lines += ["not measured (results saved before check and validate were measured)", ""]
    else:
        lines += [
            "In the same rounds, right after the fold: `normfold check MODEL` (exit 1, not deployment-ready, is "
            "a finished run) and `normfold validate MODEL OUT --provider cpu` on that round's fold output (float64 "
            "reference as by default; exit 1 means not equivalent and is a failure). Peak RSS: the largest of "
            f"the runs; time: whole process, median. Target: peak RSS <= {SCALE_RSS_LIMIT:g}x the model's size.",
            "",
        ]
        rows = [
            [*_scale_model_cells(entry), *_scale_cells(entry, "check"), *_scale_cells(entry, "validate")]
            for entry in scale["models"]
        ]
        limit = f"<= {SCALE_RSS_LIMIT:g}x"
        lines += _table(
            [
                "model",
                "weights",
                "MiB",
                "external data",
                "check peak RSS MiB",
                "/ size",
                limit,
                "check s",
                "validate peak RSS MiB",
                "/ size",
                limit,
                "validate s",
            ],
            rows,
        )
    folder = scale["folder"]
    lines += [
        f"## A folder of {folder['count']} small models",
        "",
        f"{folder['count']} small CNNs ({folder['bytes'] / folder['count'] / 1e6:.2f} MB each: five "
        "Conv+BN+ReLU, 16 to 64 channels, a Gemm). normfold folds the folder in one invocation; onnxslim "
        "and onnxsim run once per model, a process each, as a shell loop runs them (the sum of those "
        f"processes' wall times). Median of {folder['runs']} round(s), each running every way once.",
        "",
    ]
    medians = {way: _median(times) for way, times in folder["times"].items()}
    first = next((m for m in medians.values() if m), None)
    rows = []
    for way, median in medians.items():
        if way in folder["errors"]:
            rows.append([f"`{way}`", f"FAILED: {folder['errors'][way]}".replace("|", "/"), "-", "-"])
        elif median:
            rows.append(
                [
                    f"`{way}`",
                    _s(median),
                    f"{folder['count'] / median:.1f}",
                    "-" if first is None else f"{median / first:.2f}x",
                ]
            )
    rows += [[f"`{way}`", f"skipped: {why}", "-", "-"] for way, why in folder["errors"].items() if way not in medians]
    return lines + _table(["way", "wall s", "models/s", "time / one normfold process"], rows)


def _verdict(value: float, limit: float) -> str:
    return "PASS" if value <= limit else "MISS"


def phases_lines(phases: dict | None) -> list[str]:
    """The per-BN overhead section: seconds and microseconds per BatchNormalization of each library phase of
    `normfold fold --no-validate`, per model, and per BN more between the smallest and the largest model."""
    lines = ["## Per-BN overhead by phase", ""]
    if phases is None:
        return lines + [PHASES_ABSENT, ""]
    if "error" in phases:
        return lines + [f"FAILED: {phases['error']}".replace("|", "/"), ""]
    lines += [
        "The library calls of `normfold fold --no-validate`, timed with time.perf_counter in one process "
        "(benchmarks/phases.py; imports paid before, not counted): load = "
        "`normfold.model_reading.load_model_file(path, keep_proto=False)`, fold = "
        "`normfold.folding.fold(model, in_place=True)` and `normfold.mapped_pages.return_freed_heap()`, save = "
        "`normfold.atomic_write.save_model(model, out)` (onnx's full check included). Median of "
        f"{phases['runs']} run(s) per phase; per BN: the phase's seconds over the model's BatchNormalization "
        "nodes. The last row divides the difference between the largest and the smallest model by the BNs "
        "between them, so costs paid once per model cancel out.",
        "",
    ]
    measured = sorted(phases["models"], key=lambda m: m["bn"])
    rows, medians = [], {}
    for entry in measured:
        median = {phase: statistics.median(entry["seconds"][phase]) for phase in PHASE_NAMES}
        medians[entry["name"]] = median
        rows.append(_phase_row(entry["name"], entry["bn"], median))
    if len(measured) >= 2 and measured[-1]["bn"] > measured[0]["bn"]:
        small, large = measured[0], measured[-1]
        difference = {p: medians[large["name"]][p] - medians[small["name"]][p] for p in PHASE_NAMES}
        rows.append(_phase_row(f"{large['name']} - {small['name']}", large["bn"] - small["bn"], difference))
    head = ["model", "BN", *(f"{p} s" for p in PHASE_NAMES), "sum s", *(f"{p} us/BN" for p in PHASE_NAMES), "sum us/BN"]
    return lines + _table(head, rows)


def _phase_row(name: str, bn: int, seconds: dict[str, float]) -> list[object]:
    total = sum(seconds.values())
    per_bn = [f"{seconds[p] / bn * 1e6:.0f}" if bn else "-" for p in PHASE_NAMES]
    return [
        name,
        bn,
        *(f"{seconds[p]:.3f}" for p in PHASE_NAMES),
        f"{total:.3f}",
        *per_bn,
        f"{total / bn * 1e6:.0f}" if bn else "-",
    ]


def scale_targets(
    results: list[dict], scale: dict | None, startup: dict | None, phases: dict | None
) -> list[tuple[str, str, str]]:
    """Targets 8-11: memory of fold, check and validate at scale, fold time against the I/O limit on the deep
    stacks and the scale models, start-up, and the folder of small models; n/a, with why, where not measured."""
    return [
        _scale_rss_target(scale),
        _fold_time_target(results, scale, phases),
        _startup_target(startup),
        _folder_target(scale),
    ]


def _scale_rss_target(scale: dict | None) -> tuple[str, str, str]:
    label = f"8. peak RSS <= {SCALE_RSS_LIMIT:g}x model size for fold, check and validate on every scale model"
    if scale is None:
        return label, "n/a", f"scale tables {SCALE_ABSENT}"
    if "error" in scale:
        return label, "n/a", f"scale measurement FAILED: {scale['error']}".replace("|", "/")
    parts, over_any, unmeasured = [], False, False
    for tool, name in SCALE_TOOL_NAMES.items():
        measured = {e["name"]: (e, *_scale_rss(e, tool)) for e in scale["models"] if tool in e["tools"]}
        if not measured:
            unmeasured = True
            parts.append(f"{name}: not measured")
            continue
        values = {n: v for n, (_, v, _) in measured.items() if v is not None}
        failed = [f"{n} {why}" for n, (_, v, why) in measured.items() if v is None]
        over = [n for n, v in values.items() if v > SCALE_RSS_LIMIT]
        over_any |= bool(over or failed)
        text = f"{name}: "
        if values:
            worst = max(values, key=values.__getitem__)
            entry = measured[worst][0]
            text += (
                f"worst {worst} {values[worst]:.2f}x ({entry['tools'][tool]['rss'] / MiB:.0f} MiB of "
                f"{entry['bytes'] / MiB:.0f} MiB), over {SCALE_RSS_LIMIT:g}x on {len(over)} of {len(measured)}"
            )
        text += ("; " if values and failed else "") + "; ".join(failed)
        parts.append(text)
    result = "MISS" if over_any else ("n/a" if unmeasured else "PASS")
    return label, result, "; ".join(parts).replace("|", "/")


def _fold_time_target(results: list[dict], scale: dict | None, phases: dict | None) -> tuple[str, str, str]:
    label = (
        f"9. fold --no-validate <= {FOLD_TIME_LIMIT:g}x I/O limit on {', '.join(TIME_TARGET_STACKS)} and the "
        "scale models"
    )
    values: dict[str, float] = {}
    problems, failed = [], False
    by_name = {r["name"]: r for r in results}
    for name in TIME_TARGET_STACKS:
        value = ratio(by_name[name]) if name in by_name else None
        if name not in by_name:
            problems.append(f"{name} not in this run")
        elif value is None:
            failed = True
            problems.append(f"{name}: fold or I/O limit failed")
        else:
            values[name] = value
    if scale is None or "error" in scale:
        problems.append("scale models " + ("not measured (--no-scale)" if scale is None else "FAILED"))
    else:
        for entry in scale["models"]:
            value, why = _scale_time_ratio(entry)
            if value is None:
                failed = True
                problems.append(f"{entry['name']}: {why}")
            else:
                values[entry["name"]] = value
    over = {n: v for n, v in values.items() if v > FOLD_TIME_LIMIT}
    parts = []
    if values:
        worst = max(values, key=values.__getitem__)
        parts.append(
            f"worst {worst} {values[worst]:.2f}x; over {FOLD_TIME_LIMIT:g}x: "
            + (", ".join(f"{n} {v:.2f}x" for n, v in over.items()) or "none")
        )
    parts += problems
    if phases and "models" in phases:
        per_bn = [
            f"{m['name']} " + "/".join(f"{statistics.median(m['seconds'][p]) / m['bn'] * 1e6:.0f}" for p in PHASE_NAMES)
            for m in phases["models"]
            if m["bn"]
        ]
        parts.append(f"per-BN us load/fold/save: {', '.join(per_bn)} (see Per-BN overhead by phase)")
    else:
        parts.append("per-BN overhead by phase " + ("FAILED" if phases else "not measured"))
    if over or failed:
        result = "MISS"
    elif not values:
        result = "n/a"
    else:
        result = "PASS" if not problems else "n/a"
    return label, result, "; ".join(parts).replace("|", "/")


def _startup_target(startup: dict | None) -> tuple[str, str, str]:
    label = f"10. start-up <= {START_UP_LIMIT:g}x `{BASELINE}`"
    if startup is None:
        return label, "n/a", STARTUP_ABSENT
    if "error" in startup:
        return label, "MISS", f"FAILED: {startup['error']}".replace("|", "/")
    medians = {name: statistics.median(times) for name, times in startup["times"].items()}
    base = medians[BASELINE]
    ratios = {name: median / base for name, median in medians.items() if name != BASELINE}
    over = {name: value for name, value in ratios.items() if value > START_UP_LIMIT}
    text = ", ".join(f"`{name}` {medians[name]:.2f} s ({value:.2f}x)" for name, value in ratios.items())
    return label, "MISS" if over else "PASS", f"`{BASELINE}` {base:.2f} s; {text}"


def _folder_target(scale: dict | None) -> tuple[str, str, str]:
    label = "11. folder of small models in one invocation: models/s against each peer per model and -j 2"
    if scale is None:
        return label, "n/a", f"folder of small models {SCALE_ABSENT}"
    if "error" in scale:
        return label, "n/a", f"scale measurement FAILED: {scale['error']}".replace("|", "/")
    folder = scale["folder"]
    count, errors = folder["count"], folder["errors"]
    medians = {way: _median(times) for way, times in folder["times"].items()}
    one = medians.get(ONE_PROCESS)
    if one is None or ONE_PROCESS in errors:
        return label, "MISS", f"`{ONE_PROCESS}` FAILED: {errors.get(ONE_PROCESS, 'not measured')}".replace("|", "/")
    parts = [f"{count} models, one process {count / one:.1f} models/s ({one:.2f} s)"]
    two = medians.get(TWO_JOBS)
    if two and TWO_JOBS not in errors:
        parts.append(f"-j 2 {count / two:.1f} models/s ({two / one:.2f}x the time)")
    elif TWO_JOBS in errors:
        parts.append(f"-j 2 FAILED: {errors[TWO_JOBS]}")
    beaten: list[str] = []
    slower: list[str] = []
    for way in dict.fromkeys([*medians, *errors]):
        if way in (ONE_PROCESS, TWO_JOBS):
            continue
        peer = way.split(" ", 1)[0]
        median = medians.get(way)
        if way in errors:
            parts.append(f"{peer} {'FAILED' if way in medians else 'skipped'}: {errors[way]}")
        elif median:
            parts.append(f"{peer} per model {count / median:.1f} models/s ({median / one:.1f}x normfold's time)")
            (beaten if median > one else slower).append(way)
    result = "MISS" if slower else ("PASS" if beaten else "n/a")
    return label, result, "; ".join(parts).replace("|", "/")
