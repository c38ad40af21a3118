"""The tolerance policy on every output scale: an exact fold passes, a real error fails.

Each model is Conv -> BatchNormalization followed by a head that puts the output on an unusual scale:
multiplied by 1e-6 or 1e6, a saturated sigmoid (all outputs near 1e-5, the logits' rounding noise far
above rtol x max|output|), or a difference of two equal paths (an output made of rounding noise). The fold
is exact, so it must pass; the folded weights scaled by 1 + 1e-4, or its bias shifted, must fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import bn_node, bn_params, make_model, rng
from onnx import helper, numpy_helper

from normfold import NormfoldError, fold, save_model
from normfold.validate import validate

C_IN, C_OUT, SIZE = 8, 16, 12

ONNX_EPSILON = float(np.float32(1e-5))  # BatchNormalization's default: the float32 attribute value


def _model(head: str) -> onnx.ModelProto:
    """Conv(no bias) -> BN -> head, with weights large enough for 'saturated' to carry real rounding noise."""
    generator = rng(3)
    weight = generator.normal(0, 300.0 if head == "saturated" else 0.3, (C_OUT, C_IN, 3, 3)).astype(np.float32)
    params = {"w": weight, **bn_params("bn", C_OUT, generator)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), bn_node("c", "y", "bn")]
    if head in ("1e-6", "1e6"):
        params["k"] = np.array(float(head), dtype=np.float32)
        nodes.append(helper.make_node("Mul", ["y", "k"], ["out"]))
    elif head == "saturated":
        params["shift"] = np.array(-11.0, dtype=np.float32)
        nodes += [
            helper.make_node("Abs", ["y"], ["a"]),
            helper.make_node("Sub", ["shift", "a"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["out"]),
        ]
    elif head == "near_zero":
        scale = params["bn_scale"].astype(np.float64) / np.sqrt(params["bn_var"].astype(np.float64) + ONNX_EPSILON)
        params["w_alt"] = (weight * scale[:, None, None, None]).astype(np.float32)
        params["b_alt"] = (params["bn_bias"] - params["bn_mean"] * scale).astype(np.float32)
        nodes += [
            helper.make_node("Conv", ["x", "w_alt", "b_alt"], ["y_alt"], pads=[1, 1, 1, 1]),
            helper.make_node("Sub", ["y", "y_alt"], ["out"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["out"]))
    return make_model(nodes, {"x": [1, C_IN, SIZE, SIZE]}, ["out"], params)


def _fold_pair(tmp_path: Path, head: str) -> tuple[Path, Path]:
    source = tmp_path / f"{head}.onnx"
    onnx.save(_model(head), source)
    target = tmp_path / f"{head}.folded.onnx"
    result = fold(source)
    assert result.count("BatchNormalization", "folded") == 1
    save_model(result.model, target)
    return source, target


def _edited(target: Path, tmp_path: Path, how: str) -> Path:
    """The folded model with the fused Conv's weight scaled by 1 + 1e-4, or its bias shifted by 5% of its largest value."""
    model = onnx.load(target)
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] != "w_alt")
    name = conv.input[1] if how == "weight" else conv.input[2]
    tensor = next(t for t in model.graph.initializer if t.name == name)
    array = numpy_helper.to_array(tensor).astype(np.float64)
    if how == "weight":
        array *= 1 + 1e-4
    else:
        array += 0.05 * np.abs(array).max()
    tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    path = tmp_path / f"{target.stem}.{how}.onnx"
    onnx.save(model, path)
    return path


HEADS = ["identity", "1e-6", "1e6", "saturated", "near_zero"]


@pytest.mark.parametrize("head", HEADS)
def test_exact_fold_passes_on_every_output_scale(tmp_path: Path, head: str) -> None:
    report = validate(*_fold_pair(tmp_path, head), providers=["cpu"], samples=2)
    (comparison,) = report.comparisons
    assert report.passed, comparison.to_line()
    assert comparison.basis == "rounding" and comparison.candidate_vs_float64 is not None


@pytest.mark.parametrize("head", ["saturated", "near_zero"])
def test_exact_fold_passes_where_rtol_times_max_output_would_refuse_it(tmp_path: Path, head: str) -> None:
    """Outputs whose rounding noise exceeds rtol x max|ref|: a policy on the output's scale alone fails them."""
    (comparison,) = validate(*_fold_pair(tmp_path, head), providers=["cpu"], samples=2).comparisons
    assert comparison.metrics is not None and comparison.metrics.max_abs > 1e-4 * comparison.metrics.scale
    assert comparison.passed and comparison.atol_in_force is not None
    assert comparison.atol_in_force >= comparison.metrics.max_abs


# Not 'saturated': there the outputs that are not rounded to zero sit where |logit| is smallest, so scaling
# the weights moves them less than the logits' own rounding noise; no sound policy can see it on that output.
@pytest.mark.parametrize("head", ["identity", "1e-6", "1e6", "near_zero"])
def test_weights_scaled_by_1e_4_fail(tmp_path: Path, head: str) -> None:
    source, target = _fold_pair(tmp_path, head)
    report = validate(source, _edited(target, tmp_path, "weight"), providers=["cpu"], samples=2)
    (comparison,) = report.comparisons
    assert not report.passed and report.return_code == 1
    assert (
        comparison.problem.startswith("candidate is ")
        and "further from float64 than the reference" in comparison.problem
    )


@pytest.mark.parametrize("head", HEADS)
def test_a_wrong_bias_fails(tmp_path: Path, head: str) -> None:
    source, target = _fold_pair(tmp_path, head)
    report = validate(source, _edited(target, tmp_path, "bias"), providers=["cpu"], samples=2)
    assert not report.passed, report.comparisons[0].to_line()


def test_without_float64_the_tolerance_rests_on_the_output_scale(tmp_path: Path) -> None:
    source, target = _fold_pair(tmp_path, "identity")
    report = validate(source, target, providers=["cpu"], float64=False)
    (comparison,) = report.comparisons
    assert comparison.basis == "output scale" and comparison.candidate_vs_float64 is None
    assert comparison.metrics is not None and comparison.atol_in_force == pytest.approx(1e-4 * comparison.metrics.scale)
    assert comparison.to_line().endswith(f"atol {comparison.atol_in_force:.3g} (rtol x max|ref|) rtol 0.0001")


def test_a_given_tolerance_is_applied_as_given(tmp_path: Path) -> None:
    source, target = _fold_pair(tmp_path, "identity")
    broken = _edited(target, tmp_path, "weight")
    (comparison,) = validate(source, broken, providers=["cpu"], atol=1.0).comparisons
    assert comparison.passed and comparison.basis == "given" and comparison.atol_in_force == 1.0
    assert comparison.to_line().endswith("atol 1 rtol 0.0001")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("atol", float("nan"), "--atol must be a finite number >= 0, got nan"),
        ("atol", float("inf"), "--atol must be a finite number >= 0, got inf"),
        ("rtol", float("nan"), "--rtol must be a finite number >= 0, got nan"),
        ("rtol", -1.0, "--rtol must be a finite number >= 0, got -1.0"),
    ],
)
def test_non_finite_tolerances_are_usage_errors(tmp_path: Path, option: str, value: float, message: str) -> None:
    source, target = _fold_pair(tmp_path, "identity")
    with pytest.raises(NormfoldError) as raised:
        validate(source, target, providers=["cpu"], **{option: value})
    assert str(raised.value) == message and raised.value.exit_code == 2
