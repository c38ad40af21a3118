"""normfold.calibrate / `normfold calibrate` refuse what would crash or write NaN: one test per guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from normfold import NormfoldError
from normfold.calibrate import calibrate
from normfold.cli import main

F = onnx.TensorProto.FLOAT


def _model(
    x_dims: list,
    nodes: list[onnx.NodeProto] | None = None,
    outputs: tuple[str, ...] = ("y",),
    dtype: int = F,
    inputs: bool = True,
    extra: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    params = {"s": np.ones(3), "b": np.zeros(3), "m": np.full(3, 0.5), "v": np.full(3, 2.0), **(extra or {})}
    nodes = nodes or [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", dtype, x_dims)] if inputs else [],
        [helper.make_tensor_value_info(o, dtype, [3] if o != "y" else x_dims) for o in outputs],
        [numpy_helper.from_array(np.asarray(v).astype(np_dtype), k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _batches(count: int = 3, shape: tuple[int, ...] = (4, 3, 5, 5), dtype: type = np.float32) -> list[dict]:
    g = np.random.default_rng(4)
    return [{"x": g.normal(1.0, 2.0, shape).astype(dtype)} for _ in range(count)]


def _invoke(tmp_path: Path, model: onnx.ModelProto, arrays: dict[str, np.ndarray]):
    source, data = tmp_path / "m.onnx", tmp_path / "data.npz"
    onnx.save(model, source)
    np.savez(data, **arrays)
    return CliRunner().invoke(main, ["calibrate", str(source), "--data", str(data), "--provider", "cpu"])


def test_model_without_graph_inputs_is_refused(tmp_path: Path) -> None:
    constant = {"c": np.ones((2, 3, 4, 4))}
    nodes = [helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn")]
    model = _model([2, 3, 4, 4], nodes, inputs=False, extra=constant)
    result = _invoke(tmp_path, model, {})
    assert result.exit_code == 3
    assert result.stderr == (
        "normfold: error: the model has no graph inputs, so calibration data cannot reach its BatchNormalization\n"
    )
    assert not (tmp_path / "m.calibrated.onnx").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_calibration_data_is_refused_naming_batch_and_input(tmp_path: Path, value: float) -> None:
    data = np.stack([b["x"] for b in _batches()])
    data[2, 1, 0, 3, 3] = value
    result = _invoke(tmp_path, _model(["N", 3, 5, 5]), {"x": data})
    assert result.exit_code == 3
    assert result.stderr == (
        "normfold: error: calibration batch 2 (counting from 0): input 'x' holds NaN or infinite "
        "values, which would make the running statistics NaN\n"
    )
    assert not (tmp_path / "m.calibrated.onnx").exists()


def test_batch_statistics_that_overflow_are_refused() -> None:
    batches = _batches(dtype=np.float16)
    batches[1]["x"] = (batches[1]["x"] * 300).astype(np.float16)  # variance ~ 360000 > float16's 65504
    model = _model(["N", 3, 5, 5], dtype=onnx.TensorProto.FLOAT16)
    with pytest.raises(NormfoldError) as caught:
        calibrate(ir.from_proto(model), batches)
    assert str(caught.value) == (
        "calibration batch 1 (counting from 0) gives BatchNormalization 'bn' NaN or infinite "
        "batch statistics (its input overflows its type or holds NaN)"
    )
    assert caught.value.exit_code == 3


def test_bn_that_cannot_run_in_training_mode_is_named() -> None:
    nodes = [
        helper.make_node(
            "BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], name="bn", training_mode=1
        ),
        helper.make_node("Identity", ["rm"], ["kept"]),
    ]
    model = _model(["N", 3, 5, 5], nodes, outputs=("y", "kept"), extra={"m": np.zeros(3), "v": np.ones(3)})
    with pytest.raises(NormfoldError) as caught:
        calibrate(ir.from_proto(model), _batches())
    assert str(caught.value) == (
        "BatchNormalization 'bn' cannot run in training mode (its running-statistics outputs "
        "are already used in the graph); calibration needs every one"
    )
    assert caught.value.exit_code == 3


def test_unbiased_variance_needs_two_values_per_channel() -> None:
    batches = [{"x": np.ones((2, 3), np.float32)}, {"x": np.ones((1, 3), np.float32)}]
    with pytest.raises(NormfoldError) as caught:
        calibrate(ir.from_proto(_model(["N", 3])), batches, running_var="unbiased")
    assert str(caught.value) == (
        "calibration batch 1 (counting from 0) gives BatchNormalization 'bn' 1 value(s) per "
        "channel; the unbiased variance n/(n-1) needs at least 2"
    )
    assert caught.value.exit_code == 3


def test_unknown_running_var_is_a_usage_error() -> None:
    with pytest.raises(NormfoldError) as caught:
        calibrate(ir.from_proto(_model(["N", 3, 5, 5])), _batches(), running_var="population")
    assert str(caught.value) == "unknown running_var 'population' (choose from biased, unbiased)"
    assert caught.value.exit_code == 2
