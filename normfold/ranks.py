"""Tensor ranks and shapes for guards that depend on them (which axis is BN's channel axis after a MatMul)."""

from __future__ import annotations

import logging
from typing import cast

import onnx
import onnx_ir as ir

# What onnx_ir's ShapeInferencePass does, done without its costs on large models: it clones the model, turns
# every initializer into a graph input by a list search each (quadratic: 4 s for 20 000 initializers), and
# deserializes the whole inferred model to merge it back. Here the model is serialized through a read-only view
# (the same proto), and the inferred shapes are read from the result's value infos.
_INLINE_BYTES = 1000  # larger initializers reach shape inference as inputs without data (onnx_ir's limit)
_LOGGER = logging.getLogger(__name__)


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
        """Shapes of the main graph's node outputs and inputs: inferred where ONNX infers one, else the model's own.

        The same shapes onnx_ir's ShapeInferencePass (strict_mode=False) gives a clone of the model."""
        graph = self._model.graph
        inferred: dict[str, ir.Shape | None] = {}
        try:
            proto = onnx.shape_inference.infer_shapes(
                _inference_proto(self._model), check_type=True, strict_mode=False, data_prop=True
            )
        except Exception as error:  # the model stays as it is: its own shapes only
            _LOGGER.debug("ONNX shape inference failed (%s): ranks are the model's own", error)
        else:
            wanted = {out.name for node in graph for out in node.outputs if out.name}
            wanted.update(value.name for value in graph.inputs if value.name)
            inferred = _main_graph_shapes(proto.graph, wanted)
        self._shapes = {}
        for node in graph:
            for out in node.outputs:
                shape = inferred.get(out.name) if out.name else None
                shape = shape if shape is not None else out.shape
                if out.name and shape is not None:
                    self._shapes[out.name] = shape
        for value in graph.inputs:
            shape = inferred.get(value.name) if value.name else None
            if shape is None:
                own = value.const_value if value.is_initializer() else None  # its shape given to inference
                shape = value.shape if value.shape is not None or own is None else cast(ir.Shape, own.shape)
            if value.name and shape is not None:
                self._shapes[value.name] = shape
        return {name: len(shape) for name, shape in self._shapes.items()}


def _inference_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as onnx_ir's shape inference hands it to ONNX: every initializer also a graph input (with its
    tensor's type and shape where the value has none), only those of at most _INLINE_BYTES keeping their data."""
    graph = model.graph
    typed: dict[ir.Value, ir.Value] = {}  # initializers without a type or shape -> a stand-in that has them
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and (value.shape is None or value.dtype is None):
            typed[value] = ir.Value(
                name=value.name,
                shape=value.shape if value.shape is not None else tensor.shape,  # type: ignore[arg-type]
                type=value.type if value.dtype is not None else ir.TensorType(tensor.dtype),
                doc_string=value.doc_string,
                const_value=tensor,
                metadata_props=dict(value.metadata_props) if value.metadata_props else None,
            )
    listed = set(graph.inputs)
    inputs = [typed.get(v, v) for v in graph.inputs]
    inputs += [typed.get(v, v) for v in graph.initializers.values() if v not in listed]
    inline = [
        typed.get(v, v)
        for v in graph.initializers.values()
        if v.const_value is not None and v.const_value.nbytes <= _INLINE_BYTES
    ]
    view = ir.GraphView(
        inputs,
        graph.outputs,
        nodes=graph,
        initializers=inline,
        doc_string=graph.doc_string,
        opset_imports=graph.opset_imports,
        name=graph.name,
        metadata_props=graph.metadata_props,
    )
    shell = ir.Model(
        view,  # type: ignore[arg-type]  # onnx_ir serializes a model over a GraphView
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
        functions=list(model.functions.values()),
        metadata_props=dict(model.metadata_props),
        device_configurations=model.device_configurations,
    )
    return ir.serde.serialize_model(shell)


def _main_graph_shapes(graph: onnx.GraphProto, wanted: set[str]) -> dict[str, ir.Shape | None]:
    """The shapes of the `wanted` main-graph inputs and node outputs as onnx_ir deserializes them from the inferred
    graph (an input's or node output's own entry, then a graph output's), not those of the initializers."""
    sources: dict[str, onnx.TypeProto | None] = {}
    for info in graph.input:
        if info.name in wanted:
            sources[info.name] = info.type
    value_info = {info.name: info for info in graph.value_info}
    for node in graph.node:
        for name in node.output:
            if name in wanted:
                described = value_info.get(name)
                sources[name] = None if described is None else described.type
    for info in graph.output:
        if info.name in wanted:
            sources[info.name] = info.type
    return {
        name: None if kind is None else ir.serde.deserialize_type_proto_for_shape(kind)
        for name, kind in sources.items()
    }
