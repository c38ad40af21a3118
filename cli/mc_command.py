"""`normfold mc`: Monte Carlo Dropout, mean and standard deviation per output.

Its options are declared in mc_declaration.
"""

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
    InputSpec,
    input_specs,
    load_npz_inputs,
    parse_dims,
    random_inputs,
    resolve_shape,
)
from normfold.validate.providers import require_one_onnxruntime, resolve_providers

from .deprecated_options import replace_deprecated


def run_mc(
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
    """`normfold mc`, with the options that mc_declaration declares (and documents)."""
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
