"""One typed validation configuration, declared once: library keywords, click options and the JSON report.

Each field carries its command-line form in its metadata (`option`); `normfold.cli.validation_options`
builds the click options from these fields, `validate(**keywords)` replaces fields by name, and
`to_dict()` is what the report records. Values are checked here, so a NaN tolerance or a zero budget is
a usage error whichever way it arrives.

Every command's `--help` reads this module (its options), so numpy and the comparison module are imported
only where they are used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normfold.errors import EXIT_USAGE, NormfoldError
from normfold.validate.inputs import DEFAULT_MEMORY_BUDGET, parse_dims

if TYPE_CHECKING:
    import numpy as np

    from normfold.validate.compare import Tolerance

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt", "reference")
OPT_LEVELS = ("disable", "basic", "extended", "all")
# The float64 reference's memory: widened weights and the float64 tensors alive at once (see float64_cost).
DEFAULT_FLOAT64_BYTES = 2 << 30
# Its work, 2 flops per multiply-add of Conv, ConvTranspose, Gemm and MatMul: numpy's float64 runs at roughly
# 5-20 GFLOP/s on the two cores a CI job gets, so 2e10 keeps the float64 check within a few seconds, less than
# the fold of a model that size. ResNet-50 at 224x224 takes 8.2e9; VGG-16 (3.1e10) is compared on ONNX Runtime
# alone unless the budget is raised.
DEFAULT_FLOAT64_FLOPS = 2e10

if TYPE_CHECKING:
    Feeds = list[dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Option:
    """How a field appears on the command line: its flags, its kind (how the string is parsed) and its help."""

    flags: tuple[str, ...]
    kind: str
    help: str
    metavar: str | None = None
    show_default: bool = False


def option(
    *flags: str, kind: str, help: str, metavar: str | None = None, show_default: bool = False
) -> dict[str, Option]:
    """Field metadata for a command-line option."""
    return {"option": Option(flags, kind, help, metavar, show_default)}


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """Everything a validation run can be told; defaults are the documented ones."""

    providers: tuple[str, ...] = dataclasses.field(
        default=("auto",),
        metadata=option(
            "--provider",
            kind="providers",
            help="Execution provider, repeatable (default auto: CUDA when it really runs, else CPU). reference: no ONNX "
            "Runtime, both models on onnx's reference evaluator in float64 (e.g. bfloat16 models).",
        ),
    )
    opt_level: str = dataclasses.field(
        default="disable",
        metadata=option(
            "--opt-level",
            kind="opt_level",
            show_default=True,
            help="ONNX Runtime graph optimization level for both models.",
        ),
    )
    dims: Mapping[str, int] = dataclasses.field(
        default_factory=dict,
        metadata=option(
            "--dim",
            kind="dims",
            metavar="NAME=SIZE",
            help="Size of a symbolic input dimension, repeatable (others default to 1).",
        ),
    )
    inputs: str | os.PathLike[str] | Feeds | None = dataclasses.field(
        default=None,
        metadata=option(
            "--inputs",
            kind="path",
            help="Inputs: .npz (one array per graph input, optional leading sample axis) or a test_data_set folder.",
        ),
    )
    samples: int = dataclasses.field(
        default=1, metadata=option("--samples", kind="count", show_default=True, help="Random input samples.")
    )
    seed: int = dataclasses.field(
        default=0, metadata=option("--seed", kind="int", show_default=True, help="Seed of the random inputs.")
    )
    atol: float | None = dataclasses.field(
        default=None,
        metadata=option(
            "--atol", kind="tolerance", help="Absolute tolerance for every output (default: the rounding policy)."
        ),
    )
    rtol: float | None = dataclasses.field(
        default=None,
        metadata=option(
            "--rtol", kind="tolerance", help="Relative tolerance for every output (default: the rounding policy)."
        ),
    )
    tolerances: Mapping[str, Tolerance] = dataclasses.field(
        default_factory=dict,
        metadata=option(
            "--tol", kind="tolerances", metavar="NAME=ATOL,RTOL", help="Tolerance for one output, repeatable."
        ),
    )
    float64: bool | None = dataclasses.field(
        default=None,
        metadata=option(
            "--float64/--no-float64",
            kind="switch",
            help="Evaluate the reference in float64 to tell rounding from real differences [default: when its estimated "
            "memory fits --float64-budget].",
        ),
    )
    float64_budget: int = dataclasses.field(
        default=DEFAULT_FLOAT64_BYTES,
        metadata=option(
            "--float64-budget",
            kind="size",
            metavar="SIZE",
            show_default=True,
            help="Memory the float64 reference may use (e.g. 512MiB, 4GiB); a model over it is compared on ONNX "
            "Runtime alone, with a note.",
        ),
    )
    float64_flops: float = dataclasses.field(
        default=DEFAULT_FLOAT64_FLOPS,
        metadata=option(
            "--float64-flops",
            kind="number",
            metavar="N",
            show_default=True,
            help="Floating-point operations the float64 reference may take (2 per multiply-add of Conv, Gemm, "
            "MatMul); a model over it is compared on ONNX Runtime alone, with a note.",
        ),
    )
    cross_provider: bool = dataclasses.field(
        default=False,
        metadata=option(
            "--cross-provider",
            kind="flag",
            help="Also compare the candidate on each GPU provider with the reference on CPU, reported apart.",
        ),
    )
    fp16: bool = dataclasses.field(
        default=False,
        metadata=option(
            "--fp16",
            kind="flag",
            help="Also convert both models to float16 (I/O kept float32) and compare them, as deployed on GPUs.",
        ),
    )
    memory_budget: int = dataclasses.field(
        default=DEFAULT_MEMORY_BUDGET,
        metadata=option(
            "--max-input-bytes",
            kind="size",
            metavar="SIZE",
            show_default=True,
            help="Refuse random inputs larger than this in total.",
        ),
    )

    def __post_init__(self) -> None:
        _check_choices("--provider", self.providers, PROVIDER_CHOICES)
        _check_choices("--opt-level", (self.opt_level,), OPT_LEVELS)
        for flag, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if value is not None:
                check_tolerance_value(flag, value)
        for name, tolerance in self.tolerances.items():
            check_tolerance_value(f"--tol {name}", tolerance.atol if tolerance.atol is not None else 0.0)
            check_tolerance_value(f"--tol {name}", tolerance.rtol)
        for flag, count in (
            ("--samples", self.samples),
            ("--float64-budget", self.float64_budget),
            ("--max-input-bytes", self.memory_budget),
        ):
            if count < 1:
                raise NormfoldError(f"{flag} must be at least 1, got {count}", exit_code=EXIT_USAGE)
        if not math.isfinite(self.float64_flops) or self.float64_flops <= 0:
            raise NormfoldError(
                f"--float64-flops must be a finite number > 0, got {self.float64_flops:g}", exit_code=EXIT_USAGE
            )
        if "reference" in self.providers and self.cross_provider:
            raise NormfoldError(
                "--cross-provider compares ONNX Runtime's GPU providers with its CPU one; "
                "it does not combine with --provider reference",
                exit_code=EXIT_USAGE,
            )
        if "reference" in self.providers and self.fp16:
            raise NormfoldError(
                "--fp16 runs float16 copies of the models on ONNX Runtime; it does not combine with "
                "--provider reference, which widens every float tensor to float64",
                exit_code=EXIT_USAGE,
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as the JSON report records them (given input arrays as 'arrays')."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["providers"] = list(self.providers)
        data["dims"] = dict(self.dims)
        data["inputs"] = (
            "arrays" if isinstance(self.inputs, list) else None if self.inputs is None else str(self.inputs)
        )
        data["tolerances"] = {name: {"atol": t.atol, "rtol": t.rtol} for name, t in self.tolerances.items()}
        return data

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ValidationConfig:
        """The configuration from parsed command-line values keyed by field name (absent or None: default)."""
        given = {}
        for field in dataclasses.fields(cls):
            value = options.get(field.name)
            if value is None or value == ():
                continue
            given[field.name] = PARSERS.get(field.metadata["option"].kind, lambda v: v)(value)
        return cls(**given)


def check_tolerance_value(flag: str, value: float) -> float:
    """A tolerance is a finite number >= 0: NaN or infinity would make every comparison pass."""
    if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value) or value < 0:
        raise NormfoldError(f"{flag} must be a finite number >= 0, got {value}", exit_code=EXIT_USAGE)
    return float(value)


def _check_choices(flag: str, values: Sequence[str], choices: Sequence[str]) -> None:
    unknown = [v for v in values if v not in choices]
    if unknown or not values:
        raise NormfoldError(
            f"{flag}: unknown value '{(unknown or [''])[0]}' (choose from {', '.join(choices)})", exit_code=EXIT_USAGE
        )


def parse_tolerance_override(text: str) -> tuple[str, Tolerance]:
    """'NAME=ATOL,RTOL' -> (NAME, Tolerance); anything else, NaN and infinity included, is a usage error."""
    from normfold.validate.compare import Tolerance

    name, sep, values = text.rpartition("=")
    parts = values.split(",")
    try:
        if not sep or not name or len(parts) != 2:
            raise ValueError
        atol, rtol = float(parts[0]), float(parts[1])
        if not (math.isfinite(atol) and math.isfinite(rtol)) or atol < 0 or rtol < 0:
            raise ValueError
    except ValueError:
        raise NormfoldError(
            f"--tol '{text}': expected NAME=ATOL,RTOL with finite non-negative numbers", exit_code=EXIT_USAGE
        ) from None
    return name, Tolerance(atol, rtol, explicit=True)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}


def parse_size(text: str | int) -> int:
    """'512MiB', '4GiB', '2e9' or 1000 -> bytes; anything else is a usage error."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if match is None or match.group(2) not in _UNITS:
        raise NormfoldError(f"'{text}' is not a size (examples: 1000000, 512MiB, 4GiB)", exit_code=EXIT_USAGE)
    return int(float(match.group(1)) * _UNITS[match.group(2)])


PARSERS: dict[str, Callable[[Any], Any]] = {
    "providers": tuple,
    "dims": parse_dims,
    "tolerances": lambda texts: dict(parse_tolerance_override(t) for t in texts),
    "size": parse_size,
    "path": Path,
}
