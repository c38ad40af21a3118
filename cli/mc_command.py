"""`normfold mc`: Monte Carlo Dropout, mean and standard deviation per output."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import numpy as np

from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.io import is_folder, load_model_file, require_name_fits
from normfold.memory import available_memory
from normfold.monte_carlo import monte_carlo
from normfold.validate.inputs import input_specs, load_npz_inputs, parse_dims, random_inputs
from normfold.validate.providers import resolve_providers


@click.command("mc")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--inputs", type=click.Path(path_type=Path), help="Inputs: .npz with one array per graph input (default: seeded random).")
@click.option("--samples", type=click.IntRange(min=2), default=50, show_default=True, help="Stochastic forward passes.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the Dropout masks (and random inputs).")
@click.option("--provider", type=click.Choice(("auto", "cuda", "cpu")), default="auto", show_default=True,
              help="Execution provider: auto is CUDA when it really runs, else CPU.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a symbolic input dimension, repeatable.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write NAME_mean and NAME_std arrays for every output to this .npz.")
def mc_command(model: Path, inputs: Path | None, samples: int, seed: int, provider: str, dims: tuple[str, ...],
               output: Path | None) -> None:
    """Monte Carlo Dropout: N seeded passes, mean and std per output.

    BN runs in inference mode and every Dropout samples masks (seed 2.2, keep probability 1 - ratio).
    """
    loaded = load_model_file(model)
    specs = input_specs(loaded.proto)
    if inputs is not None:
        feeds = load_npz_inputs(inputs, specs, parse_dims(dims), available_memory() // 2)
        if len(feeds) != 1:
            raise NormfoldError(f"{inputs}: give one set of inputs (found {len(feeds)} samples)", exit_code=EXIT_USAGE)
    else:
        feeds = random_inputs(specs, dims=parse_dims(dims), seed=seed)
    choice = resolve_providers((provider,), model)[0]
    result = monte_carlo(loaded.model, feeds[0], passes=samples, seed=seed, provider=choice.key)
    click.echo(f"{samples} passes on {choice.key}, Dropout active in {len(result.dropouts)} node(s): "
               f"{', '.join(result.dropouts)}")
    for name in result.mean:
        mean, std = result.mean[name], result.std[name]
        click.echo(f"output '{name}' {list(mean.shape)}: mean of means {mean.mean():.6g}, "
                   f"mean std {std.mean():.6g}, max std {std.max():.6g}")
    if output is not None:
        arrays = {f"{n}_{kind}": a for n in result.mean for kind, a in (("mean", result.mean[n]), ("std", result.std[n]))}
        _save_npz(output, arrays)
        click.echo(f"wrote {output}")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic .npz write: a temporary file beside the target, then rename."""
    folder = path.parent
    if not is_folder(folder):
        raise NormfoldError(f"{path}: output folder '{folder}' does not exist")
    require_name_fits(path)
    handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name[:32]}.", suffix=".npz")
    os.close(handle)
    try:
        np.savez(temp, **arrays)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
