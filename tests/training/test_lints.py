"""BatchNorm and Dropout set-ups known to train badly, as lints reported by `normfold mode --train`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from click.testing import CliRunner
from onnx import helper, numpy_helper

from normfold.cli import main
from normfold.lints import training_lints


def _model(
    batch: int | str = "N", epsilon: float = 1e-5, ratio: float = 0.2, dropout_first: bool = False
) -> onnx.ModelProto:
    inits = {"s": np.ones(3), "b": np.zeros(3), "m": np.zeros(3), "v": np.ones(3), "ratio": np.array(ratio)}
    nodes = [helper.make_node("Dropout", ["x", "ratio"], ["d"], name="drop")]
    bn_input = "d" if dropout_first else "x"
    nodes.append(
        helper.make_node("BatchNormalization", [bn_input, "s", "b", "m", "v"], ["y"], name="bn", epsilon=epsilon)
    )
    outputs = ["y"] if dropout_first else ["y", "d"]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 3, 4])],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [batch, 3, 4]) for o in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def _rules(model: onnx.ModelProto) -> list[str]:
    return [lint.rule for lint in training_lints(ir.from_proto(model))]


def test_clean_model_has_no_lints() -> None:
    assert _rules(_model()) == []


def test_each_pitfall_is_reported() -> None:
    assert _rules(_model(dropout_first=True)) == ["dropout-before-bn"]
    assert _rules(_model(ratio=0.8)) == ["high-drop-ratio"]
    assert _rules(_model(batch=1)) == ["bn-batch-below-2"]
    assert _rules(_model(epsilon=0.0)) == ["non-positive-epsilon"]


def test_mode_train_prints_the_lints(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(_model(ratio=0.8, dropout_first=True), source)
    result = CliRunner().invoke(main, ["mode", str(source), "--train"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("LINT")]
    assert lines == [
        "LINT     high-drop-ratio 'drop': ratio=0.8 drops more than 0.7 of activations (keep probability "
        "p = 1 - ratio = 0.2), which tends to underfit (common ratios are 0.1 to 0.5)",
        "LINT     dropout-before-bn 'bn': Dropout 'drop' feeds it directly: Dropout's variance shift corrupts the "
        "batch statistics, which then differ from what inference (without Dropout) normalizes with (put Dropout after BN)",
    ]
