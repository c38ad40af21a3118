"""Every skipped BatchNormalization and Dropout carries a machine-readable reason code beside its message:
one model per code, built to trigger exactly that refusal."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from examples import MODELS
from graphs import bn_node, bn_params, make_model, rng
from onnx import helper

from normfold import fold
from normfold.reason_codes import (
    AXIS_MISMATCH,
    MASK_UNSPECIFIED,
    NO_LAYER,
    NON_FINITE,
    NOT_CONSTANT,
    NOT_PER_CHANNEL,
    PADDED_CONV,
    REASON_CODES,
    ROUNDING,
    SHARED_VALUE,
    TRAINING_MODE,
)


def _conv_bn(**changes: object) -> onnx.ModelProto:
    """Conv -> BN with seeded parameters; `changes` replace initializers or add graph outputs."""
    g = rng(61)
    inits = {"w": g.normal(0, 0.4, (4, 3, 1, 1)).astype(np.float32), **bn_params("bn", 4, g)}
    inits.update({k: v for k, v in changes.items() if isinstance(v, np.ndarray)})
    outputs = ["z", *changes.get("outputs", [])]  # type: ignore[list-item]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        bn_node("y", "z", "bn", **changes.get("attrs", {})),
    ]  # type: ignore[arg-type]
    return make_model(nodes, {"x": ["N", 3, 4, 4]}, outputs, inits)


def _relu_bn_conv(pads: list[int]) -> onnx.ModelProto:
    g = rng(62)
    inits = {"w": g.normal(0, 0.4, (2, 4, 3, 3)).astype(np.float32), **bn_params("bn", 4, g)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        bn_node("r", "h", "bn"),
        helper.make_node("Conv", ["h", "w"], ["z"], name="next", pads=pads),
    ]
    return make_model(nodes, {"x": ["N", 4, 5, 5]}, ["z"], inits)


def _matmul_3d() -> onnx.ModelProto:
    g = rng(63)
    inits = {"w": g.normal(0, 0.4, (4, 4)).astype(np.float32), **bn_params("bn", 4, g)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), bn_node("y", "z", "bn")]
    return make_model(nodes, {"x": ["N", 4, 4]}, ["z"], inits)


def _fp16_overflow() -> onnx.ModelProto:
    g = rng(64)
    inits = {"w": np.full((4, 3, 1, 1), 60000, np.float16), **bn_params("bn", 4, g, np.float16)}
    inits["bn_scale"] = np.full(4, 100, np.float16)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn")]
    return make_model(nodes, {"x": ["N", 3, 4, 4]}, ["z"], inits, dtype=onnx.TensorProto.FLOAT16)


def _graph_input_scale() -> onnx.ModelProto:
    model = _conv_bn()
    model.graph.input.append(helper.make_tensor_value_info("bn_scale", onnx.TensorProto.FLOAT, [4]))
    return model


def _dropout_mask_opset_10() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop"),
        helper.make_node("Cast", ["mask"], ["m"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["y", "m"], ["z"]),
    ]
    return make_model(nodes, {"x": ["N", 4]}, ["z"], {}, opset=10)


def _per_position_parameters() -> onnx.ModelProto:
    """Opset 7 BN with spatial=0 and parameters of shape (C, H, W): one value per position, not per channel."""
    g = rng(66)
    inits = {
        "w": g.normal(0, 0.4, (4, 3, 1, 1)).astype(np.float32),
        **{k: v.repeat(4).reshape(4, 2, 2) for k, v in bn_params("bn", 4, g).items()},
    }
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z", "bn", spatial=0)]
    return make_model(nodes, {"x": [1, 3, 2, 2]}, ["z"], inits, opset=7)


CASES = {
    TRAINING_MODE: lambda: onnx.load(str(MODELS / "training_export.onnx")),
    NOT_CONSTANT: _graph_input_scale,
    NOT_PER_CHANNEL: _per_position_parameters,
    NON_FINITE: lambda: _conv_bn(bn_var=np.array([1, -2, 1, 1], np.float32)),
    NO_LAYER: lambda: make_model(
        [helper.make_node("Relu", ["x"], ["r"]), bn_node("r", "b", "bn"), helper.make_node("Relu", ["b"], ["z"])],
        {"x": ["N", 4]},
        ["z"],
        bn_params("bn", 4, rng(65)),
    ),
    SHARED_VALUE: lambda: _conv_bn(outputs=["y"]),
    AXIS_MISMATCH: _matmul_3d,
    PADDED_CONV: lambda: _relu_bn_conv([1, 1, 1, 1]),
    ROUNDING: _fp16_overflow,
    MASK_UNSPECIFIED: _dropout_mask_opset_10,
}


@pytest.mark.parametrize("code", list(CASES))
def test_the_skip_carries_its_code(code: str) -> None:
    """Every skipped record of the model has this code, and the code is one of the documented ones."""
    assert code in REASON_CODES
    skipped = [r for r in fold(CASES[code]()).records if r.action == "skipped"]
    assert skipped and {r.reason for r in skipped} == {code}, [r.detail for r in skipped]
