"""Check every tool's output for one model, in its own process (so its memory is returned after it).

    python benchmarks/evaluate.py JOB.json RESULT.json

JOB: {"original": path, "candidates": {tool: path}, "float64": bool, "latency": [tool, ...]}.
For each candidate: BatchNormalization / Dropout / node counts, equivalence with the original on ONNX
Runtime CPU at ORT_DISABLE_ALL (seeded inputs, batch 1; |c - r| <= atol + rtol |r| with rtol 1e-4 and
atol = rtol * max|r|, normfold's float32 defaults), and the max error against the original evaluated in
float64 (normfold.validate.float64.run_float64). For the tools in "latency" and the original: median
inference latency on CPU at ORT_DISABLE_ALL and ORT_ENABLE_ALL.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

RTOL = 1e-4
LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def op_counts(path: str) -> collections.Counter[str]:
    """Node count per op type, subgraphs and functions included."""
    proto = onnx.load(path, load_external_data=False)
    counts: collections.Counter[str] = collections.Counter()

    def walk(nodes) -> None:
        for node in nodes:
            counts[node.op_type] += 1
            for attr in node.attribute:
                for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    walk(graph.node)

    walk(proto.graph.node)
    for function in proto.functions:
        walk(function.node)
    return counts


def session(path: str, level: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def seeded_feeds(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for info in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in info.shape]
        feeds[info.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def equivalence(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[bool, float]:
    """Whether every output is within tolerance, and the largest absolute difference."""
    worst, passed = 0.0, len(reference) == len(candidate)
    for r, c in zip(reference, candidate):
        if r.shape != c.shape:
            return False, float("inf")
        if not np.array_equal(np.isfinite(r), np.isfinite(c)):
            return False, float("inf")
        finite = np.isfinite(r)
        diff = np.abs(r[finite].astype(np.float64) - c[finite].astype(np.float64))
        scale = float(np.abs(r[finite]).max(initial=0.0))
        worst = max(worst, float(diff.max(initial=0.0)))
        passed &= bool(np.all(diff <= RTOL * scale + RTOL * np.abs(r[finite])))
    return passed, worst


def float64_error(outputs: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return max(float(np.nanmax(np.abs(o.astype(np.float64) - t))) for o, t in zip(outputs, truth))


def latency_ms(path: str, level: str, feeds: dict[str, np.ndarray]) -> float:
    """Median of at least 5 runs (up to 30, or 2 s) after one warm-up run."""
    sess = session(path, level)
    sess.run(None, feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (len(times) < 30 and time.perf_counter() - start < 2.0):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def evaluate(job: dict) -> dict:
    original = job["original"]
    reference_session = session(original, "disable")
    feeds = seeded_feeds(reference_session)
    reference = reference_session.run(None, feeds)
    del reference_session
    truth = None
    if job["float64"]:
        from normfold.validate.float64 import run_float64

        truth = run_float64(onnx.load(original), feeds)
    result: dict = {"original": {"ops": op_counts(original)}}
    if truth is not None:
        result["original"]["float64_error"] = float64_error(reference, truth)
    for tool, path in job["candidates"].items():
        entry: dict = {}
        try:
            entry["ops"] = op_counts(path)
            outputs = session(path, "disable").run(None, feeds)
            entry["equivalent"], entry["max_abs_diff"] = equivalence(reference, outputs)
            if truth is not None:
                entry["float64_error"] = float64_error(outputs, truth)
        except Exception as error:  # a peer's output that ONNX Runtime cannot load is a result, not a crash
            entry["error"] = " ".join(str(error).split())[:300]
        result[tool] = entry
    for tool in ["original", *job["latency"]]:
        path = original if tool == "original" else job["candidates"].get(tool)
        if path is None or "error" in result.get(tool, {}):
            continue
        result[tool]["latency_ms"] = {}
        for level in LEVELS:
            try:
                result[tool]["latency_ms"][level] = latency_ms(path, level, feeds)
            except Exception as error:  # e.g. ORT's own fusions at ENABLE_ALL exceeding its 2 GB limit
                result[tool]["latency_ms"][level] = None
                result[tool].setdefault("latency_errors", {})[level] = " ".join(str(error).split())[:300]
    return result


if __name__ == "__main__":
    job_file, result_file = sys.argv[1:3]
    Path(result_file).write_text(json.dumps(evaluate(json.loads(Path(job_file).read_text()))))
