"""`check` rule runtime-cannot-load: a model stamped with an IR version or opset newer than the installed ONNX
Runtime loads is not ready. A one-node probe with the same stamps is loaded in a child process, once per stamp."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from cli_helpers import conv_bn_model, invoke

from normfold import check
from normfold.check import check_model, runtime_refusal


def stamped(path: Path, *, ir_version: int = 8, opset: int = 17) -> Path:
    """The Conv+BN model with the given stamps, its bytes written as they are (onnx's checker would refuse some)."""
    model = conv_bn_model()
    model.ir_version = ir_version
    model.opset_import[0].version = opset
    path.write_bytes(model.SerializeToString())
    return path


def test_an_opset_newer_than_the_runtime_is_not_ready(tmp_path: Path) -> None:
    path = stamped(tmp_path / "opset99.onnx", opset=99)
    finding = next(f for f in check_model(path).findings if f.rule == "runtime-cannot-load")
    assert finding.node == "(model)"
    assert finding.message.startswith("opset 99 is newer than onnxruntime ") and "loads (at most " in finding.message
    assert finding.fix.startswith("upgrade onnxruntime, or convert the model to opset ")
    result = invoke("check", path)
    assert result.exit_code == 1 and "READY    " not in result.stdout
    assert result.stdout.splitlines()[1].startswith("  runtime-cannot-load '(model)': opset 99 is newer than ")
    assert [f.rule for f in check_model(path, disabled=["runtime-cannot-load"]).findings] == ["foldable-bn"]


def test_an_ir_version_newer_than_the_runtime_is_not_ready(tmp_path: Path) -> None:
    """IR version 99 is refused by onnx's checker already (unusable, exit 3); the rule says the same of it."""
    path = stamped(tmp_path / "ir99.onnx", ir_version=99)
    result = invoke("check", path)
    assert result.exit_code == 3 and result.stdout.startswith("UNUSABLE ")
    version, error = runtime_refusal(99, 17)
    assert "Unsupported model IR version: 99, max supported IR version: " in error
    model = ir.serde.deserialize_model(onnx.load(str(path)))
    (finding,) = check.RULES["runtime-cannot-load"].find(check.CheckContext(model, str(path), []))
    assert finding.message.startswith(f"IR version 99 is newer than onnxruntime {version} loads (at most ")
    assert finding.fix.startswith("upgrade onnxruntime, or save the model with ir_version = ")


def test_the_newest_ir_version_onnx_writes(tmp_path: Path) -> None:
    """onnx 1.23 stamps IR version 14, which onnxruntime 1.31 does not load: the case that motivates the rule."""
    path = stamped(tmp_path / "newest.onnx", ir_version=onnx.IR_VERSION)
    refusal = runtime_refusal(onnx.IR_VERSION, 17)
    if refusal is None:
        pytest.skip(f"the installed onnxruntime loads IR version {onnx.IR_VERSION}")
    assert "runtime-cannot-load" in [f.rule for f in check_model(path).findings]
    assert invoke("check", path).exit_code == 1


def test_models_every_runtime_loads_are_not_probed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe(ir_version: int, opset: int) -> None:
        raise AssertionError("probed")

    monkeypatch.setattr(check, "runtime_refusal", no_probe)
    assert [f.rule for f in check_model(stamped(tmp_path / "m.onnx", ir_version=10, opset=21)).findings] == [
        "foldable-bn"
    ]
    assert check_model(stamped(tmp_path / "new.onnx", opset=99), disabled=["runtime-cannot-load"]).findings


def test_a_loadable_stamp_is_probed_once(tmp_path: Path) -> None:
    runtime_refusal.cache_clear()
    for name in ("a.onnx", "b.onnx"):
        assert [f.rule for f in check_model(stamped(tmp_path / name, ir_version=10, opset=22)).findings] == [
            "foldable-bn"
        ]
    assert runtime_refusal.cache_info().misses == 1
