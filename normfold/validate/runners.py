"""Runners: one per backend a validation runs a model on, each giving every sample's outputs once.

A validation is a list of comparisons between two runners (see engine.py), so ONNX Runtime on each
provider, the float64 truth, onnx's reference evaluator and the float16 deployment copy are all just
runners. Each runs its model the first time its outputs are asked for and keeps them for the others.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from normfold.errors import NormfoldError, describe
from normfold.mapped_pages import return_freed_heap
from normfold.model_reading import LoadedModel
from normfold.validate.providers import ProviderChoice, open_session

Feeds = list[dict[str, np.ndarray]]
Outputs = list[list[np.ndarray]]


class Runner(Protocol):
    """Something that runs a model on every sample: its label in reports and its outputs."""

    @property
    def label(self) -> str:
        """The runner's name in reports."""

    def outputs(self) -> Outputs:
        """Per sample, the model's outputs in graph order."""


@dataclasses.dataclass
class OrtRunner:
    """A model on one ONNX Runtime execution provider at one optimization level."""

    path: Path
    choice: ProviderChoice
    opt_level: str
    feeds: Feeds
    session: Any = None  # an onnxruntime.InferenceSession opened beforehand (onnxruntime has no type information)
    _outputs: Outputs | None = None

    @property
    def label(self) -> str:
        """The provider's name in reports."""
        return self.choice.key

    def outputs(self) -> Outputs:
        """Run every sample (once)."""
        if self._outputs is None:
            session = self.session or open_session(self.path, self.choice.key, self.opt_level, suggest_reference=True)
            self.session = None  # the session's memory is not needed once the outputs are held
            try:
                self._outputs = [session.run(None, feed) for feed in self.feeds]
            except Exception as error:  # ONNX Runtime raises its own types for models it cannot run
                raise NormfoldError(
                    f"{self.path}: ONNX Runtime failed on {self.choice.key}: {describe(error, 2000)} "
                    "(--no-validate skips validation)"
                ) from None
            del session
            return_freed_heap()  # the session's weights and arena, before the next session needs as much
        return self._outputs


@dataclasses.dataclass
class FixedRunner:
    """Outputs already known: stored expected outputs, or an evaluation done elsewhere."""

    label: str
    values: Outputs

    def outputs(self) -> Outputs:
        """The stored outputs."""
        return self.values


@dataclasses.dataclass
class ReferenceEvaluatorRunner:
    """A model on onnx's reference evaluator with every float tensor widened to float64 (`--provider reference`)."""

    model: LoadedModel
    feeds: Feeds
    max_bytes: int
    label: str = "onnx-reference (float64)"
    _outputs: Outputs | None = None

    def outputs(self) -> Outputs:
        """Evaluate every sample (once); float outputs as float64."""
        if self._outputs is None:
            from normfold.validate.reference_runner import run_reference

            self._outputs = run_reference(self.model.path, self.model.full_proto(), self.feeds, self.max_bytes)
        return self._outputs


@dataclasses.dataclass
class Float64Runner:
    """The reference model in float64 (the truth the tolerance policy measures rounding against).

    `max_bytes` bounds its memory and `max_flops` its work (None: no bound, when the user forced it); a model
    over them, or one onnx's evaluator cannot run, raises Float64Unavailable with the reason.
    """

    model: LoadedModel
    feeds: Feeds
    max_bytes: int | None
    max_flops: float | None = None
    label: str = "float64"
    _outputs: Outputs | None = None

    def outputs(self) -> Outputs:
        """Evaluate every sample (once)."""
        if self._outputs is None:
            from normfold.validate.float64 import run_float64_samples

            flops = math.inf if self.max_flops is None else self.max_flops
            self._outputs = run_float64_samples(self.model, self.feeds, self.max_bytes, max_flops=flops)
        return self._outputs
