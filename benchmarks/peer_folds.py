"""Compare normfold's fold with peer optimizers on full-size torchvision exports.

    python benchmarks/peer_folds.py MODEL.onnx... [--work DIR] [--tools TOOL...] [--rerun] [--json FILE]

For each MODEL, every tool runs as its own process (its wall time is the whole process: start, imports, load,
transform, save; normfold's includes its own validation; a peer's child process is
``peer_folds.py --peer TOOL MODEL OUTPUT``):

* ``normfold``: ``normfold fold MODEL -o OUT --provider cpu --json`` (the CLI next to this Python).
* ``onnxscript``: ``onnxscript.optimizer.optimize``; it applies ``onnxscript.rewriter``'s default rules (with
  ``fuse_batchnorm_into_conv``/``_conv_transpose``/``_gemm``) after constant folding, so nothing is added.
* ``onnxslim``: ``onnxslim.slim``.
* ``onnxsim``: ``onnxsim.simplify`` (``check_n=0``: validated here instead).
* ``ort``: ONNX Runtime's offline optimizer, ``ORT_ENABLE_EXTENDED`` on the CPU provider, saved through
  ``SessionOptions.optimized_model_filepath`` (it may contain com.microsoft fused ops such as FusedConv).

Each output's main graph is counted: BatchNormalization nodes, Mul/Add/Sub/Div nodes with one constant operand
whose other operand comes straight from a Conv/ConvTranspose/Gemm/MatMul (or ORT's fused forms of them), and all
nodes. A value is constant when it is an initializer or computed from constants only (CastLike's second input
gives only a type, Shape/Size of a constant-shaped value is constant). normfold's validation result is its JSON's
``validation.passed``; a peer's output is run against MODEL on ONNX Runtime CPU (no graph optimization, seeded
normal inputs, symbolic dimensions 1) and passes when the max abs diff is at most 1e-4 times the output scale.

Results are cached as ``WORK/MODEL.TOOL.json`` (``--rerun`` redoes them), so the models can be measured a few at a
time; the markdown table covers the MODELs given. Under it: every node that normfold leaves and some peer removes,
with its neighbours and normfold's reason, then the nodes normfold leaves without recording why.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TOOLS = ("normfold", "onnxscript", "onnxslim", "onnxsim", "ort")
LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv"}
AFFINE_OPS = {"Mul", "Add", "Sub", "Div"}
PEER_RTOL = 1e-4
TOOL_TIMEOUT_S = 540


def peer_onnxscript(model: Path, output: Path) -> None:
    """onnxscript's optimizer (constant folding plus the default rewrite rules)."""
    import onnx
    import onnxscript.optimizer

    onnx.save(onnxscript.optimizer.optimize(onnx.load(model)), output)


def peer_onnxslim(model: Path, output: Path) -> None:
    """onnxslim's default slim."""
    import onnx
    import onnxslim

    onnx.save(onnxslim.slim(onnx.load(model)), output)


def peer_onnxsim(model: Path, output: Path) -> None:
    """onnx-simplifier with its default passes and no check of its own."""
    import onnx
    import onnxsim

    simplified, ok = onnxsim.simplify(onnx.load(model), check_n=0)
    if not ok:
        raise SystemExit("onnxsim: simplify reported failure")
    onnx.save(simplified, output)


def peer_ort(model: Path, output: Path) -> None:
    """ONNX Runtime's offline optimizer at ORT_ENABLE_EXTENDED on the CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(output)
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


PEERS = {"onnxscript": peer_onnxscript, "onnxslim": peer_onnxslim, "onnxsim": peer_onnxsim, "ort": peer_ort}


def constant_values(graph) -> set[str]:
    """Names of the graph's values that depend on initializers and Constant nodes only."""
    constant = {init.name for init in graph.initializer} | {""}
    shaped = {vi.name for vi in [*graph.input, *graph.value_info] if _static_shape(vi)}
    for node in graph.node:
        inputs = list(node.input)
        if node.op_type == "CastLike":
            inputs = inputs[:1]
        if node.op_type in ("Shape", "Size"):
            known = all(i in constant or i in shaped for i in inputs)
        else:
            known = all(i in constant for i in inputs)
        if known:
            constant.update(node.output)
    return constant


