"""The float64 reference engine: node-by-node execution against onnx's whole-model evaluator, tensors freed
after their last use, the cost estimate, the budget (before and during the run), and which failures become
Float64Unavailable (expected limitations) and which propagate (bugs in normfold's kernels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import make_model, rng
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from normfold.model_reading import load_model_file
from normfold.validate import float64_kernels
from normfold.validate.float64 import (
    Float64Budget,
    Float64Unavailable,
    run_float64,
    run_float64_samples,
    to_float64,
)
from normfold.validate.float64_cost import estimate_cost, schedule
from normfold.validate.float64_kernels import Kernel

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = ["resnet_block", "mlp", "torchvision_resnet_eval", "torchvision_mobilenetv3_eval"]


class BatchNormalization(OpRun):
    """Inference BatchNormalization for the whole-model evaluator (onnx's version 9 blends batch statistics)."""

    op_domain = ""

    def _run(
        self,
        x,
        scale,
        bias,
        mean,
        var,
        epsilon=None,
        momentum=None,
        training_mode=None,
        spatial=None,
        is_test=None,
        consumed_inputs=None,
    ):
        shape = (1, -1, *[1] * (x.ndim - 2))
        eps = 1e-5 if epsilon is None else epsilon
        return (
            (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape),
        )


def whole_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The previous float64 reference: onnx's evaluator on the whole float64 copy."""
    wide = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}
    return ReferenceEvaluator(to_float64(model), new_ops=[BatchNormalization]).run(None, wide)


def assert_close(got: list[np.ndarray], expected: list[np.ndarray], rtol: float = 1e-12) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a - b).max() <= rtol * max(np.abs(b).max(), 1e-300)


def _feeds(model: onnx.ModelProto, batch: int = 2) -> dict[str, np.ndarray]:
    info = model.graph.input[0]
    shape = [d.dim_value or batch for d in info.type.tensor_type.shape.dim]
    return {info.name: rng(3).standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("name", SHIPPED)
def test_equals_the_whole_model_evaluator_on_shipped_models(name: str) -> None:
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    feeds = _feeds(model)
    assert_close(run_float64(model, feeds), whole_model(model, feeds))


def chain(depth: int, channels: int = 4, size: int = 8) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """depth x (Conv 3x3 + Relu): every float64 activation 2 KiB, every weight 1.1 KiB."""
    g = rng(5)
    nodes, inits, x = [], {}, "x"
    for layer in range(depth):
        inits[f"w{layer}"] = (g.standard_normal((channels, channels, 3, 3)) / 6).astype(np.float32)
        nodes.append(helper.make_node("Conv", [x, f"w{layer}"], [f"c{layer}"], pads=[1, 1, 1, 1], name=f"conv{layer}"))
        nodes.append(helper.make_node("Relu", [f"c{layer}"], [f"r{layer}"], name=f"relu{layer}"))
        x = f"r{layer}"
    model = make_model(nodes, {"x": [1, channels, size, size]}, [x], inits)
    return model, {"x": g.standard_normal((1, channels, size, size)).astype(np.float32)}


def test_a_long_chain_runs_in_a_tiny_budget_because_tensors_are_freed() -> None:
    model, feeds = chain(100)
    budget = Float64Budget(max_bytes=16 << 10)
    cost = estimate_cost(model, feeds)
    assert cost.peak_bytes <= budget.max_bytes < cost.total_bytes // 20
    assert_close(run_float64(model, feeds, budget=budget), whole_model(model, feeds))


def test_estimate_over_the_memory_budget_is_refused_with_its_reason() -> None:
    model, feeds = chain(2)
    with pytest.raises(Float64Unavailable) as caught:
        run_float64(model, feeds, budget=Float64Budget(max_bytes=4 << 10))
    assert caught.value.code == "over-memory"
    assert str(caught.value) == (
        "needs 4.56 KiB of float64 tensors alive at once, over the 4 KiB budget (--float64-budget)"
    )


def test_a_conv_weight_is_held_in_float32_and_widened_block_by_block() -> None:
    """4.56 KiB alive at the first Conv with its float32 weight (5.12 KiB widened whole): a 4.6 KiB budget is
    enough, estimate and runtime guard alike, and the outputs are those of the weights widened whole."""
    model, feeds = chain(2)
    assert_close(run_float64(model, feeds, budget=Float64Budget(max_bytes=4710)), whole_model(model, feeds))


@pytest.mark.parametrize(
    ("reader", "held_narrow"),
    [("Conv", True), ("ConvTranspose", True), ("Add", False), ("Conv in a custom domain", False)],
)
def test_only_weights_that_kernels_alone_read_stay_narrow(reader: str, held_narrow: bool) -> None:
    w = rng(1).standard_normal((3, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    if reader == "Add":
        nodes.append(helper.make_node("Add", ["w", "w"], ["z"]))
    elif reader == "ConvTranspose":
        nodes.append(helper.make_node("ConvTranspose", ["y", "w"], ["z"], pads=[1, 1, 1, 1]))
    else:
        nodes.append(helper.make_node("Conv", ["y", "w"], ["z"], pads=[1, 1, 1, 1]))
        if reader != "Conv":
            nodes[-1].domain = "custom"
    x, z = (helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("x", "z"))
    graph = helper.make_graph(nodes, "g", [x], [z], [numpy_helper.from_array(w, "w")])
    assert schedule(graph).narrow == ({"w"} if held_narrow else set())


@pytest.mark.parametrize(
    ("dtype", "held_narrow"), [(TensorProto.FLOAT, True), (TensorProto.FLOAT16, True), (TensorProto.DOUBLE, False)]
)
def test_only_float32_and_float16_weights_stay_narrow(dtype: int, held_narrow: bool) -> None:
    w = helper.make_tensor("w", dtype, [3, 3, 1, 1], [0.5] * 9)
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", dtype, [1, 3, 2, 2])], [], [w])
    graph.output.append(helper.make_tensor_value_info("y", dtype, None))
    assert schedule(graph).narrow == ({"w"} if held_narrow else set())


def test_a_weight_that_is_a_graph_output_is_widened() -> None:
    w = rng(1).standard_normal((3, 3, 1, 1)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])], {"x": [1, 3, 2, 2]}, ["y"], {"w": w})
    model.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 3, 1, 1]))
    assert schedule(model.graph).narrow == set()
    (y, out_w) = run_float64(model, {"x": np.ones((1, 3, 2, 2), np.float32)})
    assert out_w.dtype == np.float64 and y.dtype == np.float64


