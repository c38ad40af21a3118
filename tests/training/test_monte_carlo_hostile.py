"""`normfold mc` on the graphs that broke it: chained Dropouts, names it used to generate, an initializer as
Dropout input, the opset < 12 `ratio` attribute; and errors that name the user's model and mc's own options."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from cli_helpers import assert_one_line_error, invoke
from onnx import helper, numpy_helper

from normfold import NormfoldError
from normfold.modes import dropout_ratio
from normfold.monte_carlo import MonteCarloResult, masked_model, monte_carlo

WIDTH = 256
PASSES = 400


def _model(
    nodes: list[onnx.NodeProto],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 13,
    x_shape: list[int | str] | None = None,
    y_shape: list[int] | None = None,
) -> onnx.ModelProto:
    """A checked model: float input `x` [1, WIDTH] (or `x_shape`), float output `y` [1, WIDTH] (or `y_shape`)."""
    graph = helper.make_graph(
        nodes,
        "mc",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape or [1, WIDTH])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape or [1, WIDTH])],
        [numpy_helper.from_array(a, n) for n, a in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _ratio(value: float) -> dict[str, np.ndarray]:
    return {"ratio": np.array(value, np.float32)}


def _saved(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "m.onnx"
    onnx.save(model, path)
    return path


def _saved_inputs(folder: Path) -> Path:
    path = folder / "x.npz"
    np.savez(path, **ONES)
    return path


def _assert_inverted_dropout(result: MonteCarloResult, ratios: list[float], offset: float = 0.0) -> None:
    """y = offset + prod(m_i / p_i) for ones fed through Dropouts of these ratios: mean offset + 1, and
    variance prod(1 / p_i) - 1 (each m_i / p_i has mean 1 and second moment 1 / p_i)."""
    std = np.sqrt(np.prod([1 / (1 - r) for r in ratios]) - 1)
    mean_error = abs(float(result.mean["y"].mean()) - (offset + 1))
    assert mean_error < 5 * std / np.sqrt(PASSES * WIDTH), result.mean["y"].mean()
    np.testing.assert_allclose(result.std["y"].mean(), std, rtol=0.05)


ONES = {"x": np.ones((1, WIDTH), np.float32)}


# --------------------------------------------------------------------------------------------------
# Graphs that used to crash or sample the wrong ratio
# --------------------------------------------------------------------------------------------------


def _chained() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Dropout", ["x", "ratio"], ["a"], name="d1"),
        helper.make_node("Dropout", ["a", "ratio"], ["y"], name="d2"),
    ]
    return _model(nodes, _ratio(0.3))


def test_chained_dropouts_each_sample_a_mask(tmp_path: Path) -> None:
    """Regression: the second Dropout's input was the first one's replacement, unknown to the probe (KeyError)."""
    result = monte_carlo(ir.from_proto(_chained()), ONES, passes=PASSES, seed=0)
    assert result.dropouts == ["d1", "d2"]
    _assert_inverted_dropout(result, [0.3, 0.3])
    cli = invoke("mc", _saved(_chained(), tmp_path), "--provider", "cpu", "--passes", "3")
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.splitlines()[0] == "3 passes on cpu, Dropout active in 2 node(s): d1, d2"


# Every name normfold generated before NameSource, already taken by the model.
TAKEN = ["d.mc_mask", "d.mc_dropout", "d.mc_output", "d.mc_probe", "d.mc_input"]


def _names_taken() -> onnx.ModelProto:
    """y = Dropout(x) + 1 through nodes and values that use every name in TAKEN."""
    nodes = [
        helper.make_node("Identity", ["x"], ["d.mc_input"], name="d.mc_probe"),
        helper.make_node("Dropout", ["d.mc_input", "ratio"], ["d.mc_output"], name="d"),
        helper.make_node("Add", ["d.mc_output", "d.mc_mask"], ["y"], name="d.mc_dropout"),
    ]
    return _model(nodes, {**_ratio(0.3), "d.mc_mask": np.ones((1, WIDTH), np.float32)})


def test_generated_names_are_fresh(tmp_path: Path) -> None:
    """Regression: the mask input and the Mul were named `<node>.mc_mask` / `<node>.mc_dropout` whatever the
    model already held, and ONNX Runtime refused the duplicate names."""
    probe, masked, sites = masked_model(ir.from_proto(_names_taken()))
    for model in (probe, masked):
        values = (
            [v.name for v in model.graph.inputs]
            + list(model.graph.initializers)
            + [v.name for node in model.graph for v in node.outputs]
        )
        nodes = [node.name for node in model.graph]
        assert len(values) == len(set(values)) and len(nodes) == len(set(nodes))
    (site,) = sites
    assert site.mask_input not in TAKEN and site.probe_output not in TAKEN
    assert masked.graph.initializers["d.mc_mask"].const_value.numpy().tolist() == [[1.0] * WIDTH]
    _assert_inverted_dropout(monte_carlo(ir.from_proto(_names_taken()), ONES, passes=PASSES, seed=0), [0.3], offset=1.0)
    cli = invoke("mc", _saved(_names_taken(), tmp_path), "--provider", "cpu", "--passes", "3")
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.splitlines()[0] == "3 passes on cpu, Dropout active in 1 node(s): d"


def _initializer_input() -> onnx.ModelProto:
    """y = Dropout(c) + x with c an initializer of ones."""
    nodes = [
        helper.make_node("Dropout", ["c", "ratio"], ["d"], name="drop"),
        helper.make_node("Add", ["d", "x"], ["y"], name="add"),
    ]
    return _model(nodes, {**_ratio(0.3), "c": np.ones((1, WIDTH), np.float32)})


def test_dropout_of_an_initializer_samples_masks(tmp_path: Path) -> None:
    """Regression: an initializer was neither a node output nor a graph input, so the probe lost it (KeyError)."""
    zeros = {"x": np.zeros((1, WIDTH), np.float32)}
    _assert_inverted_dropout(monte_carlo(ir.from_proto(_initializer_input()), zeros, passes=PASSES, seed=0), [0.3])
    cli = invoke("mc", _saved(_initializer_input(), tmp_path), "--provider", "cpu", "--passes", "3")
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.splitlines()[0] == "3 passes on cpu, Dropout active in 1 node(s): drop"


def _attribute_ratio(opset: int, ratio: float) -> onnx.ModelProto:
    """x -> Dropout(ratio attribute) -> y, before opset 12 (where the ratio is an attribute)."""
    return _model([helper.make_node("Dropout", ["x"], ["y"], name="drop", ratio=ratio)], opset=opset)


@pytest.mark.parametrize("opset", [7, 10])
def test_ratio_attribute_before_opset_12_is_sampled(opset: int, tmp_path: Path) -> None:
    """Regression: the `ratio` attribute was ignored and masks were drawn at 0.5 (std 1 instead of 3 here)."""
    result = monte_carlo(ir.from_proto(_attribute_ratio(opset, 0.9)), ONES, passes=PASSES, seed=0)
    _assert_inverted_dropout(result, [0.9])
    out = tmp_path / "stats.npz"
    cli = invoke(
        "mc",
        _saved(_attribute_ratio(opset, 0.9), tmp_path),
        "--provider",
        "cpu",
        "--inputs",
        _saved_inputs(tmp_path),
        "--passes",
        str(PASSES),
        "-o",
        out,
    )
    assert cli.exit_code == 0, cli.output
    with np.load(out) as saved:
        np.testing.assert_allclose(saved["y_std"].mean(), 3.0, rtol=0.05)


RATIO_CASES = {  # (opset, graph text, expected ratio; None: not a constant)
    "opset10-attribute": (10, "(float[1,4] x) => (float[1,4] y) { y = Dropout <ratio = 0.75> (x) }", 0.75),
    "opset10-default": (10, "(float[1,4] x) => (float[1,4] y) { y = Dropout (x) }", 0.5),
    "opset13-input": (13, "(float[1,4] x) => (float[1,4] y) <float r = {0.25}> { y = Dropout (x, r) }", 0.25),
    "opset13-default": (13, "(float[1,4] x) => (float[1,4] y) { y = Dropout (x) }", 0.5),
    "opset13-runtime-input": (13, "(float[1,4] x, float r) => (float[1,4] y) { y = Dropout (x, r) }", None),
}


@pytest.mark.parametrize("case", RATIO_CASES, ids=list(RATIO_CASES))
def test_dropout_ratio_reads_each_opsets_form(case: str) -> None:
    opset, graph, expected = RATIO_CASES[case]
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]> g {graph}')
    (node,) = ir.from_proto(model).graph
    assert dropout_ratio(node, opset) == expected


# --------------------------------------------------------------------------------------------------
# Guards: each error names the user's model (or "the model") and only options `normfold mc --help` lists
# --------------------------------------------------------------------------------------------------


def assert_options_are_mc_options(message: str) -> None:
    """Every --option a message suggests is one that `normfold mc --help` lists."""
    listed = set(re.findall(r"--[a-z][a-z-]*", invoke("mc", "--help").stdout))
    assert set(re.findall(r"--[a-z][a-z-]*", message)) <= listed, message


def test_ratio_outside_0_1_is_refused(tmp_path: Path) -> None:
    model = _attribute_ratio(10, 1.0)
    with pytest.raises(NormfoldError) as refused:
        monte_carlo(ir.from_proto(model), ONES, passes=2)
    assert str(refused.value) == "Dropout 'drop' of the model has no constant ratio in [0, 1) to sample masks with"
    path = _saved(model, tmp_path)
    result = invoke("mc", path, "--provider", "cpu")
    assert_one_line_error(result, f"Dropout 'drop' of {path} has no constant ratio in [0, 1) to sample masks with", 3)


def test_dropout_with_its_mask_in_use_is_refused(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Dropout", ["x", "ratio"], ["y", "mask"], name="drop"),
        helper.make_node("Cast", ["mask"], ["kept"], name="cast", to=onnx.TensorProto.FLOAT),
    ]
    model = _model(nodes, _ratio(0.3))
    model.graph.output.append(helper.make_tensor_value_info("kept", onnx.TensorProto.FLOAT, [1, WIDTH]))
    path = _saved(model, tmp_path)
    result = invoke("mc", path, "--provider", "cpu")
    assert_one_line_error(
        result, f"Dropout 'drop' of {path} has its mask output in use; Monte Carlo Dropout replaces it", 3
    )


def test_model_without_dropout_names_the_path(tmp_path: Path) -> None:
    path = _saved(_model([helper.make_node("Identity", ["x"], ["y"])]), tmp_path)
    assert_one_line_error(
        invoke("mc", path, "--provider", "cpu"),
        f"{path} has no Dropout in its main graph: Monte Carlo Dropout needs at least one",
        3,
    )


def _custom_op() -> onnx.ModelProto:
    """x -> Dropout -> acme:Foo -> y: valid ONNX that ONNX Runtime has no kernel for."""
    nodes = [
        helper.make_node("Dropout", ["x", "ratio"], ["d"], name="drop"),
        helper.make_node("Foo", ["d"], ["y"], name="foo", domain="acme"),
    ]
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.array(0.3, np.float32), "ratio")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("acme", 1)])
    model.ir_version = 8
    return model


def test_model_onnx_runtime_refuses_is_named_not_its_temporary_copy(tmp_path: Path) -> None:
    """Regression: the error named normfold's temporary probe file and advised --no-validate, which mc lacks."""
    prefix = (
        "ONNX Runtime cannot run {} with Dropout masks on cpu: [ONNXRuntimeError] : 1 : FAIL : Load model "
        "from the Monte Carlo model failed:Fatal error: acme:Foo(-1) is not a registered function/op"
    )
    with pytest.raises(NormfoldError) as refused:
        monte_carlo(ir.from_proto(_custom_op()), {"x": np.ones((1, 2), np.float32)}, passes=2)
    assert str(refused.value) == prefix.format("the model")
    path = _saved(_custom_op(), tmp_path)
    assert_one_line_error(invoke("mc", path, "--provider", "cpu"), prefix.format(path), 3)


