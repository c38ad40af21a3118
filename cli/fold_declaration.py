"""`normfold fold`: its arguments, options and help; the command runs fold_command.run_fold.

This module imports click and light modules only, so that `normfold fold --help` loads neither onnx,
onnx_ir nor numpy (seconds of start-up); fold_command imports them when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .batch_options import jobs_option, report_option
from .validation_options import validation_options
from .verbosity import verbosity_options


@click.command("fold")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write (default: MODEL.folded.onnx beside MODEL).",
)
@click.option("--in-place", is_flag=True, help="Replace MODEL itself (the only way to overwrite the input).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON document instead of text.")
@click.option(
    "--simplify", is_flag=True, help="Also fold constants and remove dead code (onnxscript), around the fold."
)
@click.option(
    "--fold-norm-affine",
    is_flag=True,
    help="Also fold LayerNorm/RMSNorm scale and shift into the MatMul/Gemm layers reading them.",
)
@click.option(
    "--eval",
    "eval_mode",
    is_flag=True,
    help="First switch training-mode BN and Dropout to inference mode (as `normfold mode --eval`).",
)
@click.option(
    "--batch-stats",
    is_flag=True,
    help="With --eval: where running statistics are unusable, compute batch statistics instead.",
)
@click.option(
    "--validate/--no-validate",
    "check",
    default=True,
    show_default=True,
    help="Validate the folded model against MODEL before writing it; a mismatch writes nothing (exit 1).",
)
@jobs_option("With several models: fold this many in parallel processes.")
@report_option(
    "Also write a self-contained HTML page (summary, every node, operator counts, error histograms), "
    "also when nothing is written; one model only.",
)
@verbosity_options
@validation_options
@click.pass_context
def fold_command(ctx: click.Context, **arguments: Any) -> None:
    """Fold every BatchNormalization and strip every inference Dropout in MODELS.

    Each BN is folded into the weights of the adjacent Conv, ConvTranspose, Gemm or MatMul, computed
    in float64 and rounded once. What cannot be folded is left unchanged, with the reason printed.
    The result is validated on ONNX Runtime before it is written. Several models (files, or every
    *.onnx in a folder except *.folded.onnx) give one line each and a summary; one failure never
    stops the others. Lines fit 100 columns; -v prints every figure, -q only the last line.
    """
    from .fold_command import run_fold

    run_fold(ctx, **arguments)
