"""normfold.phase_timing: the benchmark's per-phase figures of one fold, and the passes' timings hook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from examples import MODELS

from normfold.folding import fold
from normfold.phase_timing import main, time_phases


def test_phases_cover_the_fold_and_write_its_output(tmp_path: Path) -> None:
    source = tmp_path / "resnet_block.onnx"
    shutil.copyfile(MODELS / "resnet_block.onnx", source)
    target = tmp_path / "folded.onnx"
    times = time_phases(source, target)
    onnx.checker.check_model(str(target), full_check=True)
    assert times.batchnorms == 6 and times.folded == 6
    assert {"StripDropoutPass", "FoldAffinePass", "FoldBatchNormPass"} <= set(times.passes)
    assert all(seconds >= 0 for seconds in times.phases().values())
    assert abs(times.total - (times.load + times.fold + times.release + times.write)) < 1e-9
    report = times.to_dict()
    assert report["batchnorms"] == 6
    assert set(report["ms_per_batchnorm"]) == {*times.phases(), "total"}


def test_the_command_prints_one_json_object(tmp_path: Path, capsys) -> None:
    assert main([str(MODELS / "resnet_block.onnx"), str(tmp_path / "out.onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["batchnorms"] == 6
    assert main([]) == 2


def test_timings_change_nothing_in_the_fold() -> None:
    timings: dict[str, float] = {}
    timed = fold(str(MODELS / "resnet_block.onnx"), timings=timings, eval_mode=True)
    plain = fold(str(MODELS / "resnet_block.onnx"), eval_mode=True)
    assert timed.records == plain.records
    assert "SetInferenceModePass" in timings and timings["FoldBatchNormPass"] > 0
