"""One tool's transform, run as its own process so its wall time and peak RSS are measured whole.

    python benchmarks/tools.py TOOL MODEL OUTPUT {external,inline}

Each tool reads MODEL, does its BatchNorm / Dropout work, and writes OUTPUT (tensors in
`OUTPUT.data` when `external`). normfold itself is run through its CLI, not through this file.
"""

from __future__ import annotations

import sys
from pathlib import Path


def io_limit(model: Path, output: Path, external: bool) -> None:
    """The I/O limit: onnx_ir.load + onnx_ir.save, nothing else."""
    import onnx_ir as ir

    ir.save(ir.load(model), output, external_data=f"{output.name}.data" if external else None)


def onnxscript_optimizer(model: Path, output: Path, external: bool) -> None:
    import onnx_ir as ir
    import onnxscript.optimizer

    optimized = onnxscript.optimizer.optimize(ir.load(model))
    ir.save(optimized, output, external_data=f"{output.name}.data" if external else None)


ONNXOPTIMIZER_PASSES = ["fuse_bn_into_conv", "eliminate_nop_dropout"]


def onnxoptimizer_passes() -> list[str]:
    """fuse_bn_into_conv, eliminate_nop_dropout, and every other fuse_* pass onnxoptimizer has."""
    import onnxoptimizer

    fuse = [p for p in onnxoptimizer.get_available_passes() if p.startswith("fuse_") and p not in ONNXOPTIMIZER_PASSES]
    return ONNXOPTIMIZER_PASSES + fuse


def onnxoptimizer_fuse(model: Path, output: Path, external: bool) -> None:
    import onnx
    import onnxoptimizer

    _save_proto(onnxoptimizer.optimize(onnx.load(model), onnxoptimizer_passes()), output, external)


def onnxsim_simplify(model: Path, output: Path, external: bool) -> None:
    import onnx
    import onnxsim

    simplified, ok = onnxsim.simplify(onnx.load(model), check_n=0)
    if not ok:
        raise SystemExit("onnxsim: simplify reported failure")
    _save_proto(simplified, output, external)


def onnxslim_slim(model: Path, output: Path, external: bool) -> None:
    import onnx
    import onnxslim

    _save_proto(onnxslim.slim(onnx.load(model)), output, external)


def ort_basic(model: Path, output: Path, external: bool) -> None:
    """ONNX Runtime's offline optimizer at ORT_ENABLE_BASIC on CPU (Conv+BN fusion, Dropout removal)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(output)
    if external:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", f"{output.name}.data"
        )
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def aimet_fold(model: Path, output: Path, external: bool) -> None:
    """AIMET's fold_all_batch_norms_to_weight (aimet-onnx, which needs torch)."""
    import onnx
    from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight

    proto = onnx.load(model)
    fold_all_batch_norms_to_weight(proto)
    _save_proto(proto, output, external)


def _save_proto(proto, output: Path, external: bool) -> None:
    import onnx

    if external:
        onnx.save(proto, output, save_as_external_data=True, location=f"{output.name}.data", size_threshold=1024)
    else:
        onnx.save(proto, output)


TOOLS = {
    "io": io_limit,
    "onnxscript": onnxscript_optimizer,
    "onnxoptimizer": onnxoptimizer_fuse,
    "onnxsim": onnxsim_simplify,
    "onnxslim": onnxslim_slim,
    "ort-basic": ort_basic,
    "aimet": aimet_fold,
}

if __name__ == "__main__":
    tool, model, output, mode = sys.argv[1:5]
    TOOLS[tool](Path(model), Path(output), mode == "external")
