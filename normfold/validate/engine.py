"""`normfold.validate`: run reference and candidate on the same inputs and compare every output.

A validation is a list of checks, each a (reference runner, candidate runner, tolerance) triple with an
optional float64 truth: the candidate against the reference on each provider, against stored outputs,
float16 copies, the candidate on a GPU against the reference on CPU. Every runner runs its model once;
the verdict of each output is the tolerance policy's (policy.py).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from normfold.errors import EXIT_UNUSABLE_INPUT, EXIT_USAGE, NormfoldError
from normfold.graph_walk import RANDOM_OPS
from normfold.model_reading import load_model_file
from normfold.output_paths import is_folder
from normfold.validate.compare import Tolerance, default_tolerance, is_float, structural_problem
from normfold.validate.config import ValidationConfig
from normfold.validate.float64 import Float64Unavailable
from normfold.validate.fp16 import float16_copy
from normfold.validate.inputs import InputSpec, input_specs, load_npz_inputs, load_test_data_sets, random_inputs
from normfold.validate.policy import judge_output
from normfold.validate.providers import REFERENCE, REFERENCE_LABEL, ProviderChoice, resolve_providers
from normfold.validate.reference_runner import declared_dtypes, widen
from normfold.validate.report import OutputComparison, ValidationReport
from normfold.validate.runners import (
    FixedRunner,
    Float64Runner,
    LoadedModel,
    OrtRunner,
    Outputs,
    ReferenceEvaluatorRunner,
    Runner,
)
from normfold.validate.stochastic import NotComparableError, pin_seeds, proto_nodes, random_nodes

Feeds = list[dict[str, np.ndarray]]
Declared = tuple[list[np.dtype | None], list[np.dtype | None]]
ToleranceFor = Callable[[str, np.dtype], Tolerance]
ModelArgument = str | os.PathLike[str] | LoadedModel


@dataclasses.dataclass
class Check:
    """One comparison: the candidate runner's outputs against the reference runner's, judged by `tolerance`.

    `truth` gives the reference's float64 outputs (the rounding policy); `precision` is the dtype the models
    computed in when it differs from the outputs' (float16 copies); `declared` the output dtypes both sides
    declare when their arrays are float64 evaluations (the reference provider).
    """

    section: str
    reference: Runner
    candidate: Runner
    tolerance: ToleranceFor
    truth: Outputs | None = None
    candidate_names: list[str] | None = None
    precision: np.dtype | None = None
    declared: Declared | None = None


def validate(
    reference: ModelArgument,
    candidate: ModelArgument | None = None,
    *,
    expected: str | os.PathLike[str] | None = None,
    config: ValidationConfig | None = None,
    **options: Any,
) -> ValidationReport:
    """Compare `candidate` with `reference` (or `reference` with the outputs stored in `expected`).

    Models are paths, or LoadedModel (path plus the model already read and checked, so nothing is read
    twice). `config` and `options` (ValidationConfig's fields by name) say how; both run on each provider
    at ORT_DISABLE_ALL by default, so ONNX Runtime's own fusions are not what is tested.
    """
    settings = dataclasses.replace(config or ValidationConfig(), **options)
    if candidate is None and expected is None:
        raise NormfoldError("give a CANDIDATE model, or --expected DIR with stored outputs", exit_code=EXIT_USAGE)
    ref = _loaded(reference)
    cand = _loaded(candidate) if candidate is not None else None
    specs = input_specs(interface(ref))
    if cand is not None:
        _check_same_inputs(specs, input_specs(interface(cand)), cand.path)
    labels = (str(ref.path), str(cand.path if cand is not None else expected))
    randoms = _random_nodes(ref)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="normfold-validate-") as staging:
        if randoms:
            if cand is None:
                raise NotComparableError(
                    f"{ref.path} samples random values at run time ({', '.join(list(randoms.values())[:3])}), "
                    "so stored outputs cannot be reproduced"
                )
            ref, cand = (
                _seeded(ref, set(randoms), Path(staging), "reference"),
                _seeded(cand, set(randoms), Path(staging), "candidate"),
            )
            notes.append(f"random nodes seeded identically in both models: {', '.join(randoms.values())}")
            settings = dataclasses.replace(settings, float64=False)
        report = _validate_loaded(ref, cand, expected, specs, notes, settings, Path(staging))
    report.reference, report.candidate = labels
    return report


def _random_nodes(ref: LoadedModel) -> dict[str, str]:
    """random_nodes of the reference as it was read (the fold may have rewritten `ref.model` since); the proto is
    turned into onnx_ir only when it has a node that could sample (a large graph takes seconds to convert)."""
    if ref.proto is None:
        return random_nodes(ref.model)
    if not any(node.op_type in RANDOM_OPS or node.op_type == "Dropout" for node in proto_nodes(ref.proto)):
        return {}
    return random_nodes(ir.from_proto(ref.proto))


def _loaded(model: ModelArgument) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model_file(Path(model))


def interface(model: LoadedModel) -> onnx.ModelProto:
    """A ModelProto holding what validation reads of a model's interface: its graph inputs and outputs."""
    if model.proto is not None:
        return model.proto
    graph = model.model.graph
    inputs = [ir.serde.serialize_value(v) for v in graph.inputs if v.name not in graph.initializers]
    outputs = [ir.serde.serialize_value(v) for v in graph.outputs]
    return onnx.helper.make_model(onnx.helper.make_graph([], graph.name or "interface", inputs, outputs))


def _seeded(model: LoadedModel, keys: set[str], folder: Path, side: str) -> LoadedModel:
    """A copy of the model whose random nodes carry seeds derived from their names (same draws on both sides)."""
    (folder / side).mkdir()
    path = pin_seeds(model.path, keys, folder / side)
    return LoadedModel(path, model.model, onnx.load(str(path), load_external_data=False))


def _validate_loaded(
    ref: LoadedModel,
    cand: LoadedModel | None,
    expected: str | os.PathLike[str] | None,
    specs: list[InputSpec],
    notes: list[str],
    settings: ValidationConfig,
    staging: Path,
) -> ValidationReport:
    """The checks proper, on models ready to run."""
    names = [o.name for o in interface(ref).graph.output]
    _check_names(names, specs, settings)
    feeds, stored, source = _feeds(specs, expected, settings)
    empty = sorted({name for feed in feeds for name, array in feed.items() if array.size == 0})
    if empty:
        raise NormfoldError(f"input(s) {', '.join(empty)} hold no values, so nothing would be compared")
    choices = resolve_providers(tuple(settings.providers), ref.path, settings.opt_level)
    notes = [c.note for c in choices if c.note] + notes
    truth = _truth(ref, feeds, choices, settings, notes)
    cand_names = None if cand is None else [o.name for o in interface(cand).graph.output]
    checks = _checks(ref, cand, stored, feeds, choices, settings, truth, cand_names, staging)
    comparisons = [result for check in checks for result in _run_check(check, names)]
    return ValidationReport(
        str(ref.path),
        str(cand.path if cand is not None else expected),
        [c.label for c in choices],
        notes,
        len(feeds),
        source,
        comparisons,
        settings.to_dict(),
    )


def _truth(
    ref: LoadedModel, feeds: Feeds, choices: list[ProviderChoice], settings: ValidationConfig, notes: list[str]
) -> Outputs | None:
    """The reference's float64 outputs, or None with a note saying why they are missing."""
    if settings.float64 is False or all(c.key == REFERENCE for c in choices):
        return None  # off, or the reference evaluator already computes in float64
    forced = settings.float64 is True
    try:
        budget = (None, None) if forced else (settings.float64_budget, settings.float64_flops)
        return Float64Runner(ref, feeds, *budget).outputs()
    except Float64Unavailable as why:
        if forced:
            raise NormfoldError(
                f"the float64 reference was asked for (--float64) but cannot run: {why}", exit_code=EXIT_UNUSABLE_INPUT
            ) from None
        notes.append(f"float64 reference not run: {why}; outputs are judged against rtol x max|ref| instead")
        return None


def _checks(
    ref: LoadedModel,
    cand: LoadedModel | None,
    stored: Outputs | None,
    feeds: Feeds,
    choices: list[ProviderChoice],
    settings: ValidationConfig,
    truth: Outputs | None,
    cand_names: list[str] | None,
    staging: Path,
) -> list[Check]:
    """Every comparison this validation makes, in report order."""
    tol = _tolerance_for(settings)
    checks: list[Check] = []
    ref_runners: dict[str, Runner] = {}
    for choice in choices:
        if choice.key == REFERENCE:
            checks += _reference_checks(ref, cand, stored, feeds, tol, cand_names, settings.float64_budget)
            continue
        ref_runners[choice.key] = ref_run = OrtRunner(ref.path, choice, settings.opt_level, feeds, choice.session)
        if stored is not None:
            checks.append(Check(f"{choice.key} vs expected", FixedRunner("expected", stored), ref_run, tol))
        if cand is not None:
            cand_run = OrtRunner(cand.path, choice, settings.opt_level, feeds)
            checks.append(Check(choice.key, ref_run, cand_run, tol, truth, cand_names))
    if cand is None:
        return checks
    if settings.fp16:
        checks += _float16_checks(ref, cand, choices, settings, feeds, truth, cand_names, staging)
    if settings.cross_provider:
        cpu = ref_runners.get("cpu") or OrtRunner(ref.path, ProviderChoice("cpu"), settings.opt_level, feeds)
        for choice in choices:
            if choice.key != "cpu":
                cand_run = OrtRunner(cand.path, choice, settings.opt_level, feeds)
                checks.append(Check(f"{choice.key} candidate vs cpu reference", cpu, cand_run, tol, truth, cand_names))
    return checks


def _reference_checks(
    ref: LoadedModel,
    cand: LoadedModel | None,
    stored: Outputs | None,
    feeds: Feeds,
    tol: ToleranceFor,
    cand_names: list[str] | None,
    max_bytes: int,
) -> list[Check]:
    """Both models (or the reference and the stored outputs) on onnx's evaluator in float64, each within
    `max_bytes`."""
    ref_run = ReferenceEvaluatorRunner(ref, feeds, max_bytes)
    ref_types = declared_dtypes(interface(ref))
    checks = []
    if stored is not None:
        stored_types: list[np.dtype | None] = [a.dtype for a in stored[0]]
        checks.append(
            Check(
                f"{REFERENCE_LABEL} vs expected",
                FixedRunner("expected", [widen(s) for s in stored]),
                ref_run,
                tol,
                declared=(stored_types, ref_types),
            )
        )
    if cand is not None:
        checks.append(
            Check(
                REFERENCE_LABEL,
                ref_run,
                ReferenceEvaluatorRunner(cand, feeds, max_bytes),
                tol,
                candidate_names=cand_names,
                declared=(ref_types, declared_dtypes(interface(cand))),
            )
        )
    return checks


def _float16_checks(
    ref: LoadedModel,
    cand: LoadedModel,
    choices: list[ProviderChoice],
    settings: ValidationConfig,
    feeds: Feeds,
    truth: Outputs | None,
    cand_names: list[str] | None,
    staging: Path,
) -> list[Check]:
    """Both models converted to float16 (float32 inputs/outputs), compared at float16 tolerances on each provider."""
    ref16 = float16_copy(ref.path, ref.full_proto(), staging / "fp16-reference")
    cand16 = float16_copy(cand.path, cand.full_proto(), staging / "fp16-candidate")
    tol = _tolerance_for(settings, half=True)
    half = np.dtype(np.float16)
    return [
        Check(
            f"{choice.key} fp16",
            OrtRunner(ref16, choice, settings.opt_level, feeds),
            OrtRunner(cand16, choice, settings.opt_level, feeds),
            tol,
            truth,
            cand_names,
            half,
        )
        for choice in choices
    ]


def _run_check(check: Check, names: list[str]) -> list[OutputComparison]:
    """One comparison per output over all samples (figures over the concatenated samples)."""
    reference, candidate = check.reference.outputs(), check.candidate.outputs()
    results = []
    for index, name in enumerate(names):
        if check.candidate_names is not None and name not in check.candidate_names:
            tolerance = check.tolerance(name, np.dtype(np.float32))
            results.append(OutputComparison(name, check.section, False, tolerance, None, "missing in the candidate"))
            continue
        position = index if check.candidate_names is None else check.candidate_names.index(name)
        refs = [sample[index] for sample in reference]
        cands = [sample[position] for sample in candidate]
        dtype, problem = _judged_dtype(check.declared, index, position, refs[0].dtype)
        tolerance = check.tolerance(name, dtype)
        problem = problem or next((p for r, c in zip(refs, cands) if (p := structural_problem(r, c))), "")
        if problem:
            results.append(OutputComparison(name, check.section, False, tolerance, None, problem))
            continue
        truth = _flat([sample[index] for sample in check.truth]) if check.truth is not None else None
        precision = check.precision or dtype
        results.append(judge_output(name, check.section, _flat(refs), _flat(cands), truth, tolerance, precision))
    return results


def _judged_dtype(declared: Declared | None, index: int, position: int, actual: np.dtype) -> tuple[np.dtype, str]:
    """The dtype an output is judged by (declared, else its arrays'), and a declared dtype mismatch or ''."""
    if declared is None:
        return actual, ""
    ours, theirs = declared[0][index], declared[1][position]
    if ours is not None and theirs is not None and ours != theirs:
        return ours, f"dtype {theirs} != reference {ours}"
    return (actual if ours is None else ours), ""


def _check_names(outputs: list[str], specs: list[InputSpec], settings: ValidationConfig) -> None:
    """A --tol for no output or a --dim for no symbolic dimension is a typo: say so rather than ignore it."""
    unknown = sorted(set(settings.tolerances) - set(outputs))
    if unknown:
        raise NormfoldError(
            f"--tol names no output of the model: {', '.join(unknown)} (outputs: {', '.join(outputs)})",
            exit_code=EXIT_USAGE,
        )
    symbolic = {d for spec in specs for d in spec.shape if isinstance(d, str)}
    stray = sorted(set(settings.dims) - symbolic)
    if stray:
        known = ", ".join(sorted(symbolic)) or "none"
        raise NormfoldError(
            f"--dim names no symbolic input dimension: {', '.join(stray)} (symbolic dimensions: {known})",
            exit_code=EXIT_USAGE,
        )


def _check_same_inputs(specs: list[InputSpec], other: list[InputSpec], candidate: Path) -> None:
    ours = {s.name: s.dtype for s in specs}
    theirs = {s.name: s.dtype for s in other}
    if ours != theirs:
        raise NormfoldError(f"{candidate}: graph inputs {sorted(theirs)} differ from the reference's {sorted(ours)}")


def _feeds(
    specs: list[InputSpec], expected: str | os.PathLike[str] | None, settings: ValidationConfig
) -> tuple[Feeds, Outputs | None, str]:
    """Inputs for every sample, stored outputs if any, and a description of where inputs came from."""
    if expected is not None:
        feeds, stored = load_test_data_sets(Path(expected), specs)
        if stored is None:
            raise NormfoldError(f"{expected}: no output_*.pb files to compare against")
        return feeds, stored, str(expected)
    inputs = settings.inputs
    if isinstance(inputs, list):
        return inputs, None, "the caller"
    if inputs is not None:
        path = Path(inputs)
        if is_folder(path):
            return load_test_data_sets(path, specs)[0], None, str(path)
        return load_npz_inputs(path, specs, settings.dims, settings.memory_budget), None, str(path)
    feeds = random_inputs(
        specs, dims=settings.dims, samples=settings.samples, seed=settings.seed, memory_budget=settings.memory_budget
    )
    return feeds, None, f"random inputs (seed {settings.seed})"


def _tolerance_for(settings: ValidationConfig, half: bool = False) -> ToleranceFor:
    """Per output: --tol, else --atol/--rtol over the dtype's default (float16's when `half`)."""
    overrides: Mapping[str, Tolerance] = settings.tolerances

    def pick(name: str, dtype: np.dtype) -> Tolerance:
        if name in overrides:
            return dataclasses.replace(overrides[name], explicit=True)
        base = default_tolerance(np.dtype(np.float16) if half and is_float(dtype) else dtype)
        chosen = settings.atol is not None or settings.rtol is not None
        return Tolerance(
            base.atol if settings.atol is None else settings.atol,
            base.rtol if settings.rtol is None else settings.rtol,
            explicit=chosen,
        )

    return pick


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]) if len(arrays) > 1 else arrays[0]
