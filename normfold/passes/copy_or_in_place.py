"""The pass base normfold's rewrites share: functional by default, in place on request."""

from __future__ import annotations

import onnx_ir as ir

from normfold.records import RewriteResult


class CopyOrInPlacePass(ir.passes.PassBase):
    """Rewrites a copy of the model (weights shared, read-only) unless built with `in_place=True`.

    onnx_ir checks the declaration: an in-place pass must return the model it was given. `normfold.fold`
    copies once and runs its passes in place, instead of copying the whole graph in every pass.
    `ir.passes.functionalize` clones alike but wraps the pass in another object, not one class taking `in_place`.
    """

    def __init__(self, in_place: bool = False) -> None:
        super().__init__()
        self._in_place = in_place

    @property
    def in_place(self) -> bool:
        """Whether the pass returns the model it was given, rewritten."""
        return self._in_place

    @property
    def changes_input(self) -> bool:
        """Only an in-place pass changes its input."""
        return self._in_place

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> RewriteResult:
        """onnx_ir's run with its checks, typed as what every normfold rewrite returns: the records too."""
        result = super().__call__(model_or_result)
        assert isinstance(result, RewriteResult)
        return result

    def target(self, model: ir.Model) -> ir.Model:
        """The model to rewrite: the input itself, or its copy."""
        return model if self._in_place else model.clone()
