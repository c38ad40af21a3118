"""NaN, infinite and out-of-range momentum/alpha are usage errors (exit 2, one line), on the CLI and in the API.

Regression: click's FloatRange(0, 1) accepted `nan` (every comparison with NaN is false), so
`mode --train --momentum nan` and `calibrate --alpha nan` wrote NaN running statistics.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from cli_helpers import invoke, run_script, snapshot
from click.testing import Result
from graphs import bn_node, bn_params, make_model, rng

from normfold import NormfoldError
from normfold.calibrate import calibrate
from normfold.cli.finite_float import FiniteFloat
from normfold.finite import require_finite
from normfold.passes import SetTrainingModePass

BAD_VALUES = ["nan", "inf", "-inf", "1.5"]
BAD_NUMBERS = [math.nan, math.inf, -math.inf, 1.5, -0.5, np.float32("nan")]
OPTIONS = ["--momentum", "--alpha"]


def _model() -> onnx.ModelProto:
    """One BatchNormalization over 3 channels, opset 15 (training_mode exists)."""
    params = bn_params("bn", 3, rng(1))
    return make_model([bn_node("x", "y", "bn")], {"x": ["N", 3, 4, 4]}, ["y"], params, opset=15)


def _batches(count: int = 3) -> list[dict[str, np.ndarray]]:
    """Seeded calibration batches of 2 samples each."""
    generator = rng(2)
    return [{"x": generator.standard_normal((2, 3, 4, 4)).astype(np.float32)} for _ in range(count)]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The model and its calibration data (.npz, leading axis = batches) in a folder of their own."""
    onnx.save(_model(), tmp_path / "bn.onnx")
    np.savez(tmp_path / "calib.npz", x=np.stack([b["x"] for b in _batches()]))
    return {"model": tmp_path / "bn.onnx", "data": tmp_path / "calib.npz"}


def _command(name: str, files: dict[str, Path]) -> list[str | Path]:
    """The command line up to the option under test; every other option is valid."""
    if name == "mode":
        return ["mode", files["model"], "--train"]
    return ["calibrate", files["model"], "--data", files["data"], "--method", "running", "--provider", "cpu"]


