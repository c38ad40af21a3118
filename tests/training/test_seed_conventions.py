"""ONNX Runtime's training-mode BN and Dropout agree with the seed's pseudo-algorithms and with onnx's
own test cases, with the conventions converted (ONNX momentum = 1 - alpha, ONNX ratio = 1 - p)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx.backend.test.case.node.batch_normalization import _batchnorm_training_mode
from seed_reference import batchnorm_inference, batchnorm_train


def _session(nodes, inputs, outputs, opset: int = 15) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "t", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _bn_session(shape: tuple[int, ...], momentum: float, eps: float) -> ort.InferenceSession:
    c = shape[1]
    f = onnx.TensorProto.FLOAT
    node = helper.make_node(
        "BatchNormalization",
        ["x", "s", "b", "m", "v"],
        ["y", "rm", "rv"],
        training_mode=1,
        momentum=momentum,
        epsilon=eps,
    )
    inputs = [helper.make_tensor_value_info("x", f, list(shape))] + [
        helper.make_tensor_value_info(n, f, [c]) for n in "sbmv"
    ]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("y", "rm", "rv")]
    return _session([node], inputs, outputs)


@pytest.mark.parametrize("shape", [(16, 3), (4, 3, 5, 5), (2, 3, 4, 3, 2)], ids=["2d", "4d", "5d"])
@pytest.mark.parametrize("alpha,eps", [(0.1, 1e-5), (0.3, 1e-3)])
def test_ort_training_batchnorm_matches_seed_and_onnx(shape: tuple[int, ...], alpha: float, eps: float) -> None:
    g = np.random.default_rng(len(shape))
    x = g.normal(1.0, 2.0, shape).astype(np.float32)
    c = shape[1]
    gamma, beta = g.uniform(0.5, 1.5, c).astype(np.float32), g.normal(0, 0.3, c).astype(np.float32)
    mu_e, var_e = g.normal(0, 0.5, c).astype(np.float32), g.uniform(0.5, 2.0, c).astype(np.float32)
    momentum = 1 - alpha
    y, rm, rv = _bn_session(shape, momentum, eps).run(None, {"x": x, "s": gamma, "b": beta, "m": mu_e, "v": var_e})
    wide = [a.astype(np.float64) for a in (x, gamma, beta, mu_e, var_e)]
    want_y, want_rm, want_rv = batchnorm_train(*wide, alpha, eps)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rm, want_rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, want_rv, rtol=1e-5, atol=1e-6)
    onnx_y, onnx_rm, onnx_rv = _batchnorm_training_mode(*wide, momentum=momentum, epsilon=eps)
    np.testing.assert_allclose(onnx_y, want_y, rtol=1e-5, atol=1e-6)  # onnx computes in float32
    np.testing.assert_allclose(onnx_rm, want_rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(onnx_rv, want_rv, rtol=1e-5, atol=1e-6)


def test_momentum_convention_is_not_confused() -> None:
    """With alpha = 0.1, the running mean moves 10% of the way to the batch mean, not 90%."""
    x = np.full((4, 1), 10.0, np.float32)
    one = np.ones(1, np.float32)
    _, rm, _ = _bn_session((4, 1), 0.9, 1e-5).run(None, {"x": x, "s": one, "b": 0 * one, "m": 0 * one, "v": one})
    assert rm[0] == pytest.approx(1.0)


def test_inference_batchnorm_matches_seed() -> None:
    g = np.random.default_rng(7)
    x = g.normal(0, 1, (2, 3, 4, 4)).astype(np.float32)
    params = [g.uniform(0.5, 1.5, 3).astype(np.float32) for _ in range(4)]
    f = onnx.TensorProto.FLOAT
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    inputs = [helper.make_tensor_value_info("x", f, [2, 3, 4, 4])] + [
        helper.make_tensor_value_info(n, f, [3]) for n in "sbmv"
    ]
    (y,) = _session([node], inputs, [helper.make_tensor_value_info("y", f, None)]).run(
        None, dict(zip("xsbmv", [x, *params]))
    )
    np.testing.assert_allclose(
        y, batchnorm_inference(*(a.astype(np.float64) for a in (x, *params)), 1e-3), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("p", [0.9, 0.5, 0.2])
def test_ort_training_dropout_matches_seed_statistics(p: float) -> None:
    """ONNX ratio = 1 - p. Zeros within a 5-sigma binomial bound, kept values scaled by 1/p, mean kept."""
    ratio = 1 - p
    f = onnx.TensorProto.FLOAT
    node = helper.make_node("Dropout", ["x", "ratio", "training"], ["y", "mask"], seed=5)
    inputs = [
        helper.make_tensor_value_info("x", f, [200, 500]),
        helper.make_tensor_value_info("ratio", f, []),
        helper.make_tensor_value_info("training", onnx.TensorProto.BOOL, []),
    ]
    outputs = [
        helper.make_tensor_value_info("y", f, None),
        helper.make_tensor_value_info("mask", onnx.TensorProto.BOOL, None),
    ]
    session = _session([node], inputs, outputs, opset=13)
    x = np.random.default_rng(0).uniform(1.0, 2.0, (200, 500)).astype(np.float32)
    y, mask = session.run(None, {"x": x, "ratio": np.array(ratio, np.float32), "training": np.array(True)})
    n = x.size
    zeros = int((y == 0).sum())
    assert abs(zeros - n * ratio) <= 5 * np.sqrt(n * ratio * (1 - ratio))
    np.testing.assert_allclose(y[mask], x[mask] / p, rtol=1e-6)
    assert not y[~mask].any()
    assert abs(y.mean() - x.mean()) <= 5 * x.std() / np.sqrt(n * p) + 0.05 * x.mean() * ratio / p
    identity, _ = session.run(None, {"x": x, "ratio": np.array(ratio, np.float32), "training": np.array(False)})
    np.testing.assert_array_equal(identity, x)
