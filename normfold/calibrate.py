"""Re-estimate every BatchNormalization's running statistics from data (`normfold calibrate`; AdaBN).

The model runs on ONNX Runtime as its training-side graph with momentum 0, Dropout off, so each BN's
extra outputs are exactly that batch's mean and biased variance; later BNs see activations normalized
with batch statistics, as in PyTorch's train-mode recalibration. Batches are combined in float64:
    cumulative: the exact statistics of all calibration data (Chan's parallel mean/variance merge);
    running:    running = momentum * running + (1 - momentum) * batch, from the stored statistics,
                with ONNX momentum (the seed's/PyTorch's alpha = 1 - momentum).
The result is the inference model with the new statistics (new initializers; shared tensors untouched).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from normfold.errors import NormfoldError, describe
from normfold.finite import require_finite
from normfold.folding import as_ir_model
from normfold.graph_edit import NameSource, add_constant, constant_array, drop_if_unused
from normfold.graph_walk import Scope, is_op, node_label
from normfold.passes.set_inference_mode import SetInferenceModePass
from normfold.passes.set_training_mode import SetTrainingModePass
from normfold.passes.strip_dropout import StripDropoutPass
from normfold.records import NodeRecord

METHODS = ("cumulative", "running")


@dataclasses.dataclass
class _Moments:
    """Count, mean and sum of squared deviations per channel (float64)."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    def merge(self, count: float, mean: np.ndarray, var: np.ndarray) -> None:
        """Chan et al.'s pairwise update with a batch of `count` values per channel."""
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + var * count + delta**2 * (self.count * count / total)
        self.count = total


@dataclasses.dataclass
class CalibrationResult:
    """The recalibrated inference model, the statistics per BN, and a record per BN."""

    model: ir.Model
    statistics: dict[str, tuple[np.ndarray, np.ndarray]]
    records: list[NodeRecord]
    batches: int


def calibrate(
    model: ir.Model | onnx.ModelProto | str | os.PathLike[str],
    batches: Sequence[dict[str, np.ndarray]],
    *,
    method: str = "cumulative",
    momentum: float = 0.9,
    provider: str = "cpu",
    progress: Callable[[Iterable[dict[str, np.ndarray]]], Iterable[dict[str, np.ndarray]]] = lambda b: b,
) -> CalibrationResult:
    """Estimate running mean/variance of every main-graph BN from `batches` and write them into the model.

    `model` is a path, an onnx.ModelProto or an onnx_ir.Model (which is not modified). `momentum` (ONNX's,
    used by method "running") must be finite and in [0, 1], whatever the method.
    """
    model = as_ir_model(model)
    if method not in METHODS:
        raise NormfoldError(f"unknown method '{method}' (choose from {', '.join(METHODS)})", exit_code=2)
    momentum = require_finite("momentum", momentum, low=0.0, high=1.0)
    if not batches:
        raise NormfoldError("no calibration batches")
    bns = [n for n in model.graph if is_op(n, "BatchNormalization")]
    if not bns:
        raise NormfoldError("the model has no BatchNormalization in its main graph: nothing to calibrate")
    probe = SetTrainingModePass(momentum=0.0)(StripDropoutPass()(SetInferenceModePass()(model).model).model)
    switched = [r for r in probe.records if r.op_type == "BatchNormalization" and r.action == "converted"]
    first_extra = len(model.graph.outputs)
    if len(switched) != len(bns) or len(probe.model.graph.outputs) != first_extra + 2 * len(bns):
        raise NormfoldError("some BatchNormalization cannot run in training mode; calibration needs every one")
    from normfold.validate.providers import open_session

    with tempfile.TemporaryDirectory(prefix="normfold-calibrate-") as folder:
        path = Path(folder) / "calibration.onnx"
        ir.save(probe.model, path, external_data="calibration.onnx.data")
        session = open_session(path, provider)
        flag = {"training": np.array(True)}
        stats = _accumulate(session, batches, flag, bns, first_extra, method, momentum, progress)
    return _write(model, bns, stats, method, len(batches))


def _accumulate(session, batches, flag, bns, first_extra, method, momentum, progress) -> list[tuple[np.ndarray, np.ndarray]]:
    moments: list[_Moments | None] = [None] * len(bns)
    running = [(_stored(bn, 3), _stored(bn, 4)) for bn in bns]
    for batch in progress(batches):
        try:
            outputs = session.run(None, {**batch, **flag})
        except Exception as error:
            raise NormfoldError(f"calibration batch does not fit the model: {describe(error, 300)}") from None
        for index, bn in enumerate(bns):
            mean = outputs[first_extra + 2 * index].astype(np.float64)
            var = outputs[first_extra + 2 * index + 1].astype(np.float64)
            count = _values_per_channel(batch)
            if method == "running":
                old_mean, old_var = running[index]
                running[index] = (momentum * old_mean + (1 - momentum) * mean, momentum * old_var + (1 - momentum) * var)
            elif moments[index] is None:
                moments[index] = _Moments(count, mean, var * count)
            else:
                moments[index].merge(count, mean, var)
    if method == "running":
        return running
    return [(m.mean, m.m2 / m.count) for m in moments if m is not None]


def _values_per_channel(batch: dict[str, np.ndarray]) -> float:
    """The batch's weight in the merge: its batch size (the leading axis of its first input).

    Every value of a channel counts once, so the true weight is batch size x spatial size; the spatial
    size is a common factor whenever it is the same in every batch, as it is for fixed-size inputs.
    """
    first = next(iter(batch.values()))
    return float(first.shape[0]) if first.ndim else 1.0


def _stored(bn: ir.Node, index: int) -> np.ndarray:
    array = constant_array(bn.inputs[index])
    if array is None:
        raise NormfoldError(f"BatchNormalization '{node_label(bn)}' has no constant running statistics to start from")
    return array.astype(np.float64)


def _write(model: ir.Model, bns: list[ir.Node], stats, method: str, batches: int) -> CalibrationResult:
    """The inference model with each BN reading its new statistics (rounded once to the stored dtype)."""
    copy = model.clone()
    names = NameSource(copy)
    scope = Scope("main", copy.graph, copy.opset_imports.get("", 1))
    copied = [n for n in copy.graph if is_op(n, "BatchNormalization")]
    records, statistics, replaced = [], {}, []
    for bn, (mean, var) in zip(copied, stats):
        label = node_label(bn)
        for index, array in ((3, mean), (4, var)):
            dtype = bn.inputs[index].dtype.numpy() if bn.inputs[index].dtype is not None else np.float32
            value = add_constant(scope, bn, array.astype(dtype), names.fresh(f"{label}_calibrated_{'mean' if index == 3 else 'var'}"), names)
            replaced.append(bn.inputs[index])
            bn.replace_input_with(index, value)
        statistics[label] = (mean, var)
        records.append(NodeRecord("main", label, "BatchNormalization", "converted",
                                  f"running statistics re-estimated from {batches} batch(es) ({method})"))
    drop_if_unused(replaced)
    inference = SetInferenceModePass()(copy).model
    return CalibrationResult(inference, statistics, records, batches)
