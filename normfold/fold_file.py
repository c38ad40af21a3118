"""Fold one model file into another: load, fold, validate against the input, write atomically or not at all."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normfold.errors import EXIT_MISMATCH, NormfoldError
from normfold.fold import FoldResult, fold
from normfold.io import check_output_path, has_external_data, load_model, save_model

if TYPE_CHECKING:
    from normfold.validate import ValidationReport


@dataclasses.dataclass
class FoldFileResult:
    """What `fold_file` did: the fold, its validation (None with validation off), where it wrote."""

    fold: FoldResult
    validation: ValidationReport | None
    source: Path
    target: Path
    written: bool


class NotWrittenError(NormfoldError):
    """The fold was done but not written (validation failed or was impossible); `partial` says how far it got."""

    def __init__(self, message: str, partial: FoldFileResult, exit_code: int) -> None:
        super().__init__(message, exit_code=exit_code)
        self.partial = partial


def fold_file(
    source: Path,
    target: Path,
    *,
    in_place: bool = False,
    simplify: bool = False,
    eval_mode: bool = False,
    batch_stats: bool = False,
    validation: dict[str, Any] | None = None,
) -> FoldFileResult:
    """Fold `source` into `target`; with `validation` (validate()'s keyword arguments) check it first."""
    loaded = load_model(source)
    input_files = check_output_path(target, source, loaded, in_place=in_place)
    old_files = input_files - {source.resolve()} if in_place else set()
    external = has_external_data(loaded)
    result = fold(loaded, simplify=simplify, eval_mode=eval_mode, batch_stats=batch_stats, in_place=True)
    outcome = FoldFileResult(result, None, source, target, written=False)

    def verify(staged: Path) -> None:
        outcome.validation = _validate(source, staged, result, external, validation or {}, outcome)
        if not outcome.validation.passed:
            worst = outcome.validation.failures[0]
            raise NotWrittenError(f"the folded model differs from {source}; nothing written ({worst.to_line()})",
                                  outcome, EXIT_MISMATCH)

    save_model(result.model, target, external_data=external,
               verify=verify if validation is not None else None, replaced_files=old_files, protected=input_files)
    outcome.written = True
    return outcome


def _validate(source: Path, staged: Path, result: FoldResult, external: bool, kwargs: dict[str, Any],
              outcome: FoldFileResult) -> ValidationReport:
    """Validate the staged output against the input (or, after --eval, against the input in inference mode).

    Imported here: with validation off, `normfold fold` never loads the validation code.
    """
    from normfold.validate import validate
    from normfold.validate.stochastic import NotComparableError

    with tempfile.TemporaryDirectory(prefix="normfold-eval-") as folder:
        reference = source
        if result.inference_model is not None:
            reference = Path(folder) / f"{source.stem}.eval.onnx"
            save_model(result.inference_model, reference, external_data=external)
        try:
            report = validate(reference, staged, **kwargs)
        except NotComparableError as error:
            raise NotWrittenError(f"cannot validate the folded model, so nothing was written ({error}); "
                                  "--no-validate writes it without validation", outcome, 3) from None
    if result.inference_model is not None:
        report.notes.insert(0, f"reference: {source} switched to inference mode (--eval)")
        report.reference = f"{source} (inference mode)"
    return report