def test_the_whole_model_evaluator_counts_every_weight_widened() -> None:
    """Conv(x, w) then If(cond) on its output: onnx's evaluator runs the float64 copy, w widened whole. Kept to the
    end: cond 1 B, x, w, the Conv's output and y (32 float64 elements each): 1057 B (913 B with w in float32)."""
    out = [helper.make_tensor_value_info("branch", TensorProto.FLOAT, None)]
    then = helper.make_graph([helper.make_node("Identity", ["c"], ["branch"])], "then", [], out)
    other = helper.make_graph([helper.make_node("Relu", ["c"], ["branch"])], "else", [], out)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    w = rng(2).standard_normal((2, 2, 3, 3)).astype(np.float32)
    inputs = [
        helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
    ]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "if", inputs, [y], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert schedule(model.graph).narrow == {"w"}
    with pytest.raises(Float64Unavailable) as caught:
        run_float64(model, _if_feeds(), budget=Float64Budget(max_bytes=1000))
    assert str(caught.value) == (
        "needs 1.03 KiB of float64 tensors kept to the end (subgraphs or functions: onnx's evaluator runs it "
        "whole), over the 1000 B budget (--float64-budget)"
    )


def test_estimate_over_the_flops_budget_is_refused() -> None:
    model, feeds = chain(3)
    with pytest.raises(Float64Unavailable) as caught:
        run_float64(model, feeds, budget=Float64Budget(max_flops=5e4))
    assert str(caught.value) == (
        "needs 5.53e+04 floating-point operations in float64, over the budget of 5e+04 (--float64-flops)"
    )
    assert caught.value.code == "over-flops"