def _static_shape(value_info) -> bool:
    """Whether a value_info has a fully known shape."""
    tensor = value_info.type.tensor_type
    return tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim)


def leftovers(path: Path) -> dict:
    """Count BN, per-layer affine and all nodes in ``path``'s main graph, with each leftover's neighbours."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constant = constant_values(graph)
    left = []
    for node in graph.node:
        kind = None
        if node.op_type == "BatchNormalization":
            kind = "bn"
        elif node.op_type in AFFINE_OPS and len(node.input) == 2:
            const = [name in constant for name in node.input]
            if sum(const) == 1:
                other = producer.get(node.input[const.index(False)])
                if other is not None and other.op_type in LAYER_OPS:
                    kind = "affine"
        if kind:
            before = [f"{producer[i].op_type} '{producer[i].name}'" for i in node.input if i in producer]
            after = [f"{c.op_type} '{c.name}'" for o in node.output for c in consumers.get(o, [])]
            left.append({"kind": kind, "op": node.op_type, "name": node.name, "before": before, "after": after})
    return {
        "bn": sum(x["kind"] == "bn" for x in left),
        "affine": sum(x["kind"] == "affine" for x in left),
        "nodes": len(graph.node),
        "left": left,
    }


def validate_peer(model: Path, candidate: Path) -> dict:
    """Run both models on ONNX Runtime CPU with the same seeded inputs and compare every output."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    tested = ort.InferenceSession(str(candidate), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in reference.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    expected = reference.run(None, feeds)
    got = dict(zip([o.name for o in tested.get_outputs()], tested.run(None, feeds)))
    max_abs, scale = 0.0, 0.0
    for out, value in zip(reference.get_outputs(), expected):
        max_abs = max(max_abs, float(np.max(np.abs(got[out.name] - value))))
        scale = max(scale, float(np.max(np.abs(value))))
    return {"passed": max_abs <= PEER_RTOL * scale, "max_abs": max_abs, "scale": scale}


