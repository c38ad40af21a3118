"""What a pass did to each node it looked at: folded, stripped, or skipped and why."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Literal

import onnx_ir as ir

from normfold.columns import Cuttable, Squeezable, fit

Action = Literal["folded", "stripped", "converted", "rewritten", "skipped"]


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """One BatchNormalization, Dropout or elementwise affine node and what happened to it.

    A fold's `tensors` names every tensor it wrote and the tensors each was computed from (the layer's
    weight and bias, the BN's scale, B, mean and var, the Mul/Add constant), so a fused weight can be
    traced back to its source.
    """

    graph: str
    node: str
    op_type: str
    action: Action
    detail: str
    reason: str = ""  # machine-readable cause of a skip (TRAINING_MODE, ...); "" when not given
    tensors: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # provenance: new tensor -> sources

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON reports."""
        return dataclasses.asdict(self)

    def to_line(self, width: int | None = None) -> str:
        """One human-readable report line; in `width` columns when given (names lose their middle, the detail
        its end)."""
        where = ["", "", ""] if self.graph == "main" else [" [", Squeezable(self.graph), "]"]
        return fit(
            [
                f"{self.action.upper():8} {self.op_type} '",
                Squeezable(self.node),
                "'",
                *where,
                ": ",
                Cuttable(self.detail),
            ],
            width if width is not None else sys.maxsize,
        )


@dataclasses.dataclass
class RewriteResult(ir.passes.PassResult):
    """onnx_ir's PassResult plus the per-node record of what changed and what was skipped."""

    records: list[NodeRecord] = dataclasses.field(default_factory=list)
