"""`normfold mc`: its arguments, options and help; the command runs mc_command.run_mc.

This module imports click and light modules only, so that `normfold mc --help` loads neither onnx,
onnx_ir nor numpy (seconds of start-up); mc_command imports them when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from normfold.validate.inputs import DEFAULT_MEMORY_BUDGET

from .deprecated_options import deprecated_option
from .runtime_options import dims_option, provider_option


@click.command("mc")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--inputs",
    type=click.Path(path_type=Path),
    help="Inputs: .npz with one array per graph input (default: seeded random).",
)
@click.option(
    "--passes",
    type=click.IntRange(min=2),
    default=50,
    show_default=True,
    help="Stochastic forward passes, each with new Dropout masks.",
)
@deprecated_option("--samples", "--passes", type=click.IntRange(min=2))
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the Dropout masks (and random inputs).",
)
@provider_option
@dims_option
@click.option(
    "--max-input-bytes",
    default=f"{DEFAULT_MEMORY_BUDGET // 2**30}GiB",
    show_default=True,
    metavar="SIZE",
    help="Refuse inputs (from --inputs or random) larger than this in total.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write NAME_mean and NAME_std arrays for every output to this .npz.",
)
def mc_command(**arguments: Any) -> None:
    """Monte Carlo Dropout: N seeded passes, mean and std per output.

    BN runs in inference mode and every Dropout samples inverted-Dropout masks (keep probability 1 - ratio).
    """
    from .mc_command import run_mc

    run_mc(**arguments)
