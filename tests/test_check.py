"""`normfold check`: every rule trips on a model made for it; folded models pass; formats and config."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from examples import MODELS
from onnx import helper, numpy_helper

from normfold import fold, save_model
from normfold.check import RULES, check_model
from normfold.cli import main

SHIPPED = sorted(p.name for p in MODELS.glob("*.onnx") if ".folded." not in p.name)


def _bn_model(
    path: Path,
    *,
    training: bool = False,
    var: float = 1.0,
    mean: float = 0.0,
    epsilon: float = 1e-5,
    dtype: int = onnx.TensorProto.FLOAT,
    weight: float = 0.5,
    dropout: str | None = None,
    batch: int | str = "N",
    ratio: float = 0.2,
    opset: int = 15,
    scaled: bool = False,
) -> Path:
    """Conv -> BN (-> Dropout) (-> Mul by a constant) with the knobs each rule needs."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    inits = {
        "w": np.full((3, 3, 1, 1), weight),
        "s": np.full(3, 8.0 if dtype == onnx.TensorProto.FLOAT16 else 1.0),
        "b": np.zeros(3),
        "m": np.full(3, mean),
        "v": np.full(3, var),
        "ratio": np.array(ratio),
    }
    bn_outputs = ["z", "rm", "rv"] if training else ["z"]
    attrs = {"training_mode": 1} if training else {}
    if dropout == "before-bn":
        nodes = [helper.make_node("Dropout", ["x", "ratio"], ["y"], name="drop")]
    else:
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    bn_input = "y"
    nodes.append(
        helper.make_node(
            "BatchNormalization", [bn_input, "s", "b", "m", "v"], bn_outputs, name="bn", epsilon=epsilon, **attrs
        )
    )
    out = "z"
    if dropout in ("inference", "training"):
        extra = ["ratio", "t"] if dropout == "training" else ["ratio"]
        nodes.append(helper.make_node("Dropout", ["z", *extra], ["out"], name="drop"))
        out = "out"
        inits["t"] = np.array(True)
    if scaled:
        nodes.append(helper.make_node("Mul", [out, "k"], ["scaled"], name="mul"))
        out, inits["k"] = "scaled", np.array(2.0)
    tensors = [
        numpy_helper.from_array(np.asarray(v).astype(np.bool_ if k == "t" else np_dtype), k) for k, v in inits.items()
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", dtype, [batch, 3, 2, 2])],
        [helper.make_tensor_value_info(out, dtype, [batch, 3, 2, 2])],
        tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


TRIPS = {
    "foldable-bn": {},
    "foldable-affine": {"scaled": True},
    "inference-dropout": {"dropout": "inference"},
    "training-bn": {"training": True},
    "training-dropout": {"dropout": "training"},
    "bn-nonfinite": {"mean": float("nan")},
    "bn-negative-variance": {"var": -1.0},
    "non-positive-epsilon": {"epsilon": 0.0},
    "bn-fp16-overflow": {"dtype": onnx.TensorProto.FLOAT16, "var": 1e-7, "epsilon": 1e-7, "weight": 60000.0},
    "dropout-before-bn": {"dropout": "before-bn"},
    "high-drop-ratio": {"dropout": "inference", "ratio": 0.8},
    "bn-batch-below-2": {"batch": 1, "training": True},
    "runtime-cannot-load": {"opset": 99},
}


def test_every_rule_has_a_tripping_model() -> None:
    assert set(TRIPS) == set(RULES)


@pytest.mark.parametrize("rule", sorted(TRIPS))
def test_rule_trips_and_names_node_and_fix(tmp_path: Path, rule: str) -> None:
    path = _bn_model(tmp_path / f"{rule}.onnx", **TRIPS[rule])
    check = check_model(path)
    assert not check.error, check.error
    rules = [f.rule for f in check.findings]
    assert rule in rules, rules
    finding = next(f for f in check.findings if f.rule == rule)
    assert finding.node in ("bn", "drop", "mul", "(model)") and finding.fix
    if rule == "training-bn":
        assert "TensorRT refuses" in finding.message
    assert rule not in [f.rule for f in check_model(path, disabled=[rule]).findings]


@pytest.mark.parametrize("name", SHIPPED)
def test_originals_fail_and_folded_pass(tmp_path: Path, name: str) -> None:
    source = tmp_path / name
    shutil.copy(MODELS / name, source)
    assert not check_model(source).ready
    target = tmp_path / "folded.onnx"
    save_model(fold(source, eval_mode=True).model, target)
    check = check_model(target)
    assert check.ready, check.findings


def test_cli_exit_codes_formats_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    _bn_model(folder / "a.onnx", training=True)
    (folder / "sub").mkdir()
    _bn_model(folder / "sub" / "b.onnx", dropout="inference")
    runner = CliRunner()
    text = runner.invoke(main, ["check", str(folder)])
    assert text.exit_code == 1
    assert text.stdout.splitlines()[-1] == "0 of 2 model(s) deployment-ready"
    document = json.loads(runner.invoke(main, ["check", str(folder), "--json"]).stdout)
    assert document["normfold_report"] == "check" and document["version"] == 1
    assert [m["path"] for m in document["models"]] == [str(folder / "a.onnx"), str(folder / "sub" / "b.onnx")]
    assert set(document["models"][0]["findings"][0]) == {"rule", "node", "message", "fix"}
    github = runner.invoke(main, ["check", str(folder / "a.onnx"), "--format", "github"]).stdout.splitlines()
    assert github[0].startswith(f"::error file={folder / 'a.onnx'},title=normfold training-bn::bn: training_mode=1")
    sarif = json.loads(runner.invoke(main, ["check", str(folder), "--format", "sarif"]).stdout)
    assert sarif["version"] == "2.1.0"
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} >= {"training-bn", "inference-dropout"}
    assert {r["id"] for r in sarif["runs"][0]["tool"]["driver"]["rules"]} == set(RULES)
    broken = folder / "broken.onnx"
    broken.write_bytes(b"not a model")
    unusable = runner.invoke(main, ["check", str(folder), "-v"])
    assert unusable.exit_code == 3 and f"UNUSABLE {broken}: " in unusable.stdout


