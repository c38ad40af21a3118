"""Fold every inference BatchNormalization with constant statistics into an adjacent linear layer.

Backward first (BN after Conv / ConvTranspose / Gemm / MatMul, optionally through an Add of a
constant bias), forward otherwise (BN before Gemm, MatMul, or a Conv; a Conv that pads its input
only when BN does not shift). The planning and rewriting are in `normfold.layer_fold`, the
mathematics in `normfold.bn_math`. A BN that cannot be folded is left exactly as it was, and its
record says why.
"""

from __future__ import annotations

import onnx_ir as ir

from normfold.bn_math import Affine, bn_affine
from normfold.constant_cone import runtime_values
from normfold.errors import NormfoldError
from normfold.graph_edit import NameSource, constant_array, sort_scopes, why_not_constant
from normfold.graph_walk import Scope, is_op, iter_scopes, node_label
from normfold.layer_fold import (
    AffineSite,
    Edit,
    apply_edit,
    describe,
    plan_backward,
    plan_forward,
)
from normfold.modes import bn_epsilon, bn_parameter_faults, bn_training_form
from normfold.passes.copy_or_in_place import CopyOrInPlacePass
from normfold.ranks import RankOracle
from normfold.reason_codes import NO_LAYER, NON_FINITE, NOT_PER_CHANNEL, TRAINING_MODE, Refusal, code_of, combined_code
from normfold.records import Action, NodeRecord, RewriteResult

PARAM_ROLES = ("scale", "B", "mean", "var")


class FoldBatchNormPass(CopyOrInPlacePass):
    """Returns a copy of the model with every foldable BatchNormalization folded, plus one record per BN."""

    def call(self, model: ir.Model) -> RewriteResult:
        with runtime_values():  # its rewrites are apply_edit's
            return self._fold_all(self.target(model))

    def _fold_all(self, model: ir.Model) -> RewriteResult:
        ranks, names = RankOracle(model), NameSource(model, deferred=True)  # apply_edit reserves
        records: dict[ir.Node, NodeRecord] = {}
        pending = [(scope, node) for scope in iter_scopes(model) for node in list(scope.body) if _is_batchnorm(node)]
        while pending:
            retry = []
            for scope, node in pending:
                if node.graph is None:
                    continue
                records[node] = _fold_one(scope, node, ranks, names)
                if records[node].action == "skipped":
                    retry.append((scope, node))
            if len(retry) == len(pending):
                break  # a fold can unlock a neighbour (forward after backward): retry until none does
            pending = retry
        folded = any(r.action == "folded" for r in records.values())
        if folded:
            sort_scopes(model)
        return RewriteResult(model, folded, list(records.values()))


def _is_batchnorm(node: ir.Node) -> bool:
    return is_op(node, "BatchNormalization")


def _fold_one(scope: Scope, bn: ir.Node, ranks: RankOracle, names: NameSource) -> NodeRecord:
    label = node_label(bn)

    def record(
        action: Action, detail: str, reason: str = "", tensors: dict[str, list[str]] | None = None
    ) -> NodeRecord:
        return NodeRecord(
            scope.name,
            label,
            bn.op_type,
            action,
            detail,
            reason,
            tensors or {},
        )

    training = _training_reason(scope.opset, bn)
    if training:
        return record("skipped", training, TRAINING_MODE)
    affine = _read_affine(scope, bn)
    if isinstance(affine, str):
        return record("skipped", affine, code_of(affine))
    if bn.inputs[0] is None:
        return record("skipped", "its input is missing", NO_LAYER)
    site = AffineSite(bn, bn.inputs[0], lambda channels, axis, rank: affine, 1, affine.scale.shape[0], _sources(bn))
    reasons = []
    for plan in (plan_backward, plan_forward):
        edit = plan(site, ranks)
        if isinstance(edit, Edit):
            return record("folded", describe(edit), tensors=apply_edit(scope, site, edit, names))
        reasons.append(edit)
    detail = f"into its producer: {reasons[0]}; into its consumer: {reasons[1]}"
    return record("skipped", detail, combined_code(*reasons))


def _sources(bn: ir.Node) -> tuple[tuple[str, str], ...]:
    """BN's parameter tensors by role, for provenance."""
    pairs = zip(PARAM_ROLES, bn.inputs[1:5])
    return tuple((role, value.name) for role, value in pairs if value is not None and value.name)


def _read_affine(scope: Scope, bn: ir.Node) -> Affine | Refusal:
    """BN's inference affine map, or why it has none that folding may use."""
    label = node_label(bn)
    values = list(bn.inputs[1:5]) + [None] * (5 - len(bn.inputs))
    arrays = []
    for role, value in zip(PARAM_ROLES, values):
        array = constant_array(value)
        if array is None:
            return why_not_constant(value, role)
        arrays.append(array)
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) != 1:
        described = ", ".join(f"{r} {list(s)}" for r, s in zip(PARAM_ROLES, shapes))
        raise NormfoldError(f"BatchNormalization '{label}' has inconsistent parameter shapes: {described}")
    if arrays[0].ndim != 1:
        return Refusal(
            f"its parameters have shape {list(shapes[0])}, not one value per channel (spatial=0)", NOT_PER_CHANNEL
        )
    eps = bn_epsilon(bn)
    faults = bn_parameter_faults(arrays, eps)
    if faults.nonfinite:
        return Refusal("its parameters contain NaN or Inf", NON_FINITE)
    bad = faults.no_inference_form
    if bad:
        return Refusal(
            f"variance + epsilon is not positive in {bad} channel(s), so it has no finite inference form", NON_FINITE
        )
    gamma, beta, mean, var = arrays  # one array per PARAM_ROLES entry
    return bn_affine(gamma, beta, mean, var, eps)


def _training_reason(opset: int, bn: ir.Node) -> str:
    """Why this BN must not be folded as it is (training mode), or ''."""
    form = bn_training_form(opset, bn)
    if not form:
        return ""
    return (
        f"{form}: it normalizes with batch statistics, so folding its running statistics would change the "
        "outputs; convert it to inference mode first (normfold mode --eval, or fold --eval)"
    )
