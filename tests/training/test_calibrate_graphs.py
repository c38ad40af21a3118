"""normfold.calibrate on graphs that broke it: names it used, BNs that already output statistics, several BNs,
a Dropout that `fold` keeps, and batches of different sizes. Statistics are checked against numpy float64."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from calibration_reference import bn_inputs, pooled
from onnx import helper, numpy_helper

from normfold.calibrate import calibrate
from normfold.graph_edit import constant_array

F = onnx.TensorProto.FLOAT
EPS = 1e-5


def _params(prefix: str, fresh: bool = False) -> dict[str, np.ndarray]:
    """BN parameters; `fresh` gives the never-tracked mean 0 / variance 1."""
    g = np.random.default_rng(len(prefix) + 3)
    return {
        f"{prefix}_scale": g.uniform(0.5, 1.5, 3).astype(np.float32),
        f"{prefix}_bias": g.normal(0, 0.2, 3).astype(np.float32),
        f"{prefix}_mean": np.zeros(3, np.float32) if fresh else g.normal(0, 0.5, 3).astype(np.float32),
        f"{prefix}_var": np.ones(3, np.float32) if fresh else g.uniform(0.5, 2.0, 3).astype(np.float32),
    }


def _bn(x: str, y: str, prefix: str, extra: tuple[str, ...] = (), **attrs: object) -> onnx.NodeProto:
    inputs = [x, f"{prefix}_scale", f"{prefix}_bias", f"{prefix}_mean", f"{prefix}_var"]
    return helper.make_node("BatchNormalization", inputs, [y, *extra], name=prefix, **attrs)


def _model(
    nodes: list[onnx.NodeProto],
    params: dict[str, np.ndarray],
    outputs: list[onnx.ValueInfoProto],
    x: str = "x",
    opset: int = 15,
    dims: tuple = ("N", 3, 6, 6),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(x, F, list(dims))],
        outputs,
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _out(name: str, dtype: int = F, dims: tuple = ("N", 3, 6, 6)) -> onnx.ValueInfoProto:
    """A graph output; running statistics (named *_rm, *_rv) have shape [3]."""
    return helper.make_tensor_value_info(name, dtype, [3] if name.endswith(("_rm", "_rv")) else list(dims))


def _batches(name: str = "x", shapes: tuple = ((4, 3, 6, 6),) * 3) -> list[dict[str, np.ndarray]]:
    g = np.random.default_rng(11)
    shift = np.array([2.0, -1.0, 0.5]).reshape(1, 3, 1, 1)
    return [{name: (g.normal(0, 1.5, shape) + shift).astype(np.float32)} for shape in shapes]


def _chain(params: dict[str, np.ndarray], *prefixes: str) -> list[tuple[np.ndarray, np.ndarray, float]]:
    return [(params[f"{p}_scale"].astype(np.float64), params[f"{p}_bias"].astype(np.float64), EPS) for p in prefixes]


def _assert_statistics(result, params, prefixes, feeds) -> None:
    """Each BN's statistics, as returned and as written into the inference model, match numpy float64."""
    seen = [bn_inputs(x, _chain(params, *prefixes)) for x in feeds]
    written = {n.name: n for n in result.model.graph if n.op_type == "BatchNormalization"}
    for index, prefix in enumerate(prefixes):
        want_mean, want_var = pooled([batch[index] for batch in seen])
        mean, var = result.statistics[prefix]
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, want_var, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(constant_array(written[prefix].inputs[3]), mean.astype(np.float32))
        np.testing.assert_array_equal(constant_array(written[prefix].inputs[4]), var.astype(np.float32))


@pytest.mark.parametrize("where", ["intermediate value", "graph input"])
def test_a_value_named_training_does_not_clash_with_the_mode_flag(where: str) -> None:
    params = _params("bn")
    if where == "graph input":
        model, source = _model([_bn("training", "y", "bn")], params, [_out("y")], x="training"), "training"
    else:
        model, source = (
            _model([helper.make_node("Relu", ["x"], ["training"]), _bn("training", "y", "bn")], params, [_out("y")]),
            "x",
        )
    batches = _batches(source)
    result = calibrate(ir.from_proto(model), batches)
    feeds = [np.maximum(b[source], 0) if where != "graph input" else b[source] for b in batches]
    _assert_statistics(result, params, ["bn"], feeds)


CASES = {
    "training BN with running outputs": (
        [_bn("x", "y", "a", ("a_rm", "a_rv"), training_mode=1)],
        ["a"],
        False,
        ["y", "a_rm", "a_rv"],
    ),
    "never-tracked training BN with running outputs": (
        [_bn("x", "y", "a", ("a_rm", "a_rv"), training_mode=1)],
        ["a"],
        True,
        ["y", "a_rm", "a_rv"],
    ),
    "two BNs, the first with running outputs": (
        [_bn("x", "h", "a", ("a_rm", "a_rv"), training_mode=1), _bn("h", "y", "b")],
        ["a", "b"],
        True,
        ["y", "a_rm", "a_rv"],
    ),
    "three BNs, an intermediate output": (
        [_bn("x", "h", "a"), _bn("h", "k", "b"), _bn("k", "y", "c")],
        ["a", "b", "c"],
        False,
        ["y", "h"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_running_statistics_outputs_and_several_bns_are_counted_right(case: str) -> None:
    nodes, prefixes, fresh, outputs = CASES[case]
    params = {k: v for p in prefixes for k, v in _params(p, fresh and p == "a").items()}
    model = _model(nodes, params, [_out(name) for name in outputs])
    batches = _batches()
    result = calibrate(ir.from_proto(model), batches)
    _assert_statistics(result, params, prefixes, [b["x"] for b in batches])
    assert [v.name for v in result.model.graph.outputs] == [name for name in outputs if not name.startswith("a_r")]


def test_dropout_that_fold_keeps_is_the_identity_while_calibrating() -> None:
    params = {**_params("a"), **_params("b")}
    dropout = helper.make_node("Dropout", ["h"], ["d", "mask"], name="drop", ratio=0.5)
    model = _model(
        [_bn("x", "h", "a"), dropout, _bn("d", "y", "b")],
        params,
        [_out("y"), _out("mask", onnx.TensorProto.BOOL)],
        opset=11,
    )
    batches = _batches()
    result = calibrate(ir.from_proto(model), batches)
    _assert_statistics(result, params, ["a", "b"], [b["x"] for b in batches])
    assert [n.op_type for n in result.model.graph] == ["BatchNormalization", "Dropout", "BatchNormalization"]


def test_batches_of_different_sizes_weigh_by_their_values_per_channel() -> None:
    params = _params("bn")
    dims = ("N", 3, "H", "W")
    model = _model([_bn("x", "y", "bn")], params, [_out("y", dims=dims)], dims=dims)
    batches = _batches(shapes=((4, 3, 6, 6), (2, 3, 10, 10), (5, 3, 3, 3)))
    result = calibrate(ir.from_proto(model), batches)
    _assert_statistics(result, params, ["bn"], [b["x"] for b in batches])
