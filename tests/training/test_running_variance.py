"""`calibrate --running-var biased|unbiased`: ONNX's biased batch variance or PyTorch's n/(n-1) one, against numpy
float64 written from the definitions (calibration_reference), through a chain of two BNs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from calibration_reference import averaged_unbiased, bn_inputs, pooled, running
from click.testing import CliRunner
from onnx import helper, numpy_helper

from normfold.calibrate import calibrate
from normfold.cli import main

F = onnx.TensorProto.FLOAT
EPS = 1e-5
DIMS = ["N", 3, "H", "W"]


def _params() -> dict[str, np.ndarray]:
    g = np.random.default_rng(8)
    return {
        f"{p}_{k}": value.astype(np.float32)
        for p in "ab"
        for k, value in (
            ("scale", g.uniform(0.5, 1.5, 3)),
            ("bias", g.normal(0, 0.3, 3)),
            ("mean", g.normal(0, 0.5, 3)),
            ("var", g.uniform(0.5, 2.0, 3)),
        )
    }


def _model(params: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [
        helper.make_node(
            "BatchNormalization", [x, *(f"{p}_{k}" for k in ("scale", "bias", "mean", "var"))], [y], name=p
        )
        for x, y, p in (("x", "h", "a"), ("h", "y", "b"))
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", F, DIMS)],
        [helper.make_tensor_value_info("y", F, DIMS)],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def _batches() -> list[dict[str, np.ndarray]]:
    """Batches of different batch and image sizes, so the weighting of each method shows."""
    g = np.random.default_rng(21)
    shift = np.array([1.5, -2.0, 0.25]).reshape(1, 3, 1, 1)
    return [
        {"x": (g.normal(0, 2.0, shape) + shift).astype(np.float32)}
        for shape in ((4, 3, 5, 5), (2, 3, 7, 3), (6, 3, 2, 2))
    ]


def _seen(params: dict[str, np.ndarray], batches: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Per BN (a, b), what it sees in each batch."""
    chain = [(params[f"{p}_scale"].astype(np.float64), params[f"{p}_bias"].astype(np.float64), EPS) for p in "ab"]
    per_batch = [bn_inputs(b["x"], chain) for b in batches]
    return [[seen[index] for seen in per_batch] for index in range(2)]


def _reference(method: str, running_var: str, params, batches, momentum: float) -> dict[str, tuple]:
    references = {}
    for prefix, inputs in zip("ab", _seen(params, batches)):
        if method == "running":
            references[prefix] = running(
                inputs, params[f"{prefix}_mean"], params[f"{prefix}_var"], momentum, running_var == "unbiased"
            )
        else:
            references[prefix] = pooled(inputs) if running_var == "biased" else averaged_unbiased(inputs)
    return references


@pytest.mark.parametrize("running_var", ["biased", "unbiased"])
@pytest.mark.parametrize("method", ["cumulative", "running"])
def test_statistics_match_numpy_float64(method: str, running_var: str) -> None:
    params, batches = _params(), _batches()
    result = calibrate(ir.from_proto(_model(params)), batches, method=method, momentum=0.75, running_var=running_var)
    for prefix, (want_mean, want_var) in _reference(method, running_var, params, batches, 0.75).items():
        mean, var = result.statistics[prefix]
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, want_var, rtol=1e-5, atol=1e-6)


def test_the_two_conventions_differ_by_the_expected_amount() -> None:
    """Not a tolerance artefact: with these batches unbiased and biased running variances differ clearly."""
    params, batches = _params(), _batches()
    biased = calibrate(ir.from_proto(_model(params)), batches, method="running", momentum=0.0)
    unbiased = calibrate(ir.from_proto(_model(params)), batches, method="running", momentum=0.0, running_var="unbiased")
    n = 6 * 2 * 2  # values per channel in the last batch, the only one that counts with momentum 0
    np.testing.assert_allclose(unbiased.statistics["a"][1], biased.statistics["a"][1] * n / (n - 1), rtol=1e-12)
    np.testing.assert_array_equal(unbiased.statistics["a"][0], biased.statistics["a"][0])


def test_cli_option_reaches_the_written_model_and_the_report(tmp_path: Path) -> None:
    params, batches = _params(), _batches()[:1]
    source, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(_model(params), source)
    np.savez(data, x=np.stack([b["x"] for b in batches]))
    result = CliRunner().invoke(
        main, ["calibrate", str(source), "--data", str(data), "--provider", "cpu", "--running-var", "unbiased"]
    )
    assert result.exit_code == 0, result.output
    record = "running statistics re-estimated from 1 batch(es) (cumulative, unbiased variance)"
    assert result.stdout.splitlines()[:3] == [
        f"CONVERTED BatchNormalization 'a': {record}",
        f"CONVERTED BatchNormalization 'b': {record}",
        "calibrated 2 BatchNormalization node(s) on 1 batch(es) (cumulative, provider cpu) from the unbiased batch "
        "variance",
    ]
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "m.calibrated.onnx").graph.initializer}
    want = _reference("cumulative", "unbiased", params, batches, 0.9)
    np.testing.assert_allclose(written["a_calibrated_var"], want["a"][1], rtol=1e-5)
    np.testing.assert_allclose(written["b_calibrated_var"], want["b"][1], rtol=1e-5)
