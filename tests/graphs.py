"""Tiny test graphs in a few lines: seeded weights, BN statistics, and a model wrapper."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

Shape = Sequence[int | str]


def rng(seed: int = 0) -> np.random.Generator:
    """The seeded generator every test uses."""
    return np.random.default_rng(seed)


def bn_params(
    prefix: str, channels: int, generator: np.random.Generator, dtype: type = np.float32
) -> dict[str, np.ndarray]:
    """Non-trivial BN statistics: gamma ~ U(0.5, 1.5), beta ~ N(0, .2), mean ~ N(0, .5), var ~ U(.5, 2)."""
    return {
        f"{prefix}_scale": generator.uniform(0.5, 1.5, channels).astype(dtype),
        f"{prefix}_bias": generator.normal(0, 0.2, channels).astype(dtype),
        f"{prefix}_mean": generator.normal(0, 0.5, channels).astype(dtype),
        f"{prefix}_var": generator.uniform(0.5, 2.0, channels).astype(dtype),
    }


def bn_node(x: str, y: str, prefix: str, **attrs: object) -> onnx.NodeProto:
    """BatchNormalization reading the parameters named by `bn_params(prefix, ...)`."""
    inputs = [x, f"{prefix}_scale", f"{prefix}_bias", f"{prefix}_mean", f"{prefix}_var"]
    return helper.make_node("BatchNormalization", inputs, [y], name=prefix, **attrs)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, Shape],
    outputs: Sequence[str],
    initializers: dict[str, np.ndarray],
    opset: int = 17,
    dtype: int = onnx.TensorProto.FLOAT,
    functions: Sequence[onnx.FunctionProto] = (),
    extra_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """A checked model with float inputs of the given shapes and outputs of unspecified shape."""
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(n, dtype, list(s)) for n, s in inputs.items()],
        [helper.make_value_info(n, onnx.TypeProto()) for n in outputs],
        [numpy_helper.from_array(np.array(a), n) for n, a in initializers.items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = 8 if opset < 21 else 10
    _type_outputs(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def op_types(model: onnx.ModelProto) -> list[str]:
    """Op types of the main graph's nodes, in order."""
    return [n.op_type for n in model.graph.node]


def _type_outputs(model: onnx.ModelProto) -> None:
    """Give each graph output the type and shape that ONNX shape inference finds for it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v.type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for output in model.graph.output:
        if output.name in known and known[output.name].HasField("tensor_type"):
            output.type.CopyFrom(known[output.name])


LN_SHAPE = (5, 8, 6)  # tokens, features, projection width


def layernorm_qkv_model(extra_consumer: bool = False, axis: int = -1) -> onnx.ModelProto:
    """LayerNormalization (over `LN_SHAPE`'s last axis) feeding Q, K (each with a bias Add) and V (no bias)
    projections; with `extra_consumer` its output also goes to a residual Add."""
    L, C, F = LN_SHAPE
    g = rng(51)
    inits = {"gamma": g.uniform(0.5, 1.5, C).astype(np.float32), "beta": g.normal(0, 0.3, C).astype(np.float32)}
    for name in "qkv":
        inits[f"w{name}"] = g.normal(0, 0.3, (C, F)).astype(np.float32)
    inits["bq"], inits["bk"] = g.normal(0, 0.1, F).astype(np.float32), g.normal(0, 0.1, F).astype(np.float32)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="ln", axis=axis),
        helper.make_node("MatMul", ["n", "wq"], ["q0"], name="q"),
        helper.make_node("Add", ["q0", "bq"], ["q"]),
        helper.make_node("MatMul", ["n", "wk"], ["k0"], name="k"),
        helper.make_node("Add", ["bk", "k0"], ["k"]),
        helper.make_node("MatMul", ["n", "wv"], ["v"], name="v"),
    ]
    outputs = ["q", "k", "v"]
    if extra_consumer:
        nodes.append(helper.make_node("Add", ["n", "x"], ["res"], name="residual"))
        outputs.append("res")
    return make_model(nodes, {"x": ["N", L, C]}, outputs, inits)


def int64_constant(name: str, values: list[int]) -> onnx.NodeProto:
    """A Constant node holding int64 `values` (a Reshape target, axes), its output named `name`."""
    return helper.make_node(
        "Constant", [], [name], name=f"{name}_node", value=numpy_helper.from_array(np.array(values, np.int64))
    )
