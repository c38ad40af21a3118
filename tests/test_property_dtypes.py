"""Property test across dtypes and opsets: random Conv/ConvTranspose/Gemm/MatMul + BN (+ Dropout) graphs in
float32, float16 or bfloat16, opset 9-22, go through `normfold.fold` and `normfold.validate` with zero mismatches.

bfloat16 graphs use only the opsets whose operators accept it (BatchNormalization from 15, Gemm/MatMul
from 13, Conv/ConvTranspose from 22) and are validated with providers=["reference"] (onnx's evaluator in
float64): ONNX Runtime's CPU build has no bfloat16 kernels for them. float32/float16 run on the CPU provider.

    NORMFOLD_HYPOTHESIS_EXAMPLES=2000 pytest tests/test_property_dtypes.py    # a longer search
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import normfold
from normfold.validate import validate

EXAMPLES = max(60, int(os.environ.get("NORMFOLD_HYPOTHESIS_EXAMPLES", "60")) // 3)
DTYPES = {
    "float32": (onnx.TensorProto.FLOAT, np.float32),
    "float16": (onnx.TensorProto.FLOAT16, np.float16),
    "bfloat16": (onnx.TensorProto.BFLOAT16, ml_dtypes.bfloat16),
}
OPSETS = [9, 11, 13, 15, 17, 22]
BFLOAT16_SINCE = {"Conv": 22, "ConvTranspose": 22, "Gemm": 13, "MatMul": 13, "BatchNormalization": 15}


def _opsets(kind: str, dtype: str) -> list[int]:
    """The opsets in OPSETS whose layer and BatchNormalization accept the dtype."""
    if dtype != "bfloat16":
        return OPSETS
    return [o for o in OPSETS if o >= max(BFLOAT16_SINCE[kind], BFLOAT16_SINCE["BatchNormalization"])]


@st.composite
def layer_bn_models(draw: st.DrawFn, dtypes: tuple[str, ...] = tuple(sorted(DTYPES))) -> onnx.ModelProto:
    """One linear layer, BN after it, optionally a Dropout; random sizes, dtype (among `dtypes`) and opset."""
    kind = draw(st.sampled_from(["Conv", "ConvTranspose", "Gemm", "MatMul"]))
    dtype = draw(st.sampled_from(dtypes))
    elem, np_dtype = DTYPES[dtype]
    opset = draw(st.sampled_from(_opsets(kind, dtype)))
    seed = draw(st.integers(0, 2**16))
    g = np.random.default_rng(seed)
    c_in, c_out = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    inits: dict[str, np.ndarray] = {}
    if kind in ("Conv", "ConvTranspose"):
        group = draw(st.sampled_from([g_ for g_ in (1, 2, 3) if c_in % g_ == 0 and c_out % g_ == 0]))
        k = draw(st.integers(1, 3))
        shape = (c_out, c_in // group, k, k) if kind == "Conv" else (c_in, c_out // group, k, k)
        inits["w"] = g.normal(0, 0.5, shape)
        inputs = ["x", "w"]
        if draw(st.booleans()):
            inits["b"] = g.normal(0, 0.3, c_out)
            inputs.append("b")
        layer = helper.make_node(kind, inputs, ["y"], group=group, pads=[k // 2] * 4)
        x_shape = [2, c_in, 5, 5]
    else:
        inits["w"] = g.normal(0, 0.5, (c_in, c_out))
        inputs = ["x", "w"]
        if kind == "Gemm" and (opset < 11 or draw(st.booleans())):  # C is required before opset 11
            inits["c"] = g.normal(0, 0.3, c_out)
            inputs.append("c")
        layer = helper.make_node(kind, inputs, ["y"])
        x_shape = [3, c_in]
    inits.update(
        {
            "s": g.uniform(0.5, 1.5, c_out),
            "bb": g.normal(0, 0.2, c_out),
            "m": g.normal(0, 0.5, c_out),
            "v": g.uniform(0.5, 2.0, c_out),
        }
    )
    nodes = [layer, helper.make_node("BatchNormalization", ["y", "s", "bb", "m", "v"], ["z"], name="bn")]
    out = "z"
    if draw(st.booleans()):
        nodes.append(helper.make_node("Dropout", ["z"], ["d"], name="drop"))
        out = "d"
    graph = helper.make_graph(
        nodes,
        "p",
        [helper.make_tensor_value_info("x", elem, x_shape)],
        [helper.make_tensor_value_info(out, elem, None)],
        [numpy_helper.from_array(v.astype(np_dtype), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 22 else 7
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(layer_bn_models())
def test_fold_then_validate_has_no_mismatch(model: onnx.ModelProto) -> None:
    _fold_then_validate(model)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(layer_bn_models(dtypes=("bfloat16",)))
def test_bfloat16_fold_then_validate_on_the_reference_evaluator(model: onnx.ModelProto) -> None:
    """bfloat16 alone, so every layer kind and its opsets are drawn in bfloat16 on every run."""
    _fold_then_validate(model)


def _fold_then_validate(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    result = normfold.fold(model)
    records = {r.op_type: r for r in result.records}
    assert records["BatchNormalization"].action == "folded", records["BatchNormalization"]
    assert "Dropout" not in records or records["Dropout"].action == "stripped"
    with tempfile.TemporaryDirectory() as folder:
        original, folded = Path(folder) / "m.onnx", Path(folder) / "f.onnx"
        onnx.save(model, original)
        normfold.save_model(result.model, folded)
        bf16 = model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
        report = validate(original, folded, providers=["reference" if bf16 else "cpu"], samples=2)
    assert report.providers == (["onnx-reference (float64)"] if bf16 else ["cpu"])
    assert report.passed, "\n".join(report.lines())
