"""`normfold calibrate`: re-estimate BN running statistics from data, write the inference model.

Its options are declared in calibrate_declaration.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from pathlib import Path

import click
import numpy as np

from normfold.atomic_write import save_model
from normfold.calibrate import calibrate
from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.external_data import has_external_data
from normfold.memory import available_memory
from normfold.model_reading import load_model, read_model_proto
from normfold.output_paths import check_output_path, is_folder
from normfold.validate.inputs import input_specs, load_npz_inputs, load_test_data_sets, parse_dims
from normfold.validate.providers import require_one_onnxruntime, resolve_providers

from .deprecated_options import momentum_advice, replace_deprecated


def run_calibrate(
    model: Path,
    data: Path,
    method: str,
    momentum: float | None,
    alpha: float | None,
    running_var: str,
    provider: str,
    dims: tuple[str, ...],
    output: Path | None,
) -> None:
    """`normfold calibrate`, with the options that calibrate_declaration declares (and documents)."""
    if alpha is not None:
        replace_deprecated("--alpha", "--momentum", "calibrate", momentum_advice(alpha))
        momentum = 1.0 - alpha
    if method == "cumulative" and momentum is not None:
        raise NormfoldError("--momentum applies with --method running", exit_code=EXIT_USAGE)
    onnx_momentum = 0.9 if momentum is None else momentum
    require_one_onnxruntime()
    target = output or model.with_name(f"{model.stem}.calibrated{model.suffix or '.onnx'}")
    specs = input_specs(read_model_proto(model))
    if is_folder(data):
        batches = load_test_data_sets(data, specs)[0]
    else:
        batches = load_npz_inputs(data, specs, parse_dims(dims), available_memory() // 2)
    choice = resolve_providers((provider,), model)[0]
    if choice.note:
        click.echo(choice.note, err=True)
    loaded = load_model(model)
    input_files = check_output_path(target, model, loaded)
    with contextlib.ExitStack() as bars:

        def progress(items: Iterable[dict[str, np.ndarray]]) -> Iterable[dict[str, np.ndarray]]:
            """A bar on stderr from when calibrate() has checked the batches and starts running them."""
            return bars.enter_context(click.progressbar(items, label="calibrating", file=sys.stderr))

        result = calibrate(
            loaded,
            batches,
            method=method,
            momentum=onnx_momentum,
            running_var=running_var,
            provider=choice.key,
            progress=progress,
        )
    save_model(result.model, target, external_data=has_external_data(loaded), protected=input_files)
    for record in result.records:
        click.echo(record.to_line())
    click.echo(
        f"calibrated {len(result.records)} BatchNormalization node(s) on {result.batches} batch(es) "
        f"({method}, provider {choice.key}) from the {running_var} batch variance"
    )
    click.echo(f"wrote {target}")
