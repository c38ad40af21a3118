"""normfold.validate and `normfold validate`: verdicts, figures, tolerances, inputs, exit codes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import break_folds_gemm_bias
from click.testing import CliRunner
from examples import MODELS, shipped_and_folded
from gpu_probe import cuda_usable
from onnx import numpy_helper

from normfold import NormfoldError, fold, save_model
from normfold.cli import main
from normfold.validate import Tolerance, validate

CUDA_REASON = cuda_usable()


def _perturbed(source: Path, target: Path, name_prefix: str, delta: float) -> Path:
    model = onnx.load(source)
    for tensor in model.graph.initializer:
        if tensor.name.startswith(name_prefix):
            array = numpy_helper.to_array(tensor).copy()
            array.flat[0] += delta
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
            break
    onnx.save(model, target)
    return target


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="normfold")


def test_fold_of_resnet_passes_with_float64_columns(resnet: tuple[Path, Path]) -> None:
    report = validate(*resnet, providers=["cpu"], samples=2)
    assert report.passed and report.return_code == 0
    (comparison,) = report.comparisons
    assert comparison.output == "logits" and comparison.section == "cpu"
    assert comparison.metrics is not None and comparison.metrics.max_abs < 1e-4
    assert comparison.reference_vs_float64 is not None and comparison.candidate_vs_float64 is not None
    assert comparison.candidate_vs_float64 <= 2 * comparison.reference_vs_float64 + 1e-6
    assert comparison.to_line().startswith("PASSED | output 'logits' | cpu | max abs ")
    assert report.lines()[-1] == "PASSED: equivalent"
    assert report.samples == 2 and report.providers == ["cpu"]


def test_wrong_candidate_fails_and_names_the_output(resnet: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = resnet
    broken = _perturbed(target, tmp_path / "broken.onnx", "fc_b", 0.5)
    report = validate(source, broken, providers=["cpu"])
    assert not report.passed and report.return_code == 1
    (failure,) = report.failures
    assert failure.metrics is not None and 0.49 < failure.metrics.max_abs < 0.51
    assert failure.to_line().startswith("FAILED | output 'logits' | cpu | max abs 0.5")
    assert report.lines()[-1] == "FAILED: 1 of 1 output comparison(s) differ"


def test_cli_exit_codes_and_json(resnet: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = resnet
    ok = invoke("validate", source, target, "--provider", "cpu", "--json")
    assert ok.exit_code == 0, ok.output
    document = json.loads(ok.stdout)
    assert set(document) == {
        "normfold_report",
        "version",
        "reference",
        "candidate",
        "providers",
        "notes",
        "samples",
        "inputs",
        "passed",
        "return_code",
        "outputs",
        "config",
    }
    assert document["config"]["providers"] == ["cpu"] and document["config"]["float64_budget"] == 2 << 30
    assert document["normfold_report"] == "validate" and document["version"] == 1 and document["passed"] is True
    assert document["return_code"] == 0 and document["providers"] == ["cpu"] and document["samples"] == 1
    (entry,) = document["outputs"]
    assert set(entry) == {
        "output",
        "section",
        "passed",
        "status",
        "tolerance",
        "metrics",
        "problem",
        "reference_vs_float64",
        "candidate_vs_float64",
        "atol_in_force",
        "basis",
        "reference_vs_float64_histogram",
        "candidate_vs_float64_histogram",
    }
    assert entry["basis"] == "rounding" and entry["atol_in_force"] > 0
    assert set(entry["metrics"]) == {
        "max_abs",
        "max_rel",
        "scale",
        "mean_abs",
        "median_abs",
        "eps_units",
        "violations",
        "nan_mismatch",
        "inf_mismatch",
        "histogram",
    }
    assert entry["tolerance"] == {"atol": None, "rtol": 1e-4, "explicit": False}
    assert document["outputs"][0]["output"] == "logits" and document["outputs"][0]["status"] == "passed"
    broken = _perturbed(target, tmp_path / "broken.onnx", "fc_b", 0.5)
    bad = invoke("validate", source, broken, "--provider", "cpu")
    assert bad.exit_code == 1
    assert "\nFAILED 'logits' on cpu | max abs 0.5 | atol " in bad.stdout
    missing = invoke("validate", source, tmp_path / "nope.onnx", "--provider", "cpu")
    assert (
        missing.exit_code == 3 and missing.stderr.strip() == f"normfold: error: {tmp_path / 'nope.onnx'}: no such file"
    )
    usage = invoke("validate", source, target, "--tol", "logits=abc")
    assert usage.exit_code == 2
    assert (
        usage.stderr.strip()
        == "normfold: error: --tol 'logits=abc': expected NAME=ATOL,RTOL with finite non-negative numbers"
    )


def test_tolerances_decide_the_verdict(resnet: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = resnet
    broken = _perturbed(target, tmp_path / "broken.onnx", "fc_b", 1e-3)
    assert not validate(source, broken, providers=["cpu"]).passed
    assert validate(source, broken, providers=["cpu"], atol=2e-3).passed
    assert validate(source, broken, providers=["cpu"], tolerances={"logits": Tolerance(2e-3, 0.0)}).passed
    strict = validate(source, target, providers=["cpu"], tolerances={"logits": Tolerance(0.0, 0.0)})
    assert strict.comparisons[0].tolerance == Tolerance(0.0, 0.0)


def test_structural_mismatches_fail(tmp_path: Path, resnet: tuple[Path, Path]) -> None:
    source, _ = resnet
    model = onnx.load(source)
    model.graph.output[0].name = "renamed"
    model.graph.node[-1].output[0] = "renamed"
    onnx.save(model, tmp_path / "renamed.onnx")
    report = validate(source, tmp_path / "renamed.onnx", providers=["cpu"])
    assert report.comparisons[0].to_line() == "FAILED | output 'logits' | cpu | missing in the candidate"


def test_different_graph_inputs_are_unusable(tmp_path: Path, resnet: tuple[Path, Path]) -> None:
    source, _ = resnet
    other = tmp_path / "mlp.onnx"
    shutil.copy(MODELS / "mlp.onnx", other)
    with pytest.raises(NormfoldError, match=r"graph inputs \['features'\] differ from the reference's \['input'\]"):
        validate(source, other, providers=["cpu"])


def test_expected_outputs_in_test_data_set_layout(
    resnet: tuple[Path, Path], expected_set: tuple[Path, np.ndarray]
) -> None:
    _, target = resnet
    folder, y = expected_set
    good = invoke("validate", target, "--expected", folder, "--provider", "cpu")
    assert good.exit_code == 0, good.output
    assert "\nPASSED 'logits' on cpu vs expected | max abs " in good.stdout
    (folder / "output_0.pb").write_bytes(numpy_helper.from_array(y + 0.1, "logits").SerializeToString())
    assert invoke("validate", target, "--expected", folder, "--provider", "cpu").exit_code == 1


def test_npz_inputs_with_several_samples(tmp_path: Path, resnet: tuple[Path, Path]) -> None:
    source, target = resnet
    data = tmp_path / "data.npz"
    np.savez(data, input=np.random.default_rng(2).standard_normal((3, 1, 3, 32, 32)).astype(np.float32))
    report = validate(source, target, providers=["cpu"], inputs=data)
    assert report.passed and report.samples == 3 and report.inputs == str(data)


def test_symbolic_dims_and_optimization_levels(resnet: tuple[Path, Path]) -> None:
    for level in ("disable", "basic", "all"):
        assert validate(*resnet, providers=["cpu"], dims={"batch": 5}, opt_level=level).passed


@pytest.mark.skipif(not CUDA_REASON, reason="CUDA runs here, so the missing-CUDA error path cannot be exercised")
def test_cuda_requested_but_unusable_is_an_error_not_a_fallback(resnet: tuple[Path, Path]) -> None:
    result = invoke("validate", *resnet, "--provider", "cuda")
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert line.startswith("normfold: error: CUDAExecutionProvider was requested but does not run here: ")
    assert "\n" not in line and "Traceback" not in result.output


@pytest.mark.skipif(not CUDA_REASON, reason="CUDA runs here: auto picks CUDA")
def test_auto_falls_back_to_cpu_and_says_why(resnet: tuple[Path, Path]) -> None:
    report = validate(*resnet)
    assert report.providers == ["cpu"]
    assert report.notes[0].startswith("auto: CPU, ")


def test_fold_refuses_to_write_a_model_that_fails_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "resnet.onnx"
    shutil.copy(MODELS / "resnet_block.onnx", source)
    break_folds_gemm_bias(monkeypatch)
    result = invoke("fold", source, "--provider", "cpu")
    assert result.exit_code == 1
    assert "validate: FAILED 'logits' on cpu | max abs " in result.stdout
    assert result.stderr.startswith("normfold: error: the folded model differs from")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet.onnx"]


def test_fold_validates_by_default_and_reports_it(tmp_path: Path) -> None:
    source = tmp_path / "mlp.onnx"
    shutil.copy(MODELS / "mlp.onnx", source)
    result = invoke("fold", source, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert "validate: PASSED 'scores' on cpu | max abs " in result.stdout
    assert "validate: PASSED: equivalent" in result.stdout
    verbose = invoke("fold", source, "--provider", "cpu", "-v").stdout
    assert "validate: PASSED | output 'scores' | cpu | max abs " in verbose and " | max rel " in verbose
    skipped = invoke("fold", source, "--no-validate", "-o", tmp_path / "other.onnx")
    assert skipped.exit_code == 0 and "validate:" not in skipped.stdout


@pytest.mark.gpu
@pytest.mark.skipif(bool(CUDA_REASON), reason=f"CUDA is not usable here: {CUDA_REASON}")
@pytest.mark.parametrize(
    "name", ["resnet_block.onnx", "mlp.onnx", "torchvision_resnet_eval.onnx", "torchvision_mobilenetv3_eval.onnx"]
)
def test_cuda_fp32_comparison_on_shipped_models(tmp_path: Path, name: str) -> None:
    source, target = shipped_and_folded(tmp_path, name)
    report = validate(source, target, providers=["cuda"], cross_provider=True)
    assert report.providers == ["cuda"]
    assert report.passed, "\n".join(report.lines())
    assert any("cuda candidate vs cpu reference" == c.section for c in report.comparisons)


def test_random_nodes_are_seeded_identically_so_training_models_compare(tmp_path: Path) -> None:
    source = tmp_path / "training.onnx"
    shutil.copy(MODELS / "training_export.onnx", source)
    report = validate(source, source, providers=["cpu"], samples=2)
    assert report.passed and report.reference == str(source)
    assert report.notes[-1] == "random nodes seeded identically in both models: Dropout 'dropout14' in training mode"
    assert report.comparisons[0].metrics is not None and report.comparisons[0].metrics.max_abs == 0.0
    folded = invoke("fold", source, "--provider", "cpu")
    assert folded.exit_code == 0, folded.output
    assert "validate: PASSED: equivalent" in folded.stdout


@pytest.mark.parametrize("provider", ["cpu", "reference"])
def test_random_node_missing_from_candidate_is_not_comparable(tmp_path: Path, provider: str) -> None:
    source = tmp_path / "training.onnx"
    shutil.copy(MODELS / "training_export.onnx", source)
    model = onnx.load(source)
    next(n for n in model.graph.node if n.op_type == "Dropout").name = "renamed"
    onnx.save(model, tmp_path / "renamed.onnx")
    result = invoke("validate", source, tmp_path / "renamed.onnx", "--provider", provider)
    assert result.exit_code == 3
    assert result.stderr.strip().endswith(
        "has no node matching the reference's random node(s) dropout14, so their random values cannot be made equal"
    )
    assert invoke("validate", source, "--expected", tmp_path, "--provider", provider).exit_code == 3


def test_fp16_deployment_path_is_compared_at_float16_tolerance(resnet: tuple[Path, Path]) -> None:
    report = validate(*resnet, providers=["cpu"], fp16=True)
    sections = [c.section for c in report.comparisons]
    assert sections == ["cpu", "cpu fp16"]
    half = report.comparisons[1]
    assert half.passed and half.tolerance.rtol == 1e-2
    assert half.metrics is not None and 1e-5 < half.metrics.max_abs < 1e-2
    assert half.metrics.eps_units < 10


def test_float64_reference_runs_within_its_budget(resnet: tuple[Path, Path]) -> None:
    report = validate(*resnet, providers=["cpu"], float64_budget=1000)
    assert report.comparisons[0].candidate_vs_float64 is None and report.comparisons[0].basis == "output scale"
    assert report.notes[-1] == (
        "float64 reference not run: needs 393 KiB of float64 tensors alive at once, over "
        "the 1000 B budget (--float64-budget); outputs are judged against rtol x max|ref| "
        "instead"
    )
    forced = validate(*resnet, providers=["cpu"], float64=True, float64_budget=1000)
    assert forced.comparisons[0].candidate_vs_float64 is not None


def test_float64_reference_runs_within_its_flops_budget(resnet: tuple[Path, Path]) -> None:
    report = validate(*resnet, providers=["cpu"], float64_flops=1e3)
    assert report.passed and report.comparisons[0].basis == "output scale"
    assert report.notes[-1] == (
        "float64 reference not run: needs 1.77e+07 floating-point operations in float64, "
        "over the budget of 1e+03 (--float64-flops); outputs are judged against rtol x "
        "max|ref| instead"
    )
    forced = validate(*resnet, providers=["cpu"], float64=True, float64_flops=1e3)
    assert forced.comparisons[0].candidate_vs_float64 is not None


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_a_flops_budget_that_is_not_a_positive_number_is_a_usage_error(resnet: tuple[Path, Path], value: str) -> None:
    from click.testing import CliRunner

    from normfold.cli import main

    result = CliRunner().invoke(main, ["validate", *map(str, resnet), "--float64-flops", value])
    assert result.exit_code == 2
    assert result.stderr == f"normfold: error: --float64-flops must be a finite number > 0, got {float(value):g}\n"


@pytest.mark.gpu
@pytest.mark.skipif(bool(CUDA_REASON), reason=f"CUDA is not usable here: {CUDA_REASON}")
@pytest.mark.parametrize("name", ["resnet_block.onnx", "torchvision_mobilenetv3_eval.onnx"])
def test_cuda_fp16_comparison_on_shipped_models(tmp_path: Path, name: str) -> None:
    source, target = shipped_and_folded(tmp_path, name)
    report = validate(source, target, providers=["cuda"], fp16=True)
    assert [c.section for c in report.comparisons] == ["cuda", "cuda fp16"]
    assert report.passed, "\n".join(report.lines())


@pytest.mark.gpu
@pytest.mark.skipif(bool(CUDA_REASON), reason=f"CUDA is not usable here: {CUDA_REASON}")
def test_cuda_session_really_runs_on_cuda(tmp_path: Path) -> None:
    from normfold.validate.providers import open_session

    source = tmp_path / "mlp.onnx"
    shutil.copy(MODELS / "mlp.onnx", source)
    assert open_session(source, "cuda").get_providers()[0] == "CUDAExecutionProvider"
    assert validate(source, source).providers == ["cuda"]


@pytest.mark.parametrize("prefix", ["fc_w", "conv_w"])
def test_one_weight_changed_by_1e_3_fails_and_names_the_output(
    resnet: tuple[Path, Path], tmp_path: Path, prefix: str
) -> None:
    source, target = resnet
    broken = _perturbed(target if prefix == "fc_w" else source, tmp_path / "broken.onnx", prefix, 1e-3)
    result = invoke("validate", source, broken, "--provider", "cpu")
    assert result.exit_code == 1, result.output
    assert "\nFAILED 'logits' on cpu | max abs " in result.stdout
    assert result.stdout.splitlines()[-1] == "FAILED: 1 of 1 output comparison(s) differ"


SHIPPED = sorted(p.name for p in MODELS.glob("*.onnx") if ".folded." not in p.name)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_validates_against_its_fold_on_cpu(tmp_path: Path, name: str) -> None:
    source, target = shipped_and_folded(tmp_path, name)
    report = validate(source, target, providers=["cpu"], samples=2)
    assert report.passed, "\n".join(report.lines())
    seeded = any(note.startswith("random nodes seeded identically") for note in report.notes)
    for comparison in report.comparisons:
        assert (comparison.candidate_vs_float64 is None) == seeded, comparison.to_line()


def test_misspelled_tol_and_dim_names_are_usage_errors(resnet: tuple[Path, Path]) -> None:
    tol = invoke("validate", *resnet, "--provider", "cpu", "--tol", "logitz=0,0")
    assert tol.exit_code == 2
    assert tol.stderr.strip() == "normfold: error: --tol names no output of the model: logitz (outputs: logits)"
    dim = invoke("validate", *resnet, "--provider", "cpu", "--dim", "bacth=8")
    assert dim.exit_code == 2
    assert dim.stderr.strip() == (
        "normfold: error: --dim names no symbolic input dimension: bacth (symbolic dimensions: batch)"
    )


def test_float64_reference_is_right_for_opset_13_batchnorm(tmp_path: Path) -> None:
    """onnx's own BatchNormalization-9 kernel blends batch statistics; normfold's float64 kernel does not."""
    source, target = shipped_and_folded(tmp_path, "mlp.onnx")
    report = validate(source, target, providers=["cpu"])
    (comparison,) = report.comparisons
    assert comparison.reference_vs_float64 is not None and comparison.reference_vs_float64 < 1e-5
    model = onnx.load(target)
    weight = next(t for t in model.graph.initializer if t.name.startswith("fc3_w"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1 + 1e-4), weight.name))
    onnx.save(model, tmp_path / "scaled.onnx")
    scaled = validate(source, tmp_path / "scaled.onnx", providers=["cpu"], samples=4)
    assert not scaled.passed
    assert re.fullmatch(
        r"candidate is \d+x further from float64 than the reference \(rounding allows [0-9.e-]+\)",
        scaled.comparisons[0].problem,
    )


@pytest.mark.skipif(not CUDA_REASON, reason="CUDA runs here, so TensorRT may too")
def test_tensorrt_requested_but_unusable_is_an_error(resnet: tuple[Path, Path]) -> None:
    result = invoke("validate", *resnet, "--provider", "tensorrt")
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert line.startswith("normfold: error: TensorrtExecutionProvider ") and "\n" not in line


def test_two_folders_compare_pair_by_pair(tmp_path: Path) -> None:
    originals, folded = tmp_path / "orig", tmp_path / "folded"
    (originals / "sub").mkdir(parents=True)
    (folded / "sub").mkdir(parents=True)
    for name in ("mlp.onnx", "sub/resnet_block.onnx"):
        shutil.copy(MODELS / Path(name).name, originals / name)
        save_model(fold(originals / name).model, folded / name)
    shutil.copy(MODELS / "mlp.onnx", originals / "orphan.onnx")
    result = invoke("validate", originals, folded, "--provider", "cpu", "-j", "2", "-v")
    assert result.exit_code == 3, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"PASSED    {originals / 'mlp.onnx'} -> {folded / 'mlp.onnx'}: 1 output comparison(s) on cpu"
    )
    assert (
        lines[1]
        == f"UNUSABLE  {originals / 'orphan.onnx'} -> {folded / 'orphan.onnx'}: {folded / 'orphan.onnx'}: no such file"
    )
    assert lines[2].startswith(f"PASSED    {originals / 'sub' / 'resnet_block.onnx'}")
    assert lines[-1] == "2 of 3 pair(s) equivalent"
    (originals / "orphan.onnx").unlink()
    document = json.loads(invoke("validate", originals, folded, "--provider", "cpu", "--json").stdout)
    assert document["normfold_report"] == "validate-batch" and document["exit_code"] == 0
    assert invoke("validate", originals, "--provider", "cpu").exit_code == 2
