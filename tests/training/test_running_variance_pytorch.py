"""`--running-var unbiased` reproduces PyTorch's BatchNorm running statistics: a train step of `mode --train`,
`calibrate --method running` (PyTorch momentum = 1 - ONNX momentum) and `calibrate --method cumulative`
(PyTorch's momentum=None, as torch.optim.swa_utils.update_bn). Skipped where PyTorch is not installed."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from numerics import run_ort
from onnx import helper, numpy_helper

from normfold.calibrate import calibrate
from normfold.passes import SetTrainingModePass

torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install '.[export]')")

EPS = 1e-3
PREFIXES = ("a", "b")


def _params() -> dict[str, np.ndarray]:
    g = np.random.default_rng(17)
    return {
        f"{p}_{k}": value.astype(np.float32)
        for p in PREFIXES
        for k, value in (
            ("scale", g.uniform(0.5, 1.5, 3)),
            ("bias", g.normal(0, 0.3, 3)),
            ("mean", g.normal(0, 0.5, 3)),
            ("var", g.uniform(0.5, 2.0, 3)),
        )
    }


def _onnx_chain(params: dict[str, np.ndarray], count: int) -> onnx.ModelProto:
    """x -> BN a [-> BN b], float32, dynamic batch and image size."""
    sources, targets = ["x", "h"][:count], ["h", "y"][:count]
    targets[-1] = "y"
    nodes = [
        helper.make_node(
            "BatchNormalization",
            [source, f"{p}_scale", f"{p}_bias", f"{p}_mean", f"{p}_var"],
            [target],
            name=p,
            epsilon=EPS,
        )
        for source, target, p in zip(sources, targets, PREFIXES)
    ]
    dims = ["N", 3, "H", "W"]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, dims)],
        [numpy_helper.from_array(v, k) for k, v in params.items() if k[0] in PREFIXES[:count]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def _torch_chain(params: dict[str, np.ndarray], count: int, momentum: float | None) -> torch.nn.Sequential:
    """The same chain as BatchNorm2d modules in train mode, with PyTorch's momentum (the weight of the new batch)."""
    modules = []
    for p in PREFIXES[:count]:
        bn = torch.nn.BatchNorm2d(3, eps=EPS, momentum=momentum)
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(params[f"{p}_scale"]))
            bn.bias.copy_(torch.from_numpy(params[f"{p}_bias"]))
            bn.running_mean.copy_(torch.from_numpy(params[f"{p}_mean"]))
            bn.running_var.copy_(torch.from_numpy(params[f"{p}_var"]))
        modules.append(bn)
    return torch.nn.Sequential(*modules).train()


def _batches() -> list[dict[str, np.ndarray]]:
    g = np.random.default_rng(29)
    return [{"x": g.normal(0.5, 2.0, shape).astype(np.float32)} for shape in ((4, 3, 5, 5), (2, 3, 7, 3), (6, 3, 2, 2))]


def test_mode_train_step_matches_pytorch() -> None:
    params, x = _params(), _batches()[1]["x"]
    trained = SetTrainingModePass(momentum=0.9, running_var="unbiased")(ir.from_proto(_onnx_chain(params, 1))).model
    y, mean, var = run_ort(trained, {"x": x, "training": np.array(True)})
    chain = _torch_chain(params, 1, momentum=0.1)
    with torch.no_grad():
        want_y = chain(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, chain[0].running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, chain[0].running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_calibrate_running_matches_pytorch_momentum() -> None:
    params, batches = _params(), _batches()
    result = calibrate(
        ir.from_proto(_onnx_chain(params, 2)), batches, method="running", momentum=0.75, running_var="unbiased"
    )
    chain = _torch_chain(params, 2, momentum=0.25)
    with torch.no_grad():
        for batch in batches:
            chain(torch.from_numpy(batch["x"]))
    for p, bn in zip(PREFIXES, chain):
        np.testing.assert_allclose(result.statistics[p][0], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.statistics[p][1], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_calibrate_cumulative_matches_update_bn() -> None:
    params, batches = _params(), _batches()
    result = calibrate(ir.from_proto(_onnx_chain(params, 2)), batches, method="cumulative", running_var="unbiased")
    chain = _torch_chain(params, 2, momentum=0.1)
    torch.optim.swa_utils.update_bn([torch.from_numpy(b["x"]) for b in batches], chain)
    for p, bn in zip(PREFIXES, chain):
        np.testing.assert_allclose(result.statistics[p][0], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.statistics[p][1], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
