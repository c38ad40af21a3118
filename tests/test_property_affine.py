"""Property test: per-channel Mul/Div/Add/Sub chains and layout-separated BN around random linear layers.

Each example is one layer (a Conv 2-D with random kernel, pads, groups and bias; a Gemm with transB,
alpha, beta and C or not; or an N-D MatMul with its bias Add), followed by 0-4 elementwise nodes by a
constant (Mul, Div, Add, x - c or c - x; operands in either order; the constant a scalar or one value
per channel in any broadcast form; now and then one that varies along another axis, which cannot fold),
then optionally a BN (for the MatMul behind a Transpose to (N, C, L)), preceded now and then by a Div by
a per-channel constant in front of the layer (a forward candidate). The test asserts:

(a) the folded model passes `onnx.checker.check_model(..., full_check=True)`;
(b) every elementwise node or BN marked foldable by construction is gone, every one marked not foldable
    stays, and every skipped record has a reason;
(c) the folded model is as exact as the original against the float64 truth (`assert_fold_exact`);
(d) folding the result again changes nothing.

CI runs 100 derandomized examples; NORMFOLD_HYPOTHESIS_EXAMPLES raises the count.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
from graphs import bn_node, bn_params, make_model
from hypothesis import given, note, settings
from hypothesis import strategies as st
from numerics import assert_fold_exact, random_feeds
from onnx import helper

from normfold import fold

EXAMPLES = int(os.environ.get("NORMFOLD_HYPOTHESIS_EXAMPLES", "100"))
OPS = ("Mul", "Div", "Add", "Sub", "RSub")


@st.composite
def affine_cases(draw: st.DrawFn) -> tuple[onnx.ModelProto, dict[str, bool]]:
    """A model and, per elementwise/BN node name, whether it must fold (True) or stay (False)."""
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["Conv", "Gemm", "MatMul"]))
    inits: dict[str, np.ndarray] = {}
    nodes: list[onnx.NodeProto] = []
    expect: dict[str, bool] = {}
    c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    x, width = "x", 0
    if kind == "Conv":
        shape, rank, axis = ["N", c_in, 5, 5], 4, 1
    elif kind == "Gemm":
        shape, rank, axis = ["N", c_in], 2, 1
    else:
        shape, rank, axis = ["N", 3, c_in], 3, 2
    if draw(st.booleans()) and kind != "MatMul":
        inits["pre"] = g.uniform(0.5, 2, _channel_shape(c_in, rank, 1)).astype(np.float32)
        nodes.append(helper.make_node("Div", [x, "pre"], ["pre_out"], name="pre_div"))
        expect["pre_div"], x = True, "pre_out"
    y = "layer_out"
    if kind == "Conv":
        group = c_in if draw(st.booleans()) and c_in > 1 else 1
        c_out = c_out * group if group > 1 else c_out
        k = draw(st.integers(1, 3))
        inits["w"] = g.normal(0, 0.4, (c_out, c_in // group, k, k)).astype(np.float32)
        inputs = [x, "w"]
        if draw(st.booleans()):
            inits["b"] = g.normal(0, 0.2, c_out).astype(np.float32)
            inputs.append("b")
        pads = [0, 0, 0, 0] if "pre_div" not in expect or draw(st.booleans()) else [1, 1, 1, 1]
        nodes.append(helper.make_node("Conv", inputs, [y], name="layer", group=group, pads=pads))
        width = 5 + 2 * pads[0] - k + 1
    elif kind == "Gemm":
        trans = draw(st.booleans())
        inits["w"] = g.normal(0, 0.4, (c_out, c_in) if trans else (c_in, c_out)).astype(np.float32)
        inputs = [x, "w"] + (["c"] if draw(st.booleans()) else [])
        if "c" in inputs:
            inits["c"] = g.normal(0, 0.2, c_out).astype(np.float32)
        nodes.append(
            helper.make_node(
                "Gemm",
                inputs,
                [y],
                name="layer",
                transB=int(trans),
                alpha=draw(st.sampled_from([1.0, 0.5])),
                beta=draw(st.sampled_from([1.0, 2.0])),
            )
        )
    else:
        inits["w"], inits["b"] = (
            g.normal(0, 0.4, (c_in, c_out)).astype(np.float32),
            g.normal(0, 0.2, c_out).astype(np.float32),
        )
        nodes += [
            helper.make_node("MatMul", [x, "w"], ["mm"], name="layer"),
            helper.make_node("Add", ["mm", "b"], [y], name="bias_add"),
        ]
    current, blocked = y, False
    for index in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(OPS))
        name = f"op{index}"
        bad = draw(st.integers(0, 9)) == 0 and width > 1
        constant_shape = (1, 1, 1, width) if bad else _channel_shape(c_out, rank, axis) if draw(st.booleans()) else ()
        values = g.uniform(0.5, 2, constant_shape) * g.choice([-1, 1], constant_shape)
        inits[f"k{index}"] = np.asarray(values, np.float32)
        operands = [current, f"k{index}"]
        if op in ("Mul", "Add") and draw(st.booleans()):
            operands.reverse()
        if op == "RSub":
            operands, op = [f"k{index}", current], "Sub"
        nodes.append(helper.make_node(op, operands, [name], name=name))
        blocked = blocked or bad
        expect[name] = not blocked
        current = name
    if draw(st.booleans()):
        channels = c_out
        if kind == "MatMul":
            nodes.append(helper.make_node("Transpose", [current], ["ncl"], name="to_ncl", perm=[0, 2, 1]))
            current = "ncl"
        inits.update(bn_params("bn", channels, g))
        nodes.append(bn_node(current, "bn_out", "bn"))
        expect["bn"], current = not blocked, "bn_out"
    model = make_model(nodes, {"x": shape}, [current], inits)
    return model, expect


def _channel_shape(channels: int, rank: int, axis: int) -> tuple[int, ...]:
    """A per-channel constant's shape in one of its broadcast forms: (C,) only where C is the last axis."""
    trailing = rank - 1 - axis
    return (channels,) + (1,) * trailing


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(case=affine_cases())
def test_fold_random_affine_chains(case: tuple[onnx.ModelProto, dict[str, bool]]) -> None:
    model, expect = case
    note(onnx.printer.to_text(model.graph))
    result = fold(model)
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    left = {node.name for node in proto.graph.node}
    for name, foldable in expect.items():
        assert (name not in left) == foldable, (name, [r.to_line() for r in result.records])
    assert all(r.detail for r in result.records if r.action == "skipped")
    assert_fold_exact(model, result.model, random_feeds(model))
    again = fold(proto)
    assert not [r for r in again.records if r.action == "folded"]
