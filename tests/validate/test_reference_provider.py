"""--provider reference: both models on onnx's reference evaluator in float64 (bfloat16 models above all)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from examples import MODELS
from graphs import bn_node, bn_params, make_model, rng
from onnx import TensorProto, helper, numpy_helper

from normfold import NormfoldError, fold, save_model
from normfold.cli import main
from normfold.validate import validate
from normfold.validate.reference_runner import run_reference

LABEL = "onnx-reference (float64)"
NOTE = (
    f"{LABEL}: onnx's reference evaluator runs both models with every float tensor widened exactly to float64; "
    "tolerances follow each output's declared dtype"
)
HINT = (
    "(--no-validate skips validation; --provider reference validates on onnx's reference evaluator in float64 instead)"
)
BF16 = ml_dtypes.bfloat16


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="normfold")


def _scaled(source: Path, target: Path, prefix: str, factor: float) -> Path:
    """A copy of `source` whose first initializer named `prefix...` is multiplied by `factor` (in its dtype)."""
    model = onnx.load(source)
    tensor = next(t for t in model.graph.initializer if t.name.startswith(prefix))
    array = numpy_helper.to_array(tensor)
    tensor.CopyFrom(numpy_helper.from_array((array.astype(np.float64) * factor).astype(array.dtype), tensor.name))
    onnx.save(model, target)
    return target


def _bf16_model(kind: str, opset: int) -> onnx.ModelProto:
    """A bfloat16 layer (grouped for the convolutions) followed by BatchNormalization and Relu."""
    g = rng(7)
    if kind in ("Conv", "ConvTranspose"):
        shape = (6, 2, 3, 3) if kind == "Conv" else (4, 3, 3, 3)  # group 2: 4 -> 6 channels
        layer = helper.make_node(kind, ["x", "w", "b"], ["y"], name="layer", group=2, pads=[1, 1, 1, 1])
        x_shape: list[int | str] = ["batch", 4, 5, 5]
        inits = {"w": g.normal(0, 0.5, shape), "b": g.normal(0, 0.3, 6)}
    else:
        layer = helper.make_node(kind, ["x", "w"], ["y"], name="layer")
        x_shape, inits = ["batch", 4], {"w": g.normal(0, 0.5, (4, 6))}
    inits = {k: v.astype(BF16) for k, v in inits.items()} | bn_params("bn", 6, g, BF16)
    nodes = [layer, bn_node("y", "z", "bn"), helper.make_node("Relu", ["z"], ["out"], name="relu")]
    return make_model(nodes, {"x": x_shape}, ["out"], inits, opset=opset, dtype=TensorProto.BFLOAT16)


@pytest.fixture()
def bf16_conv(tmp_path: Path) -> tuple[Path, Path]:
    """A bfloat16 grouped Conv + BN + Relu at opset 22 and its fold by normfold.fold."""
    source = tmp_path / "conv_bf16.onnx"
    onnx.save(_bf16_model("Conv", 22), source)
    target = tmp_path / "conv_bf16.folded.onnx"
    save_model(fold(source).model, target)
    return source, target


def test_float32_fold_passes_on_the_reference_evaluator(resnet: tuple[Path, Path]) -> None:
    report = validate(*resnet, providers=["reference"], samples=2)
    assert report.passed and report.return_code == 0
    assert report.providers == [LABEL] and report.notes == [NOTE]
    (comparison,) = report.comparisons
    assert comparison.output == "logits" and comparison.section == LABEL
    assert comparison.tolerance.rtol == 1e-4  # the float32 output's default, not float64's 1e-9
    assert comparison.metrics is not None and 0 < comparison.metrics.max_abs < 1e-5
    assert comparison.reference_vs_float64 is None and comparison.candidate_vs_float64 is None
    assert comparison.to_line().startswith(f"PASSED | output 'logits' | {LABEL} | max abs ")
    assert report.lines()[-1] == "PASSED: equivalent"


def test_weight_changed_by_one_percent_fails_and_names_the_output(resnet: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = resnet
    broken = _scaled(target, tmp_path / "broken.onnx", "fc_w", 1.01)
    report = validate(source, broken, providers=["reference"])
    assert not report.passed and report.return_code == 1
    (failure,) = report.failures
    assert failure.to_line().startswith(f"FAILED | output 'logits' | {LABEL} | max abs ")
    assert "elements beyond tolerance" in failure.to_line()
    assert report.lines()[-1] == "FAILED: 1 of 1 output comparison(s) differ"


@pytest.mark.parametrize(("kind", "opset"), [("Conv", 22), ("ConvTranspose", 22), ("Gemm", 15), ("MatMul", 15)])
def test_bfloat16_fold_passes_on_reference_and_is_refused_by_ort_cpu(tmp_path: Path, kind: str, opset: int) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(_bf16_model(kind, opset), source)
    result = fold(source)
    assert [(r.op_type, r.action) for r in result.records] == [("BatchNormalization", "folded")]
    target = tmp_path / "f.onnx"
    save_model(result.model, target)
    report = validate(source, target, providers=["reference"], dims={"batch": 3}, samples=2)
    assert report.passed, "\n".join(report.lines())
    (comparison,) = report.comparisons
    assert comparison.tolerance.rtol == 5e-2 and comparison.metrics is not None
    assert 0 < comparison.metrics.max_abs < 5e-2 * comparison.metrics.scale  # bfloat16 rounding of folded weights
    with pytest.raises(NormfoldError) as refused:
        validate(source, target, providers=["cpu"], dims={"batch": 3})
    message = str(refused.value)
    assert message.startswith(f"{source}: ONNX Runtime cannot load the model: [ONNXRuntimeError] : 9 : NOT_IMPLEMENTED")
    assert message.endswith(HINT) and "\n" not in message and refused.value.exit_code == 3


def test_bfloat16_weight_off_by_a_fifth_fails_on_reference(bf16_conv: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = bf16_conv
    broken = _scaled(target, tmp_path / "broken.onnx", "w", 1.2)
    report = validate(source, broken, providers=["reference"])
    assert report.failures[0].to_line().startswith(f"FAILED | output 'out' | {LABEL} | max abs ")
    assert report.return_code == 1


def test_declared_output_dtype_still_counts_though_outputs_are_float64(
    bf16_conv: tuple[Path, Path], tmp_path: Path
) -> None:
    source, target = bf16_conv
    model = onnx.load(target)
    model.graph.node[-1].output[0] = "out_bf16"
    model.graph.node.append(helper.make_node("Cast", ["out_bf16"], ["out"], to=TensorProto.FLOAT))
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.save(model, tmp_path / "cast.onnx")
    report = validate(source, tmp_path / "cast.onnx", providers=["reference"])
    assert report.comparisons[0].to_line() == f"FAILED | output 'out' | {LABEL} | dtype float32 != reference bfloat16"


def test_cli_prints_the_provider_and_exits_0_or_1(bf16_conv: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = bf16_conv
    ok = invoke("validate", source, target, "--provider", "reference")
    assert ok.exit_code == 0, ok.output
    lines = ok.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines) and lines[1] == NOTE[: len(lines[1]) - 3] + "..."
    assert lines[2].startswith(f"PASSED 'out' on {LABEL} | max abs ") and lines[2].endswith(" rtol 0.05")
    assert lines[3:] == ["PASSED: equivalent"]
    ok = invoke("validate", source, target, "--provider", "reference", "-v")
    lines = ok.stdout.splitlines()
    assert (
        lines[0] == f"validate {target} against {source}: 1 sample(s) from random inputs (seed 0), provider(s) {LABEL}"
    )
    assert lines[1] == NOTE
    assert lines[2].startswith(f"PASSED | output 'out' | {LABEL} | max abs ") and lines[2].endswith("rtol 0.05")
    assert lines[3:] == ["PASSED: equivalent"]
    document = json.loads(invoke("validate", source, target, "--provider", "reference", "--json").stdout)
    assert document["providers"] == [LABEL] and document["outputs"][0]["section"] == LABEL
    assert document["outputs"][0]["tolerance"] == {"atol": None, "rtol": 0.05, "explicit": False}
    broken = _scaled(target, tmp_path / "broken.onnx", "w", 1.2)
    bad = invoke("validate", source, broken, "--provider", "reference")
    assert bad.exit_code == 1
    assert f"\nFAILED 'out' on {LABEL} | max abs " in bad.stdout
    assert bad.stdout.splitlines()[-1] == "FAILED: 1 of 1 output comparison(s) differ"


def test_auto_stays_on_onnx_runtime_and_its_error_hints_at_reference(bf16_conv: tuple[Path, Path]) -> None:
    source, target = bf16_conv
    result = invoke("validate", source, target)
    assert result.exit_code == 3 and result.stdout == ""
    line = result.stderr.strip()
    assert line.startswith(f"normfold: error: {source}: ONNX Runtime cannot load the model: ")
    assert "Could not find an implementation for Conv(22) node with name 'layer'" in line
    assert line.endswith(HINT) and "\n" not in line
    folded = invoke("fold", source, "-o", source.parent / "out.onnx")
    assert folded.exit_code == 3 and folded.stderr.strip().endswith(HINT)
    assert not (source.parent / "out.onnx").exists()
    on_reference = invoke("fold", source, "-o", source.parent / "out.onnx", "--provider", "reference")
    assert on_reference.exit_code == 0, on_reference.output
    assert f"validate: PASSED 'out' on {LABEL} | max abs " in on_reference.stdout
    assert (source.parent / "out.onnx").exists()


def test_ort_errors_not_about_kernels_get_no_hint(tmp_path: Path) -> None:
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in "xy"]
    graph = helper.make_graph(
        [helper.make_node("Foo", ["x"], ["y"], name="foo", domain="acme")], "g", info[:1], info[1:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("acme", 1)])
    model.ir_version = 8
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(NormfoldError) as refused:
        validate(path, path, providers=["cpu"])
    assert str(refused.value).startswith(f"{path}: ONNX Runtime cannot load the model: [ONNXRuntimeError] : 1 : FAIL")
    assert str(refused.value).endswith("acme:Foo(-1) is not a registered function/op (--no-validate skips validation)")


def test_cross_provider_and_fp16_do_not_combine_with_reference(resnet: tuple[Path, Path]) -> None:
    cross = invoke("validate", *resnet, "--provider", "reference", "--cross-provider")
    assert cross.exit_code == 2
    assert cross.stderr.strip() == (
        "normfold: error: --cross-provider compares ONNX Runtime's GPU providers with its "
        "CPU one; it does not combine with --provider reference"
    )
    half = invoke("validate", *resnet, "--provider", "cpu", "--provider", "reference", "--fp16")
    assert half.exit_code == 2
    assert half.stderr.strip() == (
        "normfold: error: --fp16 runs float16 copies of the models on ONNX Runtime; it does "
        "not combine with --provider reference, which widens every float tensor to float64"
    )


def test_reference_and_cpu_together_report_both(resnet: tuple[Path, Path]) -> None:
    report = validate(*resnet, providers=["cpu", "reference"])
    assert report.providers == ["cpu", LABEL]
    assert [c.section for c in report.comparisons] == ["cpu", LABEL] and report.passed
    assert report.comparisons[0].candidate_vs_float64 is not None  # ONNX Runtime's line keeps its float64 columns


def test_training_dropout_is_seeded_identically_as_on_onnx_runtime(tmp_path: Path) -> None:
    source = tmp_path / "training.onnx"
    shutil.copy(MODELS / "training_export.onnx", source)
    feeds = [{"input": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}]
    unseeded = [run_reference(source, onnx.load(source), feeds, 1 << 30)[0][0] for _ in range(2)]
    assert not np.array_equal(*unseeded)  # the evaluator really samples masks: unseeded runs differ
    report = validate(source, source, providers=["reference"], samples=2)
    assert report.passed
    assert report.notes[-1] == "random nodes seeded identically in both models: Dropout 'dropout14' in training mode"
    assert report.comparisons[0].metrics is not None and report.comparisons[0].metrics.max_abs == 0.0


def test_expected_outputs_are_checked_on_the_reference_evaluator(
    resnet: tuple[Path, Path], expected_set: tuple[Path, np.ndarray]
) -> None:
    _, target = resnet
    folder, y = expected_set
    good = invoke("validate", target, "--expected", folder, "--provider", "reference")
    assert good.exit_code == 0, good.output
    assert "\nPASSED 'logits' on onnx-reference " in good.stdout and " vs expected | max abs " in good.stdout
    verbose = invoke("validate", target, "--expected", folder, "--provider", "reference", "-v")
    assert f"PASSED | output 'logits' | {LABEL} vs expected | max abs " in verbose.stdout
    (folder / "output_0.pb").write_bytes(numpy_helper.from_array(y + 0.1, "logits").SerializeToString())
    assert invoke("validate", target, "--expected", folder, "--provider", "reference").exit_code == 1


def test_a_model_the_evaluator_cannot_run_is_unusable(tmp_path: Path) -> None:
    nodes = [helper.make_node("GlobalLpPool", ["x"], ["y"], name="pool")]
    path = tmp_path / "lp.onnx"
    onnx.save(make_model(nodes, {"x": [1, 2, 3, 3]}, ["y"], {}, opset=13), path)
    assert validate(path, path, providers=["cpu"]).passed
    with pytest.raises(NormfoldError) as refused:
        validate(path, path, providers=["reference"])
    assert str(refused.value).startswith(
        f"{path}: --provider reference cannot run the model: onnx's reference "
        "evaluator has no kernel for GlobalLpPool (No registered implementation "
        "for operator 'GlobalLpPool'"
    )
    assert refused.value.exit_code == 3