def test_estimate_cost_of_a_small_conv_model() -> None:
    w = rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["z"])]
    model = make_model(nodes, {"x": ["N", 3, 8, 8]}, ["z"], {"w": w})
    cost = estimate_cost(model, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    # x 192, y 256, z 256 elements, 8 bytes each; w 108 in float32 (the Conv kernel widens it block by block);
    # the peak is at the Relu (y and z alive; x and w, 1968 B, were dropped after the Conv)
    assert cost.flops == 2 * (4 * 8 * 8) * (3 * 3 * 3)
    assert cost.weight_bytes == 108 * 4
    assert cost.peak_bytes == (256 + 256) * 8
    assert cost.total_bytes == (192 + 256 + 256) * 8 + 108 * 4
    assert cost.unknown == ()


def _expand_model(rows: int, columns: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """MatMul of two Expands whose shapes come from graph inputs: static shapes cannot size them."""
    nodes = [
        helper.make_node("Expand", ["a", "s1"], ["A"], name="expand_a"),
        helper.make_node("Expand", ["a", "s2"], ["B"], name="expand_b"),
        helper.make_node("MatMul", ["A", "B"], ["C"], name="outer"),
    ]
    graph = helper.make_graph(
        nodes,
        "expand",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("s1", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("s2", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = {"a": np.ones((1, 1), np.float32), "s1": np.array([rows, 1]), "s2": np.array([1, columns])}
    return model, feeds


def test_runtime_guard_stops_a_kernel_before_its_output_passes_the_budget() -> None:
    model, feeds = _expand_model(1000, 1000)
    assert "C" in estimate_cost(model, feeds).unknown
    with pytest.raises(Float64Unavailable) as caught:
        run_float64(model, feeds, budget=Float64Budget(max_bytes=1 << 20))
    assert caught.value.code == "runtime-memory"
    assert str(caught.value).startswith(
        "stopped at node 'outer' (MatMul): its outputs bring the float64 tensors "
        "alive to 7.64 MiB, over the 1 MiB budget"
    )
    np.testing.assert_array_equal(run_float64(model, feeds)[0], np.ones((1000, 1000)))


def test_runtime_guard_after_an_evaluator_node() -> None:
    model, feeds = _expand_model(300_000, 1)
    with pytest.raises(Float64Unavailable, match="stopped at node 'expand_a' \\(Expand\\)") as caught:
        run_float64(model, feeds, budget=Float64Budget(max_bytes=1 << 20))
    assert caught.value.code == "runtime-memory"


def _custom_op_model() -> onnx.ModelProto:
    node = helper.make_node("FusedThing", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)], ir_version=8
    )


def test_an_op_onnx_cannot_run_is_float64_unavailable() -> None:
    with pytest.raises(Float64Unavailable, match="has no kernel for com.example::FusedThing") as caught:
        run_float64(_custom_op_model(), {"x": np.ones(2, np.float32)})
    assert caught.value.code == "no-kernel"


def test_an_evaluator_error_is_float64_unavailable() -> None:
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")
    graph = helper.make_graph(
        [node],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([4], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(Float64Unavailable, match="failed on Reshape node 'bad_reshape'") as caught:
        run_float64(model, {"x": np.ones((2, 3), np.float32)})
    assert caught.value.code == "evaluator-failed"


def _broken(*args: object) -> None:
    raise ZeroDivisionError("a bug in a kernel")


def test_a_bug_in_a_kernel_keeps_its_type_and_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    original = float64_kernels.KERNELS["Conv"]
    monkeypatch.setitem(float64_kernels.KERNELS, "Conv", Kernel(_broken, original.output_shapes))
    model, feeds = chain(1)
    with pytest.raises(ZeroDivisionError, match="a bug in a kernel"):
        run_float64(model, feeds)
    with pytest.raises(ZeroDivisionError, match="a bug in a kernel"):
        run_float64(_if_model(), _if_feeds())


def _if_model() -> onnx.ModelProto:
    """If(cond) then Conv(x, w) else Relu(x): a subgraph, so the whole-model evaluator runs it."""
    out = [helper.make_tensor_value_info("branch", TensorProto.FLOAT, None)]
    then = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["branch"], pads=[1, 1, 1, 1])], "then", [], out)
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["branch"])], "else", [], out)
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    w = rng(2).standard_normal((2, 2, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "if",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _if_feeds(cond: bool = True) -> dict[str, np.ndarray]:
    return {"cond": np.array(cond), "x": rng(4).standard_normal((1, 2, 4, 4)).astype(np.float32)}


@pytest.mark.parametrize("cond", [True, False])
def test_subgraphs_run_on_the_whole_model_evaluator(cond: bool) -> None:
    assert_close(run_float64(_if_model(), _if_feeds(cond)), whole_model(_if_model(), _if_feeds(cond)))


def test_model_local_functions_run_on_the_whole_model_evaluator() -> None:
    function = helper.make_function(
        "local", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_opsetid("", 17)]
    )
    node = helper.make_node("Double", ["x"], ["y"], domain="local")
    model = make_model([node], {"x": [3]}, ["y"], {}, functions=[function], extra_opsets={"local": 1})
    x = np.array([1.5, -2.0, 0.25], np.float32)
    (y,) = run_float64(model, {"x": x})
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, 2 * x.astype(np.float64))


