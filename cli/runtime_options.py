"""Options shared by the commands that run a model on ONNX Runtime themselves (calibrate, mc)."""

from __future__ import annotations

import click

provider_option = click.option(
    "--provider",
    type=click.Choice(("auto", "cuda", "cpu")),
    default="auto",
    show_default=True,
    help="Execution provider: auto is CUDA when it really runs, else CPU.",
)
dims_option = click.option(
    "--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a symbolic input dimension, repeatable."
)
