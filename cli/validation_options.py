"""Options shared by every command that validates: providers, inputs, tolerances."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from normfold.validate.compare import parse_tolerance_override
from normfold.validate.inputs import DEFAULT_MEMORY_BUDGET, parse_dims
from normfold.validate.providers import OPT_LEVELS, PROVIDER_CHOICES


def validation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the validation options to a click command (they arrive as keyword arguments)."""
    options = [
        click.option("--provider", "providers", multiple=True, type=click.Choice(PROVIDER_CHOICES),
                     help="Execution provider, repeatable (default auto: CUDA when it really runs, else CPU). "
                          "reference: no ONNX Runtime, both models on onnx's reference evaluator in float64 "
                          "(e.g. bfloat16 models, which ONNX Runtime's CPU build cannot run)."),
        click.option("--opt-level", type=click.Choice(OPT_LEVELS), default="disable", show_default=True,
                     help="ONNX Runtime graph optimization level for both models."),
        click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
                     help="Size of a symbolic input dimension, repeatable (others default to 1)."),
        click.option("--inputs", type=click.Path(path_type=Path, exists=False),
                     help="Inputs: .npz (one array per graph input, optional leading sample axis) or a test_data_set folder."),
        click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Random input samples."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs."),
        click.option("--atol", type=click.FloatRange(min=0), help="Absolute tolerance for every output (default by dtype)."),
        click.option("--rtol", type=click.FloatRange(min=0), help="Relative tolerance for every output (default by dtype)."),
        click.option("--tol", "tols", multiple=True, metavar="NAME=ATOL,RTOL", help="Tolerance for one output, repeatable."),
        click.option("--float64/--no-float64", default=None,
                     help="Evaluate the reference in float64 (onnx reference evaluator) to show rounding level "
                          "[default: for models up to 256 MiB]."),
        click.option("--cross-provider", is_flag=True,
                     help="Also compare the candidate on each GPU provider with the reference on CPU, reported apart."),
        click.option("--fp16", is_flag=True,
                     help="Also convert both models to float16 (I/O kept float32) and compare them, as deployed on GPUs."),
        click.option("--max-input-bytes", type=click.IntRange(min=1), default=DEFAULT_MEMORY_BUDGET, show_default=True,
                     help="Refuse random inputs larger than this in total."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def validation_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """Turn the parsed options into keyword arguments of normfold.validate."""
    return {
        "providers": options["providers"] or ("auto",),
        "opt_level": options["opt_level"],
        "dims": parse_dims(options["dims"]),
        "inputs": options["inputs"],
        "samples": options["samples"],
        "seed": options["seed"],
        "atol": options["atol"],
        "rtol": options["rtol"],
        "tolerances": dict(parse_tolerance_override(t) for t in options["tols"]),
        "float64": options["float64"],
        "cross_provider": options["cross_provider"],
        "fp16": options["fp16"],
        "memory_budget": options["max_input_bytes"],
    }

