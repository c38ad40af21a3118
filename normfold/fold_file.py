"""Fold one model file into another: load, fold, validate against the input, write atomically or not at all."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from normfold.atomic_write import save_model
from normfold.errors import EXIT_MISMATCH, NormfoldError
from normfold.external_data import has_external_data
from normfold.folding import FoldResult, fold
from normfold.mapped_pages import return_freed_heap
from normfold.model_reading import LoadedModel, load_model_file
from normfold.output_paths import check_output_path

if TYPE_CHECKING:
    from normfold.validate import ValidationConfig, ValidationReport


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


Phase = Literal["load", "fold", "write", "validate"]
# Called as each phase starts; from "write" on with the outcome so far, whose fold records are final.
Progress = Callable[[Phase, "FoldFileResult | None"], None]


def fold_file(
    source: Path,
    target: Path,
    *,
    in_place: bool = False,
    simplify: bool = False,
    eval_mode: bool = False,
    batch_stats: bool = False,
    fold_norm_affine: bool = False,
    validation: ValidationConfig | None = None,
    progress: Progress | None = None,
) -> FoldFileResult:
    """Fold `source` into `target`; with a `validation` configuration check it first.

    The input is read and checked once: the fold rewrites the onnx_ir model in place while validation
    reads the input file and the proto it was parsed from, which the fold leaves as it was. `progress` hears
    of each phase as it starts: load, fold, write (the output staged and checked beside the target, not yet
    in place), validate (the staged output, with a validation configuration).
    """
    tell = progress or _quiet
    tell("load", None)
    loaded = load_model_file(source, keep_proto=validation is not None)  # only validation reads the input again
    input_files = check_output_path(target, source, loaded.model, in_place=in_place)
    old_files = input_files - {source.resolve()} if in_place else set()
    external = has_external_data(loaded.model)
    tell("fold", None)
    result = fold(
        loaded.model,
        simplify=simplify,
        eval_mode=eval_mode,
        batch_stats=batch_stats,
        in_place=True,
        fold_norm_affine=fold_norm_affine,
    )
    return_freed_heap()  # the replaced weights, before the write needs as much again
    outcome = FoldFileResult(result, None, source, target, written=False)
    tell("write", outcome)

    def verify(staged: Path) -> None:
        assert validation is not None
        tell("validate", outcome)
        outcome.validation = _validate(loaded, staged, result, external, validation, outcome)
        if not outcome.validation.passed:
            worst = outcome.validation.failures[0]
            raise NotWrittenError(
                f"the folded model differs from {source} in output '{worst.output}' ({worst.section}); nothing written",
                outcome,
                EXIT_MISMATCH,
            )

    save_model(
        result.model,
        target,
        external_data=external,
        verify=verify if validation is not None else None,
        replaced_files=old_files,
        protected=input_files,
    )
    outcome.written = True
    return outcome


def _quiet(phase: Phase, outcome: FoldFileResult | None) -> None:
    """No progress to report to."""


def _validate(
    source: LoadedModel,
    staged: Path,
    result: FoldResult,
    external: bool,
    config: ValidationConfig,
    outcome: FoldFileResult,
) -> ValidationReport:
    """Validate the staged output against the input (or, after --eval, against the input in inference mode).

    Imported here: with validation off, `normfold fold` never loads the validation code. ONNX Runtime reads
    files, so an --eval reference is written once to a temporary folder; nothing is read back.
    """
    from normfold.validate import validate
    from normfold.validate.stochastic import NotComparableError

    with tempfile.TemporaryDirectory(prefix="normfold-eval-") as folder:
        reference = source
        if result.inference_model is not None:
            path = Path(folder) / f"{source.path.stem}.eval.onnx"
            save_model(result.inference_model, path, external_data=external, check=False)
            reference = LoadedModel(path, result.inference_model)
        try:
            report = validate(reference, LoadedModel(staged, result.model), config=config)
        except NotComparableError as error:
            raise NotWrittenError(
                f"cannot validate the folded model, so nothing was written ({error}); "
                "--no-validate writes it without validation",
                outcome,
                3,
            ) from None
    if result.inference_model is not None:
        report.notes.insert(0, f"reference: {source.path} switched to inference mode (--eval)")
        report.reference = f"{source.path} (inference mode)"
    return report
