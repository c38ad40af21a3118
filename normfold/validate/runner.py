"""`normfold.validate`: run reference and candidate on the same inputs and compare every output."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from normfold.errors import EXIT_USAGE, NormfoldError, describe
from normfold.io import read_model_proto
from normfold.validate.compare import (
    Tolerance, at_rounding_level, compare_arrays, default_tolerance, is_float, max_abs_error,
)
from normfold.validate.float64 import run_float64
from normfold.validate.fp16 import float16_copy
from normfold.validate.inputs import (
    DEFAULT_MEMORY_BUDGET, InputSpec, input_specs, load_npz_inputs, load_test_data_sets, random_inputs,
)
from normfold.validate.providers import REFERENCE, REFERENCE_LABEL, ProviderChoice, open_session, resolve_providers
from normfold.validate.reference_runner import declared_dtypes, run_reference, widen
from normfold.validate.report import OutputComparison, ValidationReport
from normfold.validate.stochastic import NotComparableError, pin_seeds, random_nodes

Feeds = list[dict[str, np.ndarray]]
FLOAT64_AUTO_LIMIT = 256 * 2**20

Outputs = list[list[np.ndarray]]
Declared = tuple[list[np.dtype | None], list[np.dtype | None]]


def validate(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str] | None = None,
    *,
    providers: Sequence[str] = ("auto",),
    opt_level: str = "disable",
    dims: Mapping[str, int] | None = None,
    inputs: str | os.PathLike[str] | Feeds | None = None,
    samples: int = 1,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    expected: str | os.PathLike[str] | None = None,
    float64: bool | None = None,
    cross_provider: bool = False,
    fp16: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> ValidationReport:
    """Compare `candidate` with `reference` (or `reference` with the outputs stored in `expected`).

    Both run on each provider at `opt_level` (ORT_DISABLE_ALL by default, so ONNX Runtime's own
    fusions are not what is tested). Models are given to ONNX Runtime as files, never as bytes.
    With `fp16`, both are also converted to float16 and compared on each provider, as deployed.
    The float64 reference runs when `float64` is True, or (None) when the model is at most
    FLOAT64_AUTO_LIMIT bytes: onnx's reference evaluator holds a float64 copy of every weight.
    The provider `reference` runs both models on that evaluator instead of ONNX Runtime (for dtypes
    such as bfloat16 that ONNX Runtime's CPU build cannot run); it takes no `cross_provider` or `fp16`.
    """
    if candidate is None and expected is None:
        raise NormfoldError("give a CANDIDATE model, or --expected DIR with stored outputs", exit_code=EXIT_USAGE)
    _check_reference_options(providers, cross_provider, fp16)
    reference, ref_proto = Path(reference), read_model_proto(reference)
    specs = input_specs(ref_proto)
    cand_proto = None
    if candidate is not None:
        candidate, cand_proto = Path(candidate), read_model_proto(candidate)
        _check_same_inputs(specs, input_specs(cand_proto), candidate)
    with tempfile.TemporaryDirectory(prefix="normfold-seeded-") as staging:
        randoms = random_nodes(ref_proto)
        notes = []
        if randoms:
            if candidate is None:
                raise NotComparableError(
                    f"{reference} samples random values at run time ({', '.join(list(randoms.values())[:3])}), "
                    "so stored outputs cannot be reproduced"
                )
        labels = (str(reference), str(candidate if candidate is not None else expected))
        if randoms:
            reference, candidate = _seeded_pair(reference, candidate, set(randoms), Path(staging))
            notes.append(f"random nodes seeded identically in both models: {', '.join(randoms.values())}")
            float64 = False
        report = _validate_files(
            reference, candidate, ref_proto, cand_proto, specs, notes, providers=providers, opt_level=opt_level,
            dims=dims, inputs=inputs, samples=samples, seed=seed, atol=atol, rtol=rtol, tolerances=tolerances,
            expected=expected, float64=float64, cross_provider=cross_provider, fp16=fp16, memory_budget=memory_budget,
        )
    report.reference, report.candidate = labels
    return report


def _seeded_pair(reference: Path, candidate: Path, keys: set[str], folder: Path) -> tuple[Path, Path]:
    (folder / "reference").mkdir()
    (folder / "candidate").mkdir()
    return pin_seeds(reference, keys, folder / "reference"), pin_seeds(candidate, keys, folder / "candidate")


def _validate_files(reference, candidate, ref_proto, cand_proto, specs, notes, *, providers, opt_level, dims, inputs,
                    samples, seed, atol, rtol, tolerances, expected, float64, cross_provider, fp16,
                    memory_budget) -> ValidationReport:
    """The comparisons proper, on model files ready to run."""
    names = [o.name for o in ref_proto.graph.output]
    _check_names(names, specs, tolerances or {}, dims or {})
    feeds, stored, source = _feeds(specs, inputs, expected, dims, samples, seed, memory_budget)
    empty = sorted({name for feed in feeds for name, array in feed.items() if array.size == 0})
    if empty:
        raise NormfoldError(f"input(s) {', '.join(empty)} hold no values, so nothing would be compared")
    choices = resolve_providers(tuple(providers), reference)
    notes = [c.note for c in choices if c.note] + notes
    size = _model_bytes(reference, ref_proto)
    if all(c.key == REFERENCE for c in choices):
        float64 = False  # the float64 columns measure ONNX Runtime; the reference evaluator is float64 already
    elif float64 is None and size > FLOAT64_AUTO_LIMIT:
        notes.append(f"float64 reference skipped: the model holds {size / 2**20:.0f} MiB "
                     f"(automatic up to {FLOAT64_AUTO_LIMIT // 2**20} MiB); --float64 forces it")
        float64 = False
    exact = _float64_outputs(reference, feeds) if float64 is not False else None
    if float64 is not False and exact is None:
        notes.append("float64 reference unavailable: onnx's reference evaluator cannot run this model")
    tol = _tolerance_for(atol, rtol, tolerances or {})
    comparisons: list[OutputComparison] = []
    cpu_reference: Outputs | None = None
    for choice in choices:
        if choice.key == REFERENCE:
            comparisons += _on_reference(reference, candidate, ref_proto, cand_proto, names, stored, feeds, tol)
            continue
        ref_out = _run(reference, choice, opt_level, feeds)
        if choice.key == "cpu":
            cpu_reference = ref_out
        if stored is not None:
            comparisons += _compare(names, stored, ref_out, f"{choice.key} vs expected", tol, None, None)
        if candidate is not None:
            cand_out = _run(candidate, choice, opt_level, feeds)
            comparisons += _compare(names, ref_out, cand_out, choice.key, tol, exact, _output_names(cand_proto))
    if fp16 and candidate is not None:
        comparisons += _float16(reference, candidate, choices, names, opt_level, feeds, tolerances or {}, atol, rtol,
                                exact, cand_proto)
    if cross_provider and candidate is not None:
        comparisons += _cross(reference, candidate, choices, cpu_reference, names, opt_level, feeds, tol, exact, cand_proto)
    return ValidationReport(
        str(reference), str(candidate if candidate is not None else expected), [c.label for c in choices], notes,
        len(feeds), source, comparisons,
    )


def _check_names(outputs: list[str], specs: list[InputSpec], tolerances: Mapping[str, Tolerance],
                 dims: Mapping[str, int]) -> None:
    """A --tol for no output or a --dim for no symbolic dimension is a typo: say so rather than ignore it."""
    unknown = sorted(set(tolerances) - set(outputs))
    if unknown:
        raise NormfoldError(f"--tol names no output of the model: {', '.join(unknown)} (outputs: {', '.join(outputs)})",
                            exit_code=EXIT_USAGE)
    symbolic = {d for spec in specs for d in spec.shape if isinstance(d, str)}
    stray = sorted(set(dims) - symbolic)
    if stray:
        known = ", ".join(sorted(symbolic)) or "none"
        raise NormfoldError(f"--dim names no symbolic input dimension: {', '.join(stray)} (symbolic dimensions: {known})",
                            exit_code=EXIT_USAGE)


def _check_reference_options(providers: Sequence[str], cross_provider: bool, fp16: bool) -> None:
    """--cross-provider and --fp16 are ONNX Runtime comparisons: with --provider reference they mean nothing."""
    if REFERENCE not in providers:
        return
    if cross_provider:
        raise NormfoldError("--cross-provider compares ONNX Runtime's GPU providers with its CPU one; "
                            "it does not combine with --provider reference", exit_code=EXIT_USAGE)
    if fp16:
        raise NormfoldError("--fp16 runs float16 copies of the models on ONNX Runtime; it does not combine with "
                            "--provider reference, which widens every float tensor to float64", exit_code=EXIT_USAGE)


def _check_same_inputs(specs: list[InputSpec], other: list[InputSpec], candidate: Path) -> None:
    ours = {s.name: s.dtype for s in specs}
    theirs = {s.name: s.dtype for s in other}
    if ours != theirs:
        raise NormfoldError(f"{candidate}: graph inputs {sorted(theirs)} differ from the reference's {sorted(ours)}")


def _feeds(specs, inputs, expected, dims, samples, seed, budget) -> tuple[Feeds, Outputs | None, str]:
    """Inputs for every sample, stored outputs if any, and a description of where inputs came from."""
    if expected is not None:
        feeds, stored = load_test_data_sets(Path(expected), specs)
        if stored is None:
            raise NormfoldError(f"{expected}: no output_*.pb files to compare against")
        return feeds, stored, str(expected)
    if isinstance(inputs, list):
        return inputs, None, "the caller"
    if inputs is not None:
        path = Path(inputs)
        if path.is_dir():
            feeds, _ = load_test_data_sets(path, specs)
            return feeds, None, str(path)
        return load_npz_inputs(path, specs, dims), None, str(path)
    return random_inputs(specs, dims=dims, samples=samples, seed=seed, memory_budget=budget), None, f"random inputs (seed {seed})"


def _tolerance_for(atol: float | None, rtol: float | None, overrides: Mapping[str, Tolerance], half: bool = False):
    """Per-output tolerance: --tol, else --atol/--rtol over the dtype's default (float16's when `half`)."""
    def pick(name: str, dtype: np.dtype) -> Tolerance:
        if name in overrides:
            return dataclasses.replace(overrides[name], explicit=True)
        base = default_tolerance(np.dtype(np.float16) if half and is_float(dtype) else dtype)
        chosen = atol is not None or rtol is not None
        return Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol, explicit=chosen)


    return pick


def _run(path: Path, choice: ProviderChoice, opt_level: str, feeds: Feeds) -> Outputs:
    session = open_session(path, choice.key, opt_level, suggest_reference=True)
    try:
        return [session.run(None, feed) for feed in feeds]
    except Exception as error:
        raise NormfoldError(f"{path}: ONNX Runtime failed on {choice.key}: {describe(error, 300)} "
                            "(--no-validate skips validation)") from None


def _output_names(proto: onnx.ModelProto | None) -> list[str] | None:
    return None if proto is None else [o.name for o in proto.graph.output]


def _compare(names, reference: Outputs, candidate: Outputs, section: str, tol, exact: Outputs | None,
             candidate_names: list[str] | None, precision: np.dtype | None = None,
             declared: Declared | None = None) -> list[OutputComparison]:
    """One comparison per output over all samples (figures over the concatenated samples).

    `declared`: the output dtypes the two sides declare, when their arrays are float64 evaluations
    (the reference provider); tolerances, eps units and the dtype check then follow those.
    """
    results = []
    for index, name in enumerate(names):
        if candidate_names is not None and name not in candidate_names:
            results.append(OutputComparison(name, section, False, tol(name, np.dtype(np.float32)), None, "missing in the candidate"))
            continue
        position = index if candidate_names is None else candidate_names.index(name)
        refs = [sample[index] for sample in reference]
        cands = [sample[position] for sample in candidate]
        dtype, problem = _judged_dtype(declared, index, position, refs[0].dtype)
        tolerance = tol(name, dtype)
        problem = problem or next((p for r, c in zip(refs, cands) if (p := compare_arrays(r, c, tolerance)[1])), "")
        if problem:
            results.append(OutputComparison(name, section, False, tolerance, None, problem))
            continue
        metrics, _ = compare_arrays(_flat(refs), _flat(cands), tolerance, precision if declared is None else dtype)
        assert metrics is not None
        passed = metrics.violations == 0 and metrics.nan_mismatch == 0 and metrics.inf_mismatch == 0
        ref_f64 = cand_f64 = None
        problem = ""
        if exact is not None and is_float(refs[0].dtype):
            truth = _flat([sample[index] for sample in exact])
            ref_f64, cand_f64 = max_abs_error(_flat(refs), truth), max_abs_error(_flat(cands), truth)
            if not tolerance.explicit and not at_rounding_level(ref_f64, cand_f64, metrics.scale, precision or refs[0].dtype):
                passed = False
                problem = f"candidate is {cand_f64 / max(ref_f64, 1e-300):.3g}x further from float64 than the reference"
        results.append(OutputComparison(name, section, passed, tolerance, metrics, problem, ref_f64, cand_f64))
    return results


def _judged_dtype(declared: Declared | None, index: int, position: int, actual: np.dtype) -> tuple[np.dtype, str]:
    """The dtype an output is judged by (declared, else its arrays'), and a declared dtype mismatch or ''."""
    if declared is None:
        return actual, ""
    ours, theirs = declared[0][index], declared[1][position]
    if ours is not None and theirs is not None and ours != theirs:
        return ours, f"dtype {theirs} != reference {ours}"
    return (actual if ours is None else ours), ""


def _on_reference(reference: Path, candidate: Path | None, ref_proto, cand_proto, names, stored: Outputs | None,
                  feeds: Feeds, tol) -> list[OutputComparison]:
    """Both models (or the reference and the stored outputs) on onnx's evaluator in float64."""
    ref_out = run_reference(reference, feeds)
    ref_types = declared_dtypes(ref_proto)
    results = []
    if stored is not None:
        stored_types: list[np.dtype | None] = [a.dtype for a in stored[0]]
        results += _compare(names, [widen(s) for s in stored], ref_out, f"{REFERENCE_LABEL} vs expected", tol, None,
                            None, declared=(stored_types, ref_types))
    if candidate is not None:
        cand_out = run_reference(candidate, feeds)
        results += _compare(names, ref_out, cand_out, REFERENCE_LABEL, tol, None, _output_names(cand_proto),
                            declared=(ref_types, declared_dtypes(cand_proto)))
    return results


def _cross(reference, candidate, choices, cpu_reference, names, opt_level, feeds, tol, exact, cand_proto):
    """Candidate on each GPU provider against the reference on CPU: provider drift, reported apart."""
    if cpu_reference is None:
        cpu_reference = _run(reference, ProviderChoice("cpu"), opt_level, feeds)
    results = []
    for choice in choices:
        if choice.key == "cpu":
            continue
        cand_out = _run(candidate, choice, opt_level, feeds)
        results += _compare(names, cpu_reference, cand_out, f"{choice.key} candidate vs cpu reference", tol, exact,
                            _output_names(cand_proto))
    return results


def _float16(reference, candidate, choices, names, opt_level, feeds, overrides, atol, rtol, exact, cand_proto):
    """Both models converted to float16 (float32 inputs/outputs), compared at float16 tolerances."""
    tol = _tolerance_for(atol, rtol, overrides, half=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="normfold-fp16-") as folder:
        (Path(folder) / "reference").mkdir()
        (Path(folder) / "candidate").mkdir()
        ref16 = float16_copy(reference, Path(folder) / "reference")
        cand16 = float16_copy(candidate, Path(folder) / "candidate")
        for choice in choices:
            ref_out = _run(ref16, choice, opt_level, feeds)
            cand_out = _run(cand16, choice, opt_level, feeds)
            results += _compare(names, ref_out, cand_out, f"{choice.key} fp16", tol, exact, _output_names(cand_proto),
                                np.dtype(np.float16))
    return results


def _float64_outputs(reference: Path, feeds: Feeds) -> Outputs | None:
    """The reference model's float64 outputs per sample, or None if the evaluator cannot run it."""
    try:
        proto = onnx.load(str(reference))
        return [run_float64(proto, feed) for feed in feeds]
    except Exception:  # unsupported op or dtype in the reference evaluator: the column is left out
        return None


def _model_bytes(path: Path, proto: onnx.ModelProto) -> int:
    """The model file plus every external data file it reads."""
    files = {path.parent / onnx.external_data_helper.ExternalDataInfo(t).location
             for t in onnx.external_data_helper._get_all_tensors(proto)
             if onnx.external_data_helper.uses_external_data(t)}
    return path.stat().st_size + sum(f.stat().st_size for f in files if f.is_file())


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]) if len(arrays) > 1 else arrays[0]
