"""`normfold calibrate`: its arguments, options and help; the command runs calibrate_command.run_calibrate.

This module imports click and light modules only, so that `normfold calibrate --help` loads neither onnx,
onnx_ir nor numpy (seconds of start-up); calibrate_command imports them when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .deprecated_options import deprecated_option
from .finite_float import FiniteFloat
from .option_values import CALIBRATION_METHODS, RUNNING_VARIANCES
from .runtime_options import dims_option, provider_option


@click.command("calibrate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="Calibration batches: .npz (one array per graph input, leading axis = batches) or a test_data_set folder.",
)
@click.option(
    "--method",
    type=click.Choice(CALIBRATION_METHODS),
    default="cumulative",
    show_default=True,
    help="cumulative: statistics of all the data (see --running-var); running: the running-average update per batch.",
)
@click.option(
    "--momentum",
    type=FiniteFloat(0, 1),
    help="With --method running: BN momentum as ONNX defines it, the weight of the OLD running statistic "
    "(PyTorch's momentum=0.1 is 0.9 here) [default: 0.9].",
)
@deprecated_option("--alpha", "--momentum", type=FiniteFloat(0, 1))
@click.option(
    "--running-var",
    type=click.Choice(RUNNING_VARIANCES),
    default="biased",
    show_default=True,
    help="Batch variance that the statistics are built from: biased (ONNX's convention) or unbiased "
    "(PyTorch's: times n/(n-1), n = values per channel in the batch; cumulative then averages batches "
    "as PyTorch's momentum=None).",
)
@provider_option
@dims_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write (default: MODEL.calibrated.onnx beside MODEL).",
)
def calibrate_command(**arguments: Any) -> None:
    """Re-estimate every BN's running mean and variance from data (AdaBN).

    Runs the training-side graph on ONNX Runtime (BN on batch statistics, Dropout off) over the
    batches, combines them in float64, and writes the inference model with the new statistics.
    """
    from .calibrate_command import run_calibrate

    run_calibrate(**arguments)
