"""Monte Carlo Dropout: seeded, reproducible, and with the mean and spread inverted Dropout implies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from examples import MODELS
from gpu_probe import cuda_usable
from onnx import helper, numpy_helper

from normfold import NormfoldError
from normfold.cli import main
from normfold.monte_carlo import monte_carlo

RATIO = 0.3


def _linear(with_dropout: bool = True) -> tuple[onnx.ModelProto, np.ndarray]:
    w = np.random.default_rng(1).normal(0, 1, (64, 4)).astype(np.float32)
    nodes = (
        [helper.make_node("Dropout", ["x", "ratio"], ["d"], name="drop")]
        if with_dropout
        else [helper.make_node("Identity", ["x"], ["d"])]
    )
    nodes.append(helper.make_node("MatMul", ["d", "w"], ["y"], name="mm"))
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(RATIO, np.float32), "ratio")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model, w


def test_mean_and_std_match_inverted_dropout_theory() -> None:
    model, w = _linear()
    x = np.random.default_rng(2).uniform(0.5, 1.5, (1, 64)).astype(np.float32)
    result = monte_carlo(ir.from_proto(model), {"x": x}, passes=4000, seed=3)
    exact_mean = (x.astype(np.float64) @ w.astype(np.float64))[0]
    keep = 1 - RATIO
    exact_std = np.sqrt(
        ((x[0].astype(np.float64) ** 2)[:, None] * w.astype(np.float64) ** 2).sum(axis=0) * RATIO / keep
    )
    standard_error = exact_std / np.sqrt(4000)
    assert np.all(np.abs(result.mean["y"][0] - exact_mean) < 5 * standard_error)
    np.testing.assert_allclose(result.std["y"][0], exact_std, rtol=0.08)
    assert result.dropouts == ["drop"]


def test_every_element_is_kept_with_probability_one_minus_ratio() -> None:
    """ONNX Runtime's CPU Dropout always drops element 0 (measured, onnxruntime 1.31.1); normfold's masks do not."""
    model, _ = _linear()
    identity = np.eye(64, dtype=np.float32)
    for tensor in model.graph.initializer:
        if tensor.name == "w":
            tensor.CopyFrom(numpy_helper.from_array(identity, "w"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 64
    result = monte_carlo(ir.from_proto(model), {"x": np.ones((1, 64), np.float32)}, passes=3000, seed=0)
    kept = result.mean["y"][0] * (1 - RATIO)  # E[m/p * 1] * p = P(keep)
    assert np.all(np.abs(kept - (1 - RATIO)) < 5 * np.sqrt(RATIO * (1 - RATIO) / 3000))


def test_same_seed_reproduces_and_another_seed_differs() -> None:
    model = ir.load(MODELS / "mlp.onnx")
    feeds = {"features": np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)}
    a = monte_carlo(model, feeds, passes=5, seed=1)
    b = monte_carlo(model, feeds, passes=5, seed=1)
    c = monte_carlo(model, feeds, passes=5, seed=2)
    np.testing.assert_array_equal(a.mean["scores"], b.mean["scores"])
    assert not np.array_equal(a.mean["scores"], c.mean["scores"])


def test_path_model_proto_and_ir_model_give_the_same_passes(tmp_path: Path) -> None:
    """Like normfold.fold and calibrate, monte_carlo takes a path, an onnx.ModelProto or an onnx_ir.Model."""
    model, _ = _linear()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 64)).astype(np.float32)}
    in_memory = ir.from_proto(model)
    before = ir.to_proto(in_memory).SerializeToString()
    results = [monte_carlo(m, feeds, passes=5, seed=1) for m in (path, str(path), model, in_memory)]
    for result in results[1:]:
        np.testing.assert_array_equal(result.mean["y"], results[0].mean["y"])
        np.testing.assert_array_equal(result.std["y"], results[0].std["y"])
        assert result.dropouts == ["drop"]
    assert ir.to_proto(in_memory).SerializeToString() == before, "the onnx_ir.Model argument is left as it was"


def test_model_without_dropout_is_refused() -> None:
    model, _ = _linear(with_dropout=False)
    with pytest.raises(NormfoldError, match="^the model has no Dropout in its main graph"):
        monte_carlo(ir.from_proto(model), {"x": np.ones((1, 64), np.float32)}, passes=3)


def test_cli_writes_mean_and_std(tmp_path: Path) -> None:
    model, _ = _linear()
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.ones((1, 64), np.float32))
    out = tmp_path / "mc.npz"
    result = CliRunner().invoke(
        main, ["mc", str(source), "--inputs", str(inputs), "--passes", "20", "--provider", "cpu", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "20 passes on cpu, Dropout active in 1 node(s): drop"
    with np.load(out) as saved:
        assert sorted(saved.files) == ["y_mean", "y_std"] and saved["y_std"].shape == (1, 4)


CUDA_REASON = cuda_usable()


@pytest.mark.gpu
@pytest.mark.skipif(bool(CUDA_REASON), reason=f"CUDA is not usable here: {CUDA_REASON}")
def test_monte_carlo_on_cuda_draws_the_same_masks_as_cpu() -> None:
    model = ir.load(MODELS / "mlp.onnx")
    feeds = {"features": np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)}
    cpu = monte_carlo(model, feeds, passes=5, seed=1, provider="cpu")
    cuda = monte_carlo(model, feeds, passes=5, seed=1, provider="cuda")
    np.testing.assert_allclose(cuda.mean["scores"], cpu.mean["scores"], rtol=1e-4, atol=1e-5)
