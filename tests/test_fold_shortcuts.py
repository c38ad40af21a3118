"""The fold's shortcuts give what the long way gives: the sort skipped on graphs already in order, and the
memory of values that depend on graph inputs when reading constants."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from normfold.constant_cone import runtime_values
from normfold.graph_edit import constant_array, sort_scopes


def _chain(count: int) -> ir.Model:
    """input -> (Relu -> Mul by Constant(2) reshaped by a computed shape) x count, plus an initializer Add."""
    x = ir.Value(name="input", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 4]))
    nodes, value = [], x
    for i in range(count):
        relu = ir.Node("", "Relu", [value], name=f"relu{i}")
        two = ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", ir.tensor(np.full(4, 2.0, np.float32)))])
        shape = ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", ir.tensor(np.array([1, 4])))])
        reshaped = ir.Node("", "Reshape", [two.outputs[0], shape.outputs[0]])
        mul = ir.Node("", "Mul", [relu.outputs[0], reshaped.outputs[0]], name=f"mul{i}")
        nodes += [relu, two, shape, reshaped, mul]
        value = mul.outputs[0]
    value.name = "output"
    graph = ir.Graph([x], [value], nodes=nodes, opset_imports={"": 17}, name="chain")
    return ir.Model(graph, ir_version=8)


def test_sort_scopes_keeps_an_ordered_graph_as_graph_sort_does() -> None:
    model = _chain(30)
    before = [node.name for node in model.graph]
    sort_scopes(model)
    assert [node.name for node in model.graph] == before
    model.graph.sort()
    assert [node.name for node in model.graph] == before


def test_sort_scopes_sorts_a_graph_out_of_order() -> None:
    model, reference = _chain(5), _chain(5)
    for graph in (model.graph, reference.graph):
        last = list(graph)[-1]
        graph.remove(last)
        graph.insert_before(list(graph)[0], last)  # a consumer before its producers
    sort_scopes(model)
    reference.graph.sort()
    assert [node.name for node in model.graph] == [node.name for node in reference.graph]


def test_constant_reads_are_the_same_with_the_memory_of_run_time_values() -> None:
    model = _chain(100)
    values = list(dict.fromkeys(v for node in model.graph for v in (*node.inputs, *node.outputs) if v is not None))
    plain = [constant_array(v) for v in reversed(values)]
    with runtime_values():
        remembered = [constant_array(v) for v in reversed(values)]
        again = [constant_array(v) for v in reversed(values)]
    for a, b, c in zip(plain, remembered, again):
        assert (a is None) == (b is None) == (c is None)
        if a is not None:
            assert np.array_equal(a, b) and np.array_equal(a, c)
    assert sum(a is not None for a in plain) == 300  # each Constant, each computed Reshape of them
