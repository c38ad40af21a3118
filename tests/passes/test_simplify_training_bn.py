"""`fold(simplify=True)` leaves a training-mode BN alone: onnx_ir's and onnxscript's clean-up must not
drop its `training_mode` attribute or its running-statistics outputs (seen with old onnx-ir releases)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from graphs import bn_node, bn_params, op_types, rng
from numerics import random_feeds, run_ort
from onnx import helper, numpy_helper

from normfold import fold

TRAINING_DETAIL = (
    "training_mode=1: it normalizes with batch statistics, so folding its running statistics would change the "
    "outputs; convert it to inference mode first (normfold mode --eval, or fold --eval)"
)

# A training-mode BN must declare its running-statistics outputs (onnx's checker and ONNX Runtime both refuse
# one without), so "without" them means unread: no consumer and not graph outputs, which is what dead-code
# elimination is tempted to remove. The other case makes them graph outputs.
STAT_CASES = {
    "running-stats-unread": [],
    "running-stats-are-graph-outputs": ["running_mean", "running_var"],
}


def _conv_training_bn(opset: int, extra_graph_outputs: list[str]) -> onnx.ModelProto:
    """Conv(3->4) then BN 'bn' with training_mode=1 and its running statistics, on a batch of 4."""
    g = rng(opset)
    inits = {"w": g.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), **bn_params("bn", 4, g)}
    bn = bn_node("y", "z", "bn", training_mode=1)
    bn.output.extend(["running_mean", "running_var"])
    shapes = {"z": [4, 4, 4, 4], "running_mean": [4], "running_var": [4]}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn],
        "training-bn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3, 6, 6])],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shapes[n]) for n in ["z", *extra_graph_outputs]],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("opset", [15, 17])
@pytest.mark.parametrize("case", STAT_CASES, ids=list(STAT_CASES))
def test_simplify_keeps_training_mode_bn(opset: int, case: str) -> None:
    graph_outputs = STAT_CASES[case]
    model = _conv_training_bn(opset, graph_outputs)
    result = fold(model, simplify=True)
    folded = ir.to_proto(result.model)
    onnx.checker.check_model(folded, full_check=True)
    assert op_types(folded) == ["Conv", "BatchNormalization"]
    bn = folded.graph.node[1]
    assert [(a.name, a.i) for a in bn.attribute if a.name == "training_mode"] == [("training_mode", 1)]
    assert [o.name for o in folded.graph.output] == ["z", *graph_outputs]
    assert list(bn.output) == ["z", "running_mean", "running_var"]
    assert [(r.node, r.action, r.detail) for r in result.records] == [("bn", "skipped", TRAINING_DETAIL)]
    feeds = random_feeds(model)
    expected, actual = run_ort(model, feeds), run_ort(folded, feeds)
    assert len(actual) == len(expected) == 1 + len(graph_outputs)
    for want, got in zip(expected, actual):
        np.testing.assert_array_equal(got, want)


def test_training_mode_output_uses_batch_statistics() -> None:
    """The reference itself is training mode: each channel of the output has mean beta and std gamma."""
    model = _conv_training_bn(15, [])
    folded = fold(model, simplify=True).model
    (z,) = run_ort(folded, random_feeds(model))
    params = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    np.testing.assert_allclose(z.astype(np.float64).mean(axis=(0, 2, 3)), params["bn_bias"], atol=1e-5)
    np.testing.assert_allclose(z.astype(np.float64).std(axis=(0, 2, 3)), params["bn_scale"], rtol=1e-3)