def measure(model: Path, tool: str, work: Path) -> dict:
    """Run ``tool`` on ``model`` in its own process, then count and validate its output."""
    output = work / f"{model.stem}.{tool}.onnx"
    output.unlink(missing_ok=True)
    if tool == "normfold":
        command = [str(Path(sys.executable).with_name("normfold")), "fold", str(model), "-o", str(output)]
        command += ["--provider", "cpu", "--json"]
    else:
        command = [sys.executable, __file__, "--peer", tool, str(model), str(output)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    result = {"model": model.stem, "tool": tool, "rc": proc.returncode, "wall_s": time.perf_counter() - start}
    if tool == "normfold" and proc.stdout.lstrip().startswith("{"):
        report = json.loads(proc.stdout)
        (work / f"{model.stem}.normfold.report.json").write_text(proc.stdout)
        validation = report.get("validation") or {}
        worst = max((o["metrics"]["max_abs"] for o in validation.get("outputs", []) if o.get("metrics")), default=None)
        result["validation"] = {"passed": bool(validation.get("passed")), "max_abs": worst}
        result["reasons"] = {n["node"]: f"{n['action']}: {n['detail']} {n['reason']}".strip() for n in report["nodes"]}
    if not output.exists():
        result["error"] = (proc.stderr or proc.stdout).strip()[-600:]
        return result
    result.update(leftovers(output))
    if tool != "normfold":
        result["validation"] = validate_peer(model, output)
    return result


def load_or_measure(model: Path, tool: str, work: Path, rerun: bool) -> dict:
    """Return the cached result of ``tool`` on ``model``, measuring it first when missing or asked to."""
    cache = work / f"{model.stem}.{tool}.json"
    if rerun or not cache.exists():
        result = measure(model, tool, work)
        cache.write_text(json.dumps(result, indent=1))
        print(f"{model.stem} {tool}: {result['wall_s']:.1f} s, rc {result['rc']}", file=sys.stderr, flush=True)
    return json.loads(cache.read_text())


def cell(result: dict) -> str:
    """One table cell: BN left / affine left, nodes, seconds, validation."""
    if "nodes" not in result:
        return f"failed (rc {result['rc']})"
    validation = result.get("validation", {})
    diff = validation.get("max_abs")
    check = ("ok" if validation.get("passed") else "FAIL") + (f" {diff:.0e}" if diff is not None else "")
    return f"{result['bn']}/{result['affine']} · {result['nodes']} · {result['wall_s']:.1f}s · {check}"


def table(models: list[Path], tools: list[str], results: dict) -> str:
    """The markdown table: one row per model, one column per tool, plus the export itself."""
    lines = [
        "| model | export | " + " | ".join(tools) + " |",
        "|---|---|" + "---|" * len(tools),
    ]
    for model in models:
        original = leftovers(model)
        cells = [f"{original['bn']}/{original['affine']} · {original['nodes']}"]
        cells += [cell(results[model.stem, tool]) for tool in tools]
        lines.append(f"| {model.stem} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def missed(models: list[Path], tools: list[str], results: dict) -> list[str]:
    """Nodes normfold leaves (BN or per-layer affine) that some peer's output no longer has."""
    lines = []
    for model in models:
        ours = results.get((model.stem, "normfold"), {})
        if "left" not in ours:
            continue
        for node in ours["left"]:
            removed_by = [
                tool
                for tool in tools
                if tool != "normfold"
                and "left" in results[model.stem, tool]
                and results[model.stem, tool][node["kind"]] < ours[node["kind"]]
                and not any(x["name"] == node["name"] for x in results[model.stem, tool]["left"])
            ]
            if removed_by:
                reason = ours.get("reasons", {}).get(node["name"], "not in normfold's report")
                lines.append(
                    f"- {model.stem}: {node['op']} '{node['name']}' (after {', '.join(node['before']) or '-'}; "
                    f"before {', '.join(node['after']) or 'graph output'}) removed by {', '.join(removed_by)}; "
                    f"normfold: {reason}"
                )
    return lines


def unreported(models: list[Path], results: dict) -> list[str]:
    """Nodes normfold leaves (BN or per-layer affine) without a record in its report, one line per model."""
    lines = []
    for model in models:
        ours = results.get((model.stem, "normfold"), {})
        silent = [node for node in ours.get("left", []) if node["name"] not in ours.get("reasons", {})]
        if silent:
            first = silent[0]
            lines.append(
                f"- {model.stem}: {len(silent)} nodes, e.g. {first['op']} '{first['name']}' (after "
                f"{', '.join(first['before'])}; before {', '.join(first['after']) or 'graph output'})"
            )
    return lines


def main() -> None:
    """Measure the tools on the models and print the table and normfold's misses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/peer_folds"), help="outputs and cached results")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--rerun", action="store_true", help="measure again even when cached")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {
        (model.stem, tool): load_or_measure(model, tool, args.work, args.rerun)
        for model in args.models
        for tool in args.tools
    }
    print("Cells: BN left / Mul-Add-Sub-Div left after a layer · nodes · wall time · validation (max abs diff)\n")
    print(table(args.models, args.tools, results))
    lines = missed(args.models, args.tools, results)
    print("\nLeft by normfold, removed by a peer:" if lines else "\nnormfold leaves nothing that a peer removes.")
    if lines:
        print("\n".join(lines))
    silent = unreported(args.models, results)
    if silent:
        print("\nLeft by normfold with no record in its report:")
        print("\n".join(silent))
    if args.json:
        args.json.write_text(json.dumps([*results.values()], indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peer"]:
        PEERS[sys.argv[2]](Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