def _symbolic_width() -> onnx.ModelProto:
    """x [1, K] -> Dropout -> MatMul with w [8, 4] -> y [1, 4]: runs only when K is 8."""
    nodes = [
        helper.make_node("Dropout", ["x", "ratio"], ["d"], name="drop"),
        helper.make_node("MatMul", ["d", "w"], ["y"], name="mm"),
    ]
    return _model(nodes, {**_ratio(0.3), "w": np.ones((8, 4), np.float32)}, x_shape=[1, "K"], y_shape=[1, 4])


def test_inputs_onnx_runtime_refuses_are_a_user_error(tmp_path: Path) -> None:
    """Regression: ONNX Runtime's own exception escaped with a traceback."""
    message = (
        "ONNX Runtime cannot run {} on cpu with these inputs: [ONNXRuntimeError] : 1 : FAIL : Non-zero "
        "status code returned while running MatMul node. Name:'mm' Status Message: matmul_helper.h:59 Compute "
        "MatMul dimension mismatch"
    )
    with pytest.raises(NormfoldError) as refused:
        monte_carlo(ir.from_proto(_symbolic_width()), {"x": np.ones((1, 3), np.float32)}, passes=2)
    assert str(refused.value) == message.format("the model")
    path = _saved(_symbolic_width(), tmp_path)
    assert_one_line_error(invoke("mc", path, "--provider", "cpu", "--dim", "K=3"), message.format(path), 3)


