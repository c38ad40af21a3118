"""Helpers for tests that fold and read the records."""

from __future__ import annotations

import onnx
import onnx_ir as ir
from graphs import op_types
from numerics import assert_fold_exact, random_feeds

from normfold import fold
from normfold.records import NodeRecord


def fold_exactly(model: onnx.ModelProto) -> tuple[list[str], list[NodeRecord]]:
    """Fold; the result passes onnx's full check and is as exact as the original against float64.
    Returns the folded main graph's op types and the records."""
    result = fold(model)
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    assert_fold_exact(model, result.model, random_feeds(model))
    return op_types(proto), result.records


def skipped_bn_reasons(model: onnx.ModelProto) -> tuple[str, str]:
    """Fold a model with one BatchNormalization that must stay; its (producer side, consumer side) reasons."""
    result = fold(model)
    assert "BatchNormalization" in [node.op_type for node in ir.to_proto(result.model).graph.node]
    [record] = result.records
    assert record.action == "skipped"
    producer, consumer = record.detail.split("; into its consumer: ")
    return producer, consumer
