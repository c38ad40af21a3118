"""`normfold mode`: its arguments, options and help; the command runs mode_command.run_mode.

This module imports click and light modules only, so that `normfold mode --help` loads neither onnx,
onnx_ir nor numpy (seconds of start-up); mode_command imports them when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .deprecated_options import deprecated_option
from .finite_float import FiniteFloat
from .option_values import DEFAULT_FLAG, RUNNING_VARIANCES


@click.command("mode")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--train",
    "to_train",
    is_flag=True,
    help="Build the training-side graph: a boolean input switches every BN and Dropout together.",
)
@click.option(
    "--eval",
    "to_eval",
    is_flag=True,
    help="Switch every training-mode BN and Dropout (and --train switches) to inference mode.",
)
@click.option(
    "--batch-stats",
    is_flag=True,
    help="With --eval: where running statistics are unusable, compute batch statistics instead.",
)
@click.option("--flag", default=DEFAULT_FLAG, show_default=True, help="With --train: name of the boolean input.")
@click.option(
    "--momentum",
    type=FiniteFloat(0, 1),
    help="With --train: BN momentum as ONNX defines it, the weight of the OLD running statistic "
    "(running = m*running + (1-m)*batch; PyTorch's momentum=0.1 is 0.9 here) [default: each BN's own].",
)
@deprecated_option("--alpha", "--momentum", type=FiniteFloat(0, 1))
@click.option(
    "--running-var",
    type=click.Choice(RUNNING_VARIANCES),
    help="With --train: the batch variance that updates the running variance: biased (ONNX's convention) or "
    "unbiased (PyTorch's: times n/(n-1), n = values per channel in the batch) [default: biased].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write (default: MODEL.train.onnx or MODEL.eval.onnx beside MODEL).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON document instead of text.")
def mode_command(**arguments: Any) -> None:
    """Switch BatchNormalization and Dropout between training and inference mode.

    --eval: BN normalizes with its running statistics, Dropout is the identity. A BN whose running
    statistics are unusable (never tracked: mean 0 / variance 1) is left as it is with the reason,
    unless --batch-stats rewrites it to compute batch statistics without training_mode.
    --train: one boolean input (default false) switches every BN to batch statistics, with its updated
    running statistics as extra outputs (--running-var: from the biased or the unbiased batch variance),
    and every Dropout to sampling masks.
    """
    from .mode_command import run_mode

    run_mode(**arguments)