def test_random_inputs_over_the_budget_are_refused_with_mc_options(tmp_path: Path) -> None:
    """Regression: the message advised validate's --max-input-bytes, which mc did not have."""
    path = _saved(_symbolic_width(), tmp_path)
    result = invoke("mc", path, "--provider", "cpu", "--dim", "K=8", "--max-input-bytes", "31")
    message = (
        f"{path}: random inputs need 32 bytes, over --max-input-bytes (31 bytes); set symbolic dimensions "
        "with --dim, give --inputs, or raise --max-input-bytes"
    )
    assert_one_line_error(result, message, 3)
    assert_options_are_mc_options(message)
    within = invoke("mc", path, "--provider", "cpu", "--dim", "K=8", "--max-input-bytes", "32", "--passes", "2")
    assert within.exit_code == 0, within.output


def test_npz_inputs_over_the_budget_are_refused_with_mc_options(tmp_path: Path) -> None:
    path = _saved(_symbolic_width(), tmp_path)
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.ones((1, 8), np.float32))
    result = invoke("mc", path, "--provider", "cpu", "--inputs", inputs, "--max-input-bytes", "31")
    message = f"{inputs}: its arrays need 32 bytes but the budget is 31 bytes (raise --max-input-bytes)"
    assert_one_line_error(result, message, 3)
    assert_options_are_mc_options(message)
