"""normfold.calibrate / `normfold calibrate`: running statistics re-estimated from data, in float64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from gpu_probe import cuda_usable
from numerics import run_ort
from onnx import helper, numpy_helper

from normfold.calibrate import calibrate
from normfold.cli import main

CHANNEL_MEAN = np.array([3.0, -1.0, 0.5], np.float32)
CHANNEL_STD = np.array([2.0, 0.5, 1.5], np.float32)


def _model(with_conv: bool, dtype: int = onnx.TensorProto.FLOAT) -> onnx.ModelProto:
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    g = np.random.default_rng(5)
    inits = {"s": np.ones(3), "b": np.zeros(3), "m": np.zeros(3), "v": np.ones(3)}
    nodes = []
    source = "x"
    if with_conv:
        inits["w"] = g.normal(0, 0.5, (3, 3, 3, 3))
        nodes.append(helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]))
        source = "c"
    nodes.append(helper.make_node("BatchNormalization", [source, "s", "b", "m", "v"], ["y"], name="bn"))
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", dtype, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", dtype, ["N", 3, 6, 6])],
        [numpy_helper.from_array(np.asarray(v).astype(np_dtype), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def _batches(count: int = 4, size: int = 5, dtype: type = np.float32) -> list[dict[str, np.ndarray]]:
    g = np.random.default_rng(9)
    shape = (size, 3, 6, 6)
    return [
        {
            "x": (g.standard_normal(shape) * CHANNEL_STD.reshape(1, 3, 1, 1) + CHANNEL_MEAN.reshape(1, 3, 1, 1)).astype(
                dtype
            )
        }
        for _ in range(count)
    ]


def _stats(result, name: str = "bn") -> tuple[np.ndarray, np.ndarray]:
    return result.statistics[name]


def test_cumulative_recovers_the_exact_statistics_of_the_data() -> None:
    batches = _batches()
    result = calibrate(ir.from_proto(_model(False)), batches)
    data = np.concatenate([b["x"] for b in batches]).astype(np.float64)
    mean, var = _stats(result)
    np.testing.assert_allclose(mean, data.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, data.var(axis=(0, 2, 3)), rtol=1e-5)
    assert abs(mean - CHANNEL_MEAN).max() < 0.1


def test_cumulative_through_a_conv_matches_numpy_on_the_conv_outputs() -> None:
    batches = _batches()
    model = _model(True)
    result = calibrate(ir.from_proto(model), batches)
    conv_only = onnx.ModelProto()
    conv_only.CopyFrom(model)
    del conv_only.graph.node[1:]
    conv_only.graph.output[0].name = "c"
    outputs = np.concatenate([run_ort(conv_only, b)[0] for b in batches]).astype(np.float64)
    mean, var = _stats(result)
    np.testing.assert_allclose(mean, outputs.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, outputs.var(axis=(0, 2, 3)), rtol=1e-5)
    recalibrated = ir.to_proto(result.model)
    stored = {t.name: numpy_helper.to_array(t) for t in recalibrated.graph.initializer}
    bn = recalibrated.graph.node[-1]
    np.testing.assert_array_equal(stored[bn.input[3]], mean.astype(np.float32))


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_running_method_applies_the_momentum_update_per_batch(alpha: float) -> None:
    batches = _batches()
    result = calibrate(ir.from_proto(_model(False)), batches, method="running", momentum=1 - alpha)
    mean, var = np.zeros(3), np.ones(3)
    for batch in batches:
        x = batch["x"].astype(np.float64)
        mean = (1 - alpha) * mean + alpha * x.mean(axis=(0, 2, 3))
        var = (1 - alpha) * var + alpha * x.var(axis=(0, 2, 3))
    got_mean, got_var = _stats(result)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_var, var, rtol=1e-5)


def test_float16_model_accumulates_in_float64() -> None:
    batches = _batches(count=6, size=8, dtype=np.float16)
    result = calibrate(ir.from_proto(_model(False, onnx.TensorProto.FLOAT16)), batches)
    data = np.concatenate([b["x"] for b in batches]).astype(np.float64)
    mean, var = _stats(result)
    assert mean.dtype == np.float64 and np.isfinite(var).all()
    np.testing.assert_allclose(mean, data.mean(axis=(0, 2, 3)), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(var, data.var(axis=(0, 2, 3)), rtol=2e-3)


def test_cli_writes_the_inference_model_and_refuses_bad_data(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(_model(True), source)
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.stack([b["x"] for b in _batches()]))
    result = CliRunner().invoke(main, ["calibrate", str(source), "--data", str(data), "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == (
        "calibrated 1 BatchNormalization node(s) on 4 batch(es) (cumulative, "
        "provider cpu) from the biased batch variance"
    )
    calibrated = onnx.load(tmp_path / "m.calibrated.onnx")
    assert [n.op_type for n in calibrated.graph.node] == ["Conv", "BatchNormalization"]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.zeros((2, 5, 3, 6, 6), np.float32))
    bad = CliRunner().invoke(main, ["calibrate", str(source), "--data", str(wrong), "--provider", "cpu"])
    assert bad.exit_code == 3
    assert bad.stderr.startswith("normfold: error: ") and "Traceback" not in bad.output
    assert not (tmp_path / "m.calibrated.onnx.tmp").exists()


CUDA_REASON = cuda_usable()


@pytest.mark.gpu
@pytest.mark.skipif(bool(CUDA_REASON), reason=f"CUDA is not usable here: {CUDA_REASON}")
def test_calibrate_on_cuda_matches_cpu() -> None:
    batches = _batches()
    cpu = calibrate(ir.from_proto(_model(True)), batches, provider="cpu")
    cuda = calibrate(ir.from_proto(_model(True)), batches, provider="cuda")
    for (mean_cpu, var_cpu), (mean_gpu, var_gpu) in zip(cpu.statistics.values(), cuda.statistics.values()):
        np.testing.assert_allclose(mean_gpu, mean_cpu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var_gpu, var_cpu, rtol=1e-5)