def test_rule_descriptions_and_messages_use_no_internal_references(tmp_path: Path) -> None:
    """SARIF rule descriptions and every finding speak of the model, not of design notes ("seed 1.9", "issue 5")."""
    internal = re.compile(r"\bseed\b|\bissue\b", re.IGNORECASE)
    assert not [rule.description for rule in RULES.values() if internal.search(rule.description)]
    paths = [
        _bn_model(tmp_path / f"{rule}.onnx", **TRIPS[rule])
        for rule in ("dropout-before-bn", "high-drop-ratio", "bn-batch-below-2")
    ]
    sarif = json.loads(CliRunner().invoke(main, ["check", *map(str, paths), "--format", "sarif"]).stdout)
    texts = [r["shortDescription"]["text"] for r in sarif["runs"][0]["tool"]["driver"]["rules"]]
    texts += [r["message"]["text"] for r in sarif["runs"][0]["results"]]
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} >= {
        "dropout-before-bn",
        "high-drop-ratio",
        "bn-batch-below-2",
    }
    assert not [text for text in texts if internal.search(text)]


def test_rules_disabled_on_the_command_line_and_in_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bn_model(tmp_path / "m.onnx")
    runner = CliRunner()
    assert runner.invoke(main, ["check", str(path)]).exit_code == 1
    assert runner.invoke(main, ["check", str(path), "--disable", "foldable-bn"]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.normfold]\ndisable = ["foldable-bn"]\n')
    assert runner.invoke(main, ["check", str(path)]).exit_code == 0
    bad = runner.invoke(main, ["check", str(path), "--disable", "no-such-rule"])
    assert bad.exit_code == 2 and bad.stderr.startswith("normfold: error: unknown rule(s) no-such-rule; rules: ")