def _assert_one_line_usage_error(result: Result, message: str) -> None:
    """Exit 2, exactly `message` on stderr as one line, nothing on stdout, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stderr == f"normfold: error: {message}\n"
    assert result.stdout == ""
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["mode", "calibrate"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_cli_refuses_non_finite_or_out_of_range(files: dict[str, Path], command: str, option: str, value: str) -> None:
    before = snapshot(files["model"].parent)
    result = invoke(*_command(command, files), option, value)
    _assert_one_line_usage_error(result, f"{option} must be a finite number in [0, 1], got {value}")
    assert snapshot(files["model"].parent) == before


@pytest.mark.parametrize(("typed", "shown"), [("NaN", "NaN"), ("1e400", "1e400"), ("abc", "'abc'"), ("", "''")])
def test_cli_shows_the_value_as_typed(files: dict[str, Path], typed: str, shown: str) -> None:
    """1e400 parses as inf: the message names what the user wrote, not what float() made of it."""
    result = invoke(*_command("mode", files), "--momentum", typed)
    _assert_one_line_usage_error(result, f"--momentum must be a finite number in [0, 1], got {shown}")


def test_cli_error_is_one_line_from_the_installed_script(files: dict[str, Path]) -> None:
    folder = files["model"].parent
    before = snapshot(folder)
    done = run_script(
        "calibrate", files["model"], "--data", files["data"], "--method", "running", "--alpha", "nan", cwd=folder
    )
    assert done.returncode == 2
    assert done.stderr == "normfold: error: --alpha must be a finite number in [0, 1], got nan\n"
    assert done.stdout == "" and snapshot(folder) == before


def test_cli_finite_values_still_work(files: dict[str, Path]) -> None:
    folder = files["model"].parent
    trained = invoke(*_command("mode", files), "--alpha", "0.25", "-o", folder / "t.onnx")
    assert trained.exit_code == 0, trained.output
    assert "(momentum 0.75)" in trained.stdout
    switch = onnx.load(folder / "t.onnx").graph.node[0]
    train_bn = next(a.g for a in switch.attribute if a.name == "then_branch").node[0]
    assert next(a.f for a in train_bn.attribute if a.name == "momentum") == pytest.approx(0.75)
    for option, value in (("--momentum", "0"), ("--alpha", "1")):
        calibrated = invoke(*_command("calibrate", files), option, value, "-o", folder / "c.onnx")
        assert calibrated.exit_code == 0, calibrated.output
        assert "(running, provider cpu)" in calibrated.stdout
        statistics = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(folder / "c.onnx").graph.initializer}
        last = _batches()[-1]["x"].astype(np.float64)
        np.testing.assert_allclose(statistics["bn_calibrated_mean"], last.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("command", ["mode", "calibrate"])
def test_help_shows_the_ranges(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "--momentum FLOAT" in result.stdout and "--alpha" not in result.stdout  # --alpha: deprecated, hidden
    assert result.stdout.count("[0<=x<=1]") == 1


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_set_training_mode_pass_refuses_bad_momentum(value: float) -> None:
    with pytest.raises(NormfoldError) as raised:
        SetTrainingModePass(momentum=value)
    assert str(raised.value) == f"momentum must be a finite number in [0, 1], got {float(value)!r}"
    assert raised.value.exit_code == 2


def test_set_training_mode_pass_refuses_a_string() -> None:
    with pytest.raises(NormfoldError) as raised:
        SetTrainingModePass(momentum="0.9")  # type: ignore[arg-type]
    assert str(raised.value) == "momentum must be a finite number in [0, 1], got '0.9'"


@pytest.mark.parametrize("method", ["running", "cumulative"])
@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_calibrate_refuses_bad_momentum(method: str, value: float) -> None:
    with pytest.raises(NormfoldError) as raised:
        calibrate(ir.from_proto(_model()), _batches(), method=method, momentum=value)
    assert str(raised.value) == f"momentum must be a finite number in [0, 1], got {float(value)!r}"
    assert raised.value.exit_code == 2


def test_api_accepts_the_bounds() -> None:
    assert SetTrainingModePass(momentum=0).momentum == 0.0
    assert SetTrainingModePass(momentum=np.float64(1.0)).momentum == 1.0
    assert SetTrainingModePass().momentum is None
    result = calibrate(ir.from_proto(_model()), _batches(), method="running", momentum=1.0)
    np.testing.assert_array_equal(result.statistics["bn"][0], bn_params("bn", 3, rng(1))["bn_mean"].astype(np.float64))


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, None, "x must be a finite number >= 0, got nan"),
        (None, 2.5, "x must be a finite number <= 2.5, got nan"),
        (None, None, "x must be a finite number, got nan"),
    ],
)
def test_require_finite_describes_one_sided_ranges(low: float | None, high: float | None, expected: str) -> None:
    with pytest.raises(NormfoldError) as raised:
        require_finite("x", math.nan, low=low, high=high)
    assert str(raised.value) == expected


def test_require_finite_returns_plain_floats() -> None:
    assert require_finite("x", -0.0, low=0.0) == 0.0 and math.copysign(1.0, require_finite("x", -0.0)) == 1.0
    assert type(require_finite("x", np.float32(0.5))) is float
    with pytest.raises(NormfoldError, match=r"^x must be a finite number, got True$"):
        require_finite("x", True)  # type: ignore[arg-type]


def test_finite_float_outside_a_command_names_the_value() -> None:
    with pytest.raises(NormfoldError, match=r"^the value must be a finite number in \[0, 1\], got inf$"):
        FiniteFloat(0, 1).convert("inf", None, None)
    assert FiniteFloat(0, 1).convert(" 0.5 ", None, None) == 0.5
    assert isinstance(FiniteFloat(0, 1), click.ParamType)