def test_integer_matmul_runs_on_onnx_evaluator_and_keeps_its_dtype() -> None:
    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph(
        [node],
        "int",
        [
            helper.make_tensor_value_info("a", TensorProto.INT64, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, [3, 2]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.INT64, [2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    a, b = np.arange(6).reshape(2, 3), np.arange(6).reshape(3, 2)
    (c,) = run_float64(model, {"a": a, "b": b})
    assert c.dtype == np.int64
    np.testing.assert_array_equal(c, a @ b)


def test_samples_share_one_plan_and_match_single_runs() -> None:
    loaded = load_model_file(MODELS / "resnet_block.onnx")
    model = loaded.full_proto()
    samples = [_feeds(model, 1), {k: v * 2 for k, v in _feeds(model, 1).items()}]
    for source in (model, loaded):
        together = run_float64_samples(source, samples, None)
        for feeds, outputs in zip(samples, together):
            assert_close(outputs, run_float64(model, feeds), rtol=0)
    with pytest.raises(Float64Unavailable, match="over the 1 KiB budget"):
        run_float64_samples(loaded, samples, 1 << 10)


def test_default_budget() -> None:
    budget = Float64Budget()
    assert 0 < budget.max_bytes <= 2 << 30
    assert budget.max_flops == 2e10
    assert 4 << 10 <= budget.chunk_bytes <= 32 << 20
    assert Float64Budget(max_bytes=1 << 10).chunk_bytes == 4 << 10


def test_dilated_conv_model_runs_small() -> None:
    """1x64x24x24, 3x3, dilation 12, pad 12: seconds and gigabytes on onnx's reference Conv."""
    g = rng(6)
    w = g.standard_normal((64, 64, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], dilations=[12, 12], pads=[12, 12, 12, 12])
    model = make_model([node], {"x": [1, 64, 24, 24]}, ["y"], {"w": w})
    feeds = {"x": g.standard_normal((1, 64, 24, 24)).astype(np.float32)}
    budget = Float64Budget(max_bytes=2 << 20)  # x, w and y in float64 take 0.86 MiB
    (y,) = run_float64(model, feeds, budget=budget)
    assert y.shape == (1, 64, 24, 24)


@pytest.mark.parametrize(
    "opset,attrs", [(6, {"is_test": 1}), (7, {"spatial": 1}), (9, {}), (14, {}), (15, {"training_mode": 0})]
)
def test_batchnorm_inference_in_every_version(opset: int, attrs: dict[str, int]) -> None:
    params = _bn_params(rng(8), 3)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3, **attrs)
    model = make_model(
        [node], {"x": [2, 3, 4]}, ["y"], {k: v.astype(np.float32) for k, v in params.items()}, opset=opset
    )
    x = rng(8).standard_normal((2, 3, 4)).astype(np.float32)
    s, b, m, v = (params[k].astype(np.float32).astype(np.float64)[:, None] for k in "sbmv")
    eps = float(np.float32(1e-3))
    (y,) = run_float64(model, {"x": x})
    np.testing.assert_allclose(y, (x - m) / np.sqrt(v + eps) * s + b, rtol=1e-14)


def _bn_params(g: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    return {
        "s": g.uniform(0.5, 1.5, channels),
        "b": g.normal(0, 0.2, channels),
        "m": g.normal(0, 0.5, channels),
        "v": g.uniform(0.5, 2, channels),
    }


def test_batchnorm_training_mode_outputs_through_the_engine() -> None:
    g = rng(9)
    params = _bn_params(g, 2)
    node = helper.make_node(
        "BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1, momentum=0.75
    )
    model = make_model([node], {"x": [5, 2]}, ["y", "rm", "rv"], {k: v.astype(np.float32) for k, v in params.items()})
    x = g.standard_normal((5, 2)).astype(np.float32)
    y, running_mean, running_var = run_float64(model, {"x": x})
    wide = x.astype(np.float64)
    mean, var = wide.sum(axis=0) / 5, ((wide - wide.sum(axis=0) / 5) ** 2).sum(axis=0) / 5
    momentum = float(np.float32(0.75))  # the momentum weighs the OLD running value
    old_mean, old_var = (params[k].astype(np.float32).astype(np.float64) for k in "mv")
    np.testing.assert_allclose(running_mean, old_mean * momentum + mean * (1 - momentum), rtol=1e-12)
    np.testing.assert_allclose(running_var, old_var * momentum + var * (1 - momentum), rtol=1e-12)
    assert y.shape == (5, 2)
