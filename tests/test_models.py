"""Every model shipped in models/ folds to a valid, equivalent model with nothing foldable left."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from examples import EXAMPLES
from numerics import assert_fold_exact, random_feeds

from normfold import fold, load_model

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = sorted(p.name for p in MODELS.glob("*.onnx") if ".folded." not in p.name)
TRAINING_FORM = {"training_export.onnx", "torchvision_resnet_train.onnx", "torchvision_mobilenetv3_train.onnx"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_builder_is_deterministic_and_matches_shipped_file(name: str) -> None:
    assert EXAMPLES[name]().SerializeToString() == (MODELS / f"{name}.onnx").read_bytes()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_folds(name: str) -> None:
    original = onnx.load(MODELS / name)
    result = fold(load_model(MODELS / name))
    folded = ir.to_proto(result.model)
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    if name in TRAINING_FORM:
        assert result.records and all(r.action == "skipped" for r in result.records)
        assert all("training" in r.detail for r in result.records)
        return
    assert "BatchNormalization" not in ops and "Dropout" not in ops
    assert [i.name for i in folded.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in folded.graph.output] == [o.name for o in original.graph.output]
    assert_fold_exact(original, folded, random_feeds(original))


def test_examples_cover_the_shipped_set() -> None:
    assert {f"{n}.onnx" for n in EXAMPLES} <= set(SHIPPED)
    assert len(SHIPPED) >= 7
