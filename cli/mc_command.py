"""`normfold mc`: Monte Carlo Dropout, mean and standard deviation per output."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import click
import numpy as np

from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.model_reading import load_model_file
from normfold.monte_carlo import monte_carlo
from normfold.output_paths import is_folder, require_name_fits
from normfold.validate.config import parse_size
from normfold.validate.inputs import (
    DEFAULT_MEMORY_BUDGET,
    InputSpec,
    input_specs,
    load_npz_inputs,
    parse_dims,
    random_inputs,
    resolve_shape,
)
from normfold.validate.providers import require_one_onnxruntime, resolve_providers

from .deprecated_options import deprecated_option, replace_deprecated
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
def mc_command(
    model: Path,
    inputs: Path | None,
    passes: int,
    samples: int | None,
    seed: int,
    provider: str,
    dims: tuple[str, ...],
    max_input_bytes: str,
    output: Path | None,
) -> None:
    """Monte Carlo Dropout: N seeded passes, mean and std per output.

    BN runs in inference mode and every Dropout samples inverted-Dropout masks (keep probability 1 - ratio).
    """
    if samples is not None:
        replace_deprecated("--samples", "--passes", "mc", f"--passes {samples}")
        passes = samples
    require_one_onnxruntime()
    budget = parse_size(max_input_bytes)
    loaded = load_model_file(model)
    assert loaded.proto is not None  # a model read from a file keeps the proto it was parsed from
    specs = input_specs(loaded.proto)
    if inputs is not None:
        feeds = load_npz_inputs(inputs, specs, parse_dims(dims), budget)
        if len(feeds) != 1:
            raise NormfoldError(f"{inputs}: give one set of inputs (found {len(feeds)} samples)", exit_code=EXIT_USAGE)
        feed = feeds[0]
    else:
        feed = _random_feed(model, specs, parse_dims(dims), seed, budget)
    choice = resolve_providers((provider,), model)[0]
    result = monte_carlo(loaded, feed, passes=passes, seed=seed, provider=choice.key)
    click.echo(
        f"{passes} passes on {choice.key}, Dropout active in {len(result.dropouts)} node(s): "
        f"{', '.join(result.dropouts)}"
    )
    for name in result.mean:
        mean, std = result.mean[name], result.std[name]
        click.echo(
            f"output '{name}' {list(mean.shape)}: mean of means {mean.mean():.6g}, "
            f"mean std {std.mean():.6g}, max std {std.max():.6g}"
        )
    if output is not None:
        arrays = {
            f"{n}_{kind}": a for n in result.mean for kind, a in (("mean", result.mean[n]), ("std", result.std[n]))
        }
        _save_npz(output, arrays)
        click.echo(f"wrote {output}")


def _random_feed(
    model: Path, specs: Sequence[InputSpec], dims: Mapping[str, int], seed: int, budget: int
) -> dict[str, np.ndarray]:
    """One seeded random input set, refused before anything is allocated when it is over the budget.

    Checked here rather than left to random_inputs, whose message suggests validate's options.
    """
    total = sum(math.prod(resolve_shape(spec, dims)) * spec.dtype.itemsize for spec in specs)
    if total > budget:
        raise NormfoldError(
            f"{model}: random inputs need {total} bytes, over --max-input-bytes ({budget} bytes); "
            "set symbolic dimensions with --dim, give --inputs, or raise --max-input-bytes"
        )
    return random_inputs(specs, dims=dims, seed=seed, memory_budget=budget)[0]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic .npz write: a temporary file beside the target, then rename."""
    folder = path.parent
    if not is_folder(folder):
        raise NormfoldError(f"{path}: output folder '{folder}' does not exist")
    require_name_fits(path)
    handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name[:32]}.", suffix=".npz")
    os.close(handle)
    try:
        np.savez(temp, allow_pickle=True, **arrays)  # numpy's default, given so that **arrays names arrays only
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
