"""SetTrainingModePass / `normfold mode --train`: one flag switches every BN and Dropout; --eval undoes it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from examples import MODELS
from graphs import bn_params, op_types, rng
from numerics import random_feeds, run_ort
from onnx import helper, numpy_helper

from normfold import NormfoldError
from normfold.cli import main
from normfold.passes import SetInferenceModePass, SetTrainingModePass

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from seed_reference import batchnorm_train  # noqa: E402

INFERENCE_MODELS = [
    "resnet_block.onnx",
    "mlp.onnx",
    "torchvision_resnet_eval.onnx",
    "torchvision_mobilenetv3_eval.onnx",
]


def _train(model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    return ir.to_proto(SetTrainingModePass(**kwargs)(ir.from_proto(model)).model)


@pytest.mark.parametrize("name", INFERENCE_MODELS)
def test_flag_false_is_the_inference_model_and_true_runs(name: str) -> None:
    original = onnx.load(MODELS / name)
    trained = _train(original)
    onnx.checker.check_model(trained, full_check=True)
    feeds = random_feeds(original, batch=4)
    expected = run_ort(original, feeds)
    omitted = run_ort(trained, feeds)
    for want, got in zip(expected, omitted):
        np.testing.assert_array_equal(got, want)
    explicit_false = run_ort(trained, {**feeds, "training": np.array(False)})
    np.testing.assert_array_equal(explicit_false[0], expected[0])
    batch_mode = run_ort(trained, {**feeds, "training": np.array(True)})
    assert not np.array_equal(batch_mode[0], expected[0])
    n_bn = op_types(original).count("BatchNormalization")
    assert len(trained.graph.output) == len(original.graph.output) + 2 * n_bn


@pytest.mark.parametrize("name", INFERENCE_MODELS)
def test_train_then_eval_round_trips_exactly(name: str) -> None:
    original = onnx.load(MODELS / name)
    back = ir.to_proto(SetInferenceModePass()(ir.from_proto(_train(original))).model)
    onnx.checker.check_model(back, full_check=True)
    assert op_types(back) == op_types(original)
    assert [i.name for i in back.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in back.graph.output] == [o.name for o in original.graph.output]
    feeds = random_feeds(original, batch=3)
    for want, got in zip(run_ort(original, feeds), run_ort(back, feeds)):
        np.testing.assert_array_equal(got, want)


def _single_bn(shape: tuple[int, ...]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = rng(31)
    params = bn_params("bn", shape[1], g)
    node = helper.make_node("BatchNormalization", ["x", *params], ["y"], name="bn", epsilon=1e-3)
    graph = helper.make_graph(
        [node],
        "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(shape))],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model, params


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 5), (2, 3, 3, 4, 2)], ids=["2d", "4d", "5d"])
@pytest.mark.parametrize("alpha", [0.1, 0.25])
def test_training_flag_gives_the_seed_batchnorm(shape: tuple[int, ...], alpha: float) -> None:
    model, params = _single_bn(shape)
    trained = _train(model, momentum=1 - alpha)
    x = np.random.default_rng(2).normal(0.5, 2.0, shape).astype(np.float32)
    y, mean, var = run_ort(trained, {"x": x, "training": np.array(True)})
    gamma, beta, mu, sigma2 = (params[f"bn_{k}"].astype(np.float64) for k in ("scale", "bias", "mean", "var"))
    want_y, want_mean, want_var = batchnorm_train(x.astype(np.float64), gamma, beta, mu, sigma2, alpha, 1e-3)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=1e-5, atol=1e-6)
    assert [o.name for o in trained.graph.output] == ["y", "bn.running_mean", "bn.running_var"]
    _, kept_mean, kept_var = run_ort(trained, {"x": x})
    np.testing.assert_array_equal(kept_mean, params["bn_mean"])
    np.testing.assert_array_equal(kept_var, params["bn_var"])


def test_cli_alpha_and_momentum_are_distinct_conventions(tmp_path: Path) -> None:
    model, _ = _single_bn((4, 3))
    source = tmp_path / "bn.onnx"
    onnx.save(model, source)
    runner = CliRunner()
    for option, value in (("--alpha", "0.1"), ("--momentum", "0.9")):
        result = runner.invoke(main, ["mode", str(source), "--train", option, value, "-o", str(tmp_path / "t.onnx")])
        assert result.exit_code == 0, result.output
        assert "(momentum 0.9)" in result.stdout
        switch = onnx.load(tmp_path / "t.onnx").graph.node[0]
        train_bn = next(a.g for a in switch.attribute if a.name == "then_branch").node[0]
        assert next(a.f for a in train_bn.attribute if a.name == "momentum") == pytest.approx(0.9)
    both = runner.invoke(main, ["mode", str(source), "--train", "--alpha", "0.1", "--momentum", "0.9"])
    assert both.exit_code == 2
    assert both.stderr.strip() == (
        "normfold: error: --momentum (ONNX: weight of the old value) and --alpha (weight of "
        "the new value) say the same thing two ways; give one"
    )


def test_dropout_follows_the_flag(tmp_path: Path) -> None:
    original = onnx.load(MODELS / "mlp.onnx")
    trained = _train(original)
    feeds = {"features": np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)}
    a = run_ort(trained, {**feeds, "training": np.array(True)})[0]
    b = run_ort(trained, {**feeds, "training": np.array(True)})[0]
    assert not np.array_equal(a, b), "Dropout samples a new mask each run"


def test_old_opsets_are_converted_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _single_bn((4, 3))
    model.opset_import[0].version = 9
    result = SetTrainingModePass()(ir.from_proto(model))
    assert result.records[0].detail.startswith("opset 9 -> 15 with onnx.version_converter")
    assert result.model.opset_imports[""] == 15
    from onnx import version_converter

    def refuse(*args: object) -> None:
        raise RuntimeError("No Adapter For BatchNormalization")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    with pytest.raises(
        NormfoldError,
        match=r"^mode --train needs opset 14 or newer .* the model's opset 9 could not be "
        r"converted: No Adapter For BatchNormalization$",
    ):
        _train(model)


def test_existing_flag_name_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    shutil.copy(MODELS / "mlp.onnx", source)
    result = CliRunner().invoke(main, ["mode", str(source), "--train", "--flag", "features"])
    assert result.exit_code == 2
    assert "already has an input named 'features'" in result.stderr


def _session(model: onnx.ModelProto, folder: Path) -> ort.InferenceSession:
    """One ONNX Runtime CPU session at ORT_DISABLE_ALL, kept across runs (so state left by a run would show)."""
    path = folder / "session.onnx"
    onnx.save(model, path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _fresh_export() -> onnx.ModelProto:
    """A freshly initialised BN as the TorchScript exporter writes it with constant folding off: identical
    initializers merged (weight = running_var = ones, bias = running_mean = zeros), reached through Identity."""
    f = onnx.TensorProto.FLOAT
    chains = (
        ("ones", "bn.weight"),
        ("zeros", "bn.bias"),
        ("zeros", "mean_0"),
        ("mean_0", "bn.running_mean"),
        ("ones", "bn.running_var"),
    )
    nodes = [
        *(helper.make_node("Identity", [source], [target]) for source, target in chains),
        helper.make_node(
            "BatchNormalization",
            ["x", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
            ["y"],
            name="bn",
            epsilon=1e-5,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "fresh",
        [helper.make_tensor_value_info("x", f, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", f, ["N", 3, "H", "W"])],
        [
            numpy_helper.from_array(np.ones(3, np.float32), "ones"),
            numpy_helper.from_array(np.zeros(3, np.float32), "zeros"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("running_var", ["biased", "unbiased"])
def test_statistics_through_identity_chains_give_typed_outputs(tmp_path: Path, running_var: str) -> None:
    source = tmp_path / "fresh.onnx"
    onnx.save(_fresh_export(), source)
    option = ["--running-var", "unbiased"] if running_var == "unbiased" else []  # biased is the default
    result = CliRunner().invoke(main, ["mode", str(source), "--train", *option])
    assert result.exit_code == 0, result.output
    variance = "unbiased, n/(n-1)" if running_var == "unbiased" else "biased"
    assert result.stdout.splitlines()[0] == (
        f"CONVERTED BatchNormalization 'bn': batch statistics when 'training' is true (momentum 0.9); running variance "
        f"{variance}; outputs bn.running_mean_1, bn.running_var_1"
    )
    trained = onnx.load(tmp_path / "fresh.train.onnx")
    onnx.checker.check_model(trained, full_check=True)
    for output in trained.graph.output[1:]:
        assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [3]
    session = _session(trained, tmp_path)
    x = np.random.default_rng(6).normal(1.0, 2.0, (4, 3, 5, 6)).astype(np.float32)
    ones, zeros = np.ones(3), np.zeros(3)
    want = batchnorm_train(x.astype(np.float64), ones, zeros, zeros, ones, 0.1, 1e-5, running_var == "unbiased")
    for got, expected in zip(session.run(None, {"x": x, "training": np.array(True)}), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    y, mean, var = session.run(None, {"x": x, "training": np.array(False)})
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-6)
    np.testing.assert_array_equal(mean, zeros.astype(np.float32))
    np.testing.assert_array_equal(var, ones.astype(np.float32))


def test_unbiased_factor_follows_the_batch_shape_at_run_time(tmp_path: Path) -> None:
    f = onnx.TensorProto.FLOAT
    params = bn_params("bn", 3, rng(12))
    node = helper.make_node("BatchNormalization", ["x", *params], ["y"], name="bn", epsilon=1e-3)
    dims = ["N", 3, "H", "W"]
    graph = helper.make_graph(
        [node],
        "t",
        [helper.make_tensor_value_info("x", f, dims)],
        [helper.make_tensor_value_info("y", f, dims)],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    trained = _train(model, momentum=0.75, running_var="unbiased")
    session = _session(trained, tmp_path)
    gamma, beta, mu, sigma2 = (params[f"bn_{k}"].astype(np.float64) for k in ("scale", "bias", "mean", "var"))
    g = np.random.default_rng(3)
    for shape in ((4, 3, 5, 5), (2, 3, 3, 7), (1, 3, 2, 1)):
        x = g.normal(0.5, 2.0, shape).astype(np.float32)
        got = session.run(None, {"x": x, "training": np.array(True)})
        want = batchnorm_train(x.astype(np.float64), gamma, beta, mu, sigma2, 0.25, 1e-3, unbiased=True)
        for value, expected in zip(got, want):
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    _, kept_mean, kept_var = session.run(None, {"x": x, "training": np.array(False)})
    np.testing.assert_array_equal(kept_mean, params["bn_mean"])  # training runs left the stored statistics alone
    np.testing.assert_array_equal(kept_var, params["bn_var"])
    back = ir.to_proto(SetInferenceModePass()(ir.from_proto(trained)).model)
    assert op_types(back) == ["BatchNormalization"]


def test_unbiased_factor_is_one_for_one_value_per_channel() -> None:
    model, params = _single_bn((1, 3))
    trained = _train(model, momentum=0.75, running_var="unbiased")
    x = np.array([[0.5, -1.0, 2.0]], np.float32)
    _, mean, var = run_ort(trained, {"x": x, "training": np.array(True)})
    np.testing.assert_allclose(mean, 0.75 * params["bn_mean"] + 0.25 * x[0], rtol=1e-6)
    np.testing.assert_allclose(var, 0.75 * params["bn_var"], rtol=1e-6)  # batch variance 0, factor 1: finite


def test_running_var_applies_with_train_only(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    shutil.copy(MODELS / "mlp.onnx", source)
    result = CliRunner().invoke(main, ["mode", str(source), "--eval", "--running-var", "unbiased"])
    assert result.exit_code == 2
    assert result.stderr == "normfold: error: --momentum, --alpha, --flag and --running-var apply with --train\n"


def test_unknown_running_var_is_refused() -> None:
    with pytest.raises(NormfoldError) as caught:
        SetTrainingModePass(running_var="population")
    assert str(caught.value) == "running_var must be one of biased, unbiased, got 'population'"
    assert caught.value.exit_code == 2


def test_statistics_of_unknown_type_leave_the_bn_with_the_reason() -> None:
    model, _ = _single_bn((4, 3))
    model.graph.node.insert(0, helper.make_node("ReduceMean", ["x"], ["data_mean"], axes=[0], keepdims=0))
    model.graph.node[1].input[3] = "data_mean"
    result = SetTrainingModePass()(ir.from_proto(model))
    assert [(r.action, r.detail, r.reason) for r in result.records] == [
        (
            "skipped",
            "the type of its running statistics is unknown (computed at run time, no type in the model), and "
            "graph outputs need one: run onnx shape inference first",
            "unknown-type",
        )
    ]
    assert result.switches == [None]
    assert op_types(ir.to_proto(result.model)) == ["ReduceMean", "BatchNormalization"]
