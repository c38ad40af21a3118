"""`normfold.fold`: strip inference Dropout, then fold BatchNormalization, and report every node."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import onnx
import onnx_ir as ir

from normfold.graph_walk import count_nodes
from normfold.model_reading import load_model
from normfold.passes.fold_affine import AFFINE_OPS, FoldAffinePass
from normfold.passes.fold_batchnorm import FoldBatchNormPass
from normfold.passes.strip_dropout import StripDropoutPass
from normfold.reason_codes import TRAINING_MODE
from normfold.records import NodeRecord, RewriteResult
from normfold.report_version import REPORT_VERSION


@dataclasses.dataclass
class FoldResult:
    """The rewritten model and what happened to each BatchNormalization and Dropout node.

    `inference_model` is the input switched to inference mode (fold's reference) when `eval_mode` changed it.
    """

    model: ir.Model
    records: list[NodeRecord]
    nodes_before: int
    nodes_after: int
    inference_model: ir.Model | None = None

    def count(self, op_type: str, action: str | None = None) -> int:
        """How many nodes of `op_type` were seen (or had `action` applied)."""
        if action is None:  # each node has one final record; "converted" precedes its fold or strip record
            return sum(r.op_type == op_type and r.action != "converted" for r in self.records)
        return sum(r.op_type == op_type and r.action == action for r in self.records)

    def affine(self, action: str | None = None) -> int:
        """How many elementwise Mul/Div/Add/Sub candidates were seen (or had `action` applied)."""
        return sum(r.op_type in AFFINE_OPS and (action is None or r.action == action) for r in self.records)

    @property
    def skipped(self) -> list[NodeRecord]:
        """The nodes left in place, each with its reason."""
        return [r for r in self.records if r.action == "skipped"]

    def summary(self) -> str:
        """One line: BN folded n/m, Dropout stripped k/l, nodes before -> after, and nodes left in training
        mode (the common reason a fold changes nothing) with what to do about them."""
        from normfold.passes.fold_norm_affine import NORM_OPS

        converted = sum(r.action in ("converted", "rewritten") for r in self.records)
        mode = f"{converted} node(s) switched to inference mode, " if converted else ""
        training = sum(r.action == "skipped" and r.reason == TRAINING_MODE for r in self.records)
        left = f"; {training} node(s) left in training mode (add --eval to convert them first)" if training else ""
        affine = f", Mul/Add folded {self.affine('folded')}/{self.affine()}" if self.affine() else ""
        norms = sum(r.op_type in NORM_OPS for r in self.records)
        if norms:
            folded = sum(r.op_type in NORM_OPS and r.action == "folded" for r in self.records)
            affine += f", norm affine folded {folded}/{norms}"
        return (
            f"{mode}BatchNormalization folded {self.count('BatchNormalization', 'folded')}/"
            f"{self.count('BatchNormalization')}, Dropout stripped {self.count('Dropout', 'stripped')}/"
            f"{self.count('Dropout')}{affine}, nodes {self.nodes_before} -> {self.nodes_after}{left}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (the `--json` document)."""
        return {
            "normfold_report": "fold",
            "version": REPORT_VERSION,
            "summary": {
                "batchnorm_total": self.count("BatchNormalization"),
                "batchnorm_folded": self.count("BatchNormalization", "folded"),
                "dropout_total": self.count("Dropout"),
                "dropout_stripped": self.count("Dropout", "stripped"),
                "affine_total": self.affine(),
                "affine_folded": self.affine("folded"),
                "switched_to_inference": sum(r.action in ("converted", "rewritten") for r in self.records),
                "nodes_before": self.nodes_before,
                "nodes_after": self.nodes_after,
            },
            "nodes": [r.to_dict() for r in self.records],
        }


def fold_layers(model: ir.Model, max_rounds: int = 8, timings: dict[str, float] | None = None) -> list[NodeRecord]:
    """Fold BatchNormalization and elementwise affine nodes in place until neither finds more to do.

    Each fold can make another possible (Conv -> BN -> Mul: once BN is in the Conv, the Mul is next to
    it). A node keeps its last record, in the order nodes were first seen. `timings`, when given, gains each
    pass's seconds under its class name (see `run_pass`).
    """
    records: dict[tuple[str, str, str], NodeRecord] = {}
    for _ in range(max_rounds):
        modified = False
        for rewrite in (FoldAffinePass(in_place=True), FoldBatchNormPass(in_place=True)):
            result = run_pass(rewrite, model, timings)
            modified = modified or result.modified
            for record in result.records:
                records[(record.graph, record.node, record.op_type)] = record
        if not modified:
            break
    return list(records.values())


def run_pass(rewrite: ir.passes.PassBase, model: ir.Model, timings: dict[str, float] | None) -> RewriteResult:
    """`rewrite(model)`, its seconds added to `timings[<its class name>]` when `timings` is given."""
    if timings is None:
        result = rewrite(model)
    else:
        start = time.perf_counter()
        result = rewrite(model)
        name = type(rewrite).__name__
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    assert isinstance(result, RewriteResult)
    return result


def as_ir_model(model: ir.Model | onnx.ModelProto | str | os.PathLike[str]) -> ir.Model:
    """Accept a path, an onnx.ModelProto or an onnx_ir.Model; paths are loaded and checked."""
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    return load_model(model)


def fold(
    model: ir.Model | onnx.ModelProto | str | os.PathLike[str],
    *,
    simplify: bool = False,
    eval_mode: bool = False,
    batch_stats: bool = False,
    in_place: bool = False,
    fold_norm_affine: bool = False,
    timings: dict[str, float] | None = None,
) -> FoldResult:
    """Strip every inference Dropout and fold every foldable BatchNormalization.

    With `simplify`, onnxscript's constant folding runs before the BN fold (so computed BN
    parameters become constants) and dead-code elimination after it. The input is never modified:
    the passes work on one copy that shares the (read-only) weights, or, with `in_place`, rewrite an
    onnx_ir.Model argument itself. With `eval_mode`, training-mode BN and Dropout are first switched to inference
    mode (see SetInferenceModePass, and `batch_stats` there). With `fold_norm_affine`, LayerNormalization and
    RMSNormalization scale and shift go into the linear layers reading them (see FoldNormAffinePass).
    `timings`, when given, gains the seconds of each pass (by class name, summed over its runs).
    """
    # The optional passes are imported when asked for: `normfold check` and a plain fold load none of them.
    if eval_mode:
        from normfold.passes.set_inference_mode import SetInferenceModePass
    if simplify:
        from normfold.passes.simplify import SimplifyPass
    if fold_norm_affine:
        from normfold.passes.fold_norm_affine import FoldNormAffinePass
    original = as_ir_model(model)
    nodes_before = count_nodes(original)
    private = original if in_place or not isinstance(model, ir.Model) else original.clone()
    converted = run_pass(SetInferenceModePass(batch_stats, in_place=True), private, timings) if eval_mode else None
    working = converted.model.clone() if converted else private
    stripped = run_pass(StripDropoutPass(in_place=True), working, timings)
    current = run_pass(SimplifyPass(), stripped.model, timings).model if simplify else stripped.model
    fold_records = fold_layers(current, timings=timings)
    if fold_norm_affine:
        fold_records += run_pass(FoldNormAffinePass(in_place=True), current, timings).records
    result_model = run_pass(SimplifyPass(), current, timings).model if simplify else current
    mode_records = list(converted.records) if converted else []
    left_in_training = {(r.graph, r.node) for r in mode_records if r.action == "skipped"}
    later = [
        r
        for r in [*fold_records, *stripped.records]
        if not (r.action == "skipped" and (r.graph, r.node) in left_in_training)
    ]
    records = mode_records + later
    inference = converted.model if converted and converted.modified else None
    return FoldResult(result_model, records, nodes_before, count_nodes(result_model), inference)
