"""Tensor ranks and shapes for guards that depend on them (which axis is BN's channel axis after a MatMul)."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass


class RankOracle:
    """Ranks from the model's own shapes, falling back to ONNX shape inference, run once and only if needed."""

    def __init__(self, model: ir.Model) -> None:
        self._model = model
        self._inferred: dict[str, int] | None = None
        self._shapes: dict[str, ir.Shape] = {}

    def shape(self, value: ir.Value) -> tuple[int | None, ...] | None:
        """The value's shape with static dims as ints (symbolic ones None), from the model or shape inference."""
        shape = value.shape if value.shape is not None else self._inferred_shape(value)
        if shape is None:
            return None
        return tuple(d if isinstance(d, int) else None for d in shape)

    def _inferred_shape(self, value: ir.Value) -> ir.Shape | None:
        producer = value.producer()
        owner = producer.graph if producer is not None else value.graph
        if owner is not self._model.graph:
            return None
        if self._inferred is None:
            self._inferred = self._infer()
        return self._shapes.get(value.name or "")

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
        self._shapes = {}
        for node in copy.graph:
            for out in node.outputs:
                if out.name and out.shape is not None:
                    self._shapes[out.name] = out.shape
        for value in copy.graph.inputs:
            if value.name and value.shape is not None:
                self._shapes[value.name] = value.shape
        return {name: len(shape) for name, shape in self._shapes.items()}
