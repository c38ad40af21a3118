"""Optional clean-up around the fold: onnxscript's constant folding, then dead-code elimination.

Deliberately not onnxscript's full `optimize`: its default rewrite rules include a BatchNorm fusion
that also fires on training-mode BN and so changes outputs. onnxscript is imported only when used.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common as common_passes

from normfold.graph_walk import count_nodes
from normfold.records import RewriteResult


class SimplifyPass(ir.passes.FunctionalPass):
    """Returns a copy of the model with constants folded and unused nodes, functions and opsets removed."""

    def call(self, model: ir.Model) -> RewriteResult:
        from onnxscript.optimizer import fold_constants

        model = model.clone()
        before = count_nodes(model)
        fold_constants(model)
        ir.passes.Sequential(
            common_passes.RemoveUnusedNodesPass(),
            common_passes.RemoveUnusedFunctionsPass(),
            common_passes.RemoveUnusedOpsetsPass(),
            common_passes.DeduplicateInitializersPass(),
        )(model)
        return RewriteResult(model, count_nodes(model) != before, [])
