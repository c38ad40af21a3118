"""Tensor ranks for guards that depend on them (which axis is BN's channel axis after a MatMul)."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass


class RankOracle:
    """Ranks from the model's own shapes, falling back to ONNX shape inference, run once and only if needed."""

    def __init__(self, model: ir.Model) -> None:
        self._model = model
        self._inferred: dict[str, int] | None = None

    def rank(self, value: ir.Value) -> int | None:
        """The value's rank, or None when neither the model nor shape inference knows it."""
        if value.shape is not None:
            return len(value.shape)
        producer = value.producer()
        owner = producer.graph if producer is not None else value.graph
        if owner is not self._model.graph:
            return None  # names can repeat across subgraphs: inferred ranks are kept for the main graph only
        if self._inferred is None:
            self._inferred = self._infer()
        return self._inferred.get(value.name or "")

    def _infer(self) -> dict[str, int]:
        copy = self._model.clone()
        ShapeInferencePass(strict_mode=False)(copy)
        ranks: dict[str, int] = {}
        for node in copy.graph:
            for out in node.outputs:
                if out.name and out.shape is not None:
                    ranks[out.name] = len(out.shape)
        for value in copy.graph.inputs:
            if value.name and value.shape is not None:
                ranks[value.name] = len(value.shape)
        return ranks
