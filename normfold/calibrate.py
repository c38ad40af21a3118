"""Re-estimate every BatchNormalization's running statistics from data (`normfold calibrate`; AdaBN).

The model runs on ONNX Runtime as its training-side graph (momentum 0, Dropout in inference mode, so the
identity) whose only outputs are, per BN, the batch mean mu_B, the biased batch variance var_B and the
shape of its input, which gives n, the values per channel in the batch (N*D1*...*Dk). Later BNs see
activations normalized with batch statistics, as in PyTorch's train-mode recalibration. Batches are
combined in float64; `running_var="unbiased"` (PyTorch's convention) first multiplies each var_B by
n / (n - 1), "biased" (ONNX's, the default) keeps it:
    cumulative, biased:   the exact mean and variance of all the data (Chan's parallel merge, weights n);
    cumulative, unbiased: the averages over batches of mu_B and of the unbiased variance, every batch
                          weighing the same (PyTorch's momentum=None, as torch.optim.swa_utils.update_bn);
    running:              running = momentum * running + (1 - momentum) * batch, from the stored statistics,
                          with ONNX's momentum, the weight of the old running statistic (PyTorch's is 1 - it).
The result is the inference model with the new statistics (new initializers; shared tensors untouched).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnx_ir as ir

from normfold.errors import EXIT_USAGE, NormfoldError, describe
from normfold.finite import require_finite
from normfold.folding import as_ir_model
from normfold.graph_edit import NameSource, add_constant, constant_array, drop_if_unused
from normfold.graph_walk import Scope, is_op, node_label
from normfold.passes.set_inference_mode import SetInferenceModePass
from normfold.passes.set_training_mode import DEFAULT_FLAG, RUNNING_VARIANCES, SetTrainingModePass
from normfold.passes.strip_dropout import StripDropoutPass
from normfold.records import NodeRecord

METHODS = ("cumulative", "running")


class _Combiner(Protocol):
    """Folds one BN's per-batch statistics into its running statistics."""

    def add(self, count: int, mean: np.ndarray, var: np.ndarray) -> None: ...

    def result(self) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass
class _Pooled:
    """Count, mean and sum of squared deviations per channel (float64): the statistics of all values seen."""

    count: float = 0.0
    mean: np.ndarray | float = 0.0
    m2: np.ndarray | float = 0.0

    def add(self, count: int, mean: np.ndarray, var: np.ndarray) -> None:
        """Chan et al.'s pairwise update with a batch of `count` values per channel."""
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + var * count + delta**2 * (self.count * count / total)
        self.count = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and population variance of all values."""
        return np.asarray(self.mean), np.asarray(self.m2 / self.count)


@dataclasses.dataclass
class _Averaged:
    """Sums of the batch statistics, for their plain average over batches (PyTorch's momentum=None)."""

    batches: int = 0
    mean: np.ndarray | float = 0.0
    var: np.ndarray | float = 0.0

    def add(self, count: int, mean: np.ndarray, var: np.ndarray) -> None:
        """Every batch weighs the same, whatever its size."""
        self.batches += 1
        self.mean = self.mean + mean
        self.var = self.var + var

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The average batch mean and batch variance."""
        return np.asarray(self.mean / self.batches), np.asarray(self.var / self.batches)


@dataclasses.dataclass
class _Running:
    """ONNX's running-average update, batch after batch, from the stored statistics."""

    mean: np.ndarray
    var: np.ndarray
    momentum: float

    def add(self, count: int, mean: np.ndarray, var: np.ndarray) -> None:
        """running = momentum * running + (1 - momentum) * batch."""
        self.mean = self.momentum * self.mean + (1 - self.momentum) * mean
        self.var = self.momentum * self.var + (1 - self.momentum) * var

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The running mean and variance after the last batch."""
        return self.mean, self.var


@dataclasses.dataclass
class CalibrationResult:
    """The recalibrated inference model, the statistics per BN, and a record per BN."""

    model: ir.Model
    statistics: dict[str, tuple[np.ndarray, np.ndarray]]
    records: list[NodeRecord]
    batches: int


@dataclasses.dataclass(frozen=True)
class _Probe:
    """The calibration graph, its flag input, and per BN the names of its mean, variance and input-shape outputs."""

    model: ir.Model
    flag: str
    fetches: list[tuple[str, str, str]]


def calibrate(
    model: ir.Model | onnx.ModelProto | str | os.PathLike[str],
    batches: Sequence[dict[str, np.ndarray]],
    *,
    method: str = "cumulative",
    momentum: float = 0.9,
    running_var: str = "biased",
    provider: str = "cpu",
    progress: Callable[[Iterable[dict[str, np.ndarray]]], Iterable[dict[str, np.ndarray]]] = lambda b: b,
) -> CalibrationResult:
    """Estimate running mean/variance of every main-graph BN from `batches` and write them into the model.

    `model` is a path, an onnx.ModelProto or an onnx_ir.Model (which is not modified). `momentum` (ONNX's,
    used by method "running") must be finite and in [0, 1], whatever the method. `running_var` is
    "biased" (ONNX's convention) or "unbiased" (PyTorch's). `progress` wraps the batches once they are checked.
    """
    model = as_ir_model(model)
    if method not in METHODS:
        raise NormfoldError(f"unknown method '{method}' (choose from {', '.join(METHODS)})", exit_code=EXIT_USAGE)
    if running_var not in RUNNING_VARIANCES:
        raise NormfoldError(
            f"unknown running_var '{running_var}' (choose from {', '.join(RUNNING_VARIANCES)})", exit_code=EXIT_USAGE
        )
    momentum = require_finite("momentum", momentum, low=0.0, high=1.0)
    if not batches:
        raise NormfoldError("no calibration batches")
    if all(value.is_initializer() for value in model.graph.inputs):
        raise NormfoldError("the model has no graph inputs, so calibration data cannot reach its BatchNormalization")
    _require_finite_data(batches)
    base = SetInferenceModePass()(model).model
    bns = [n for n in base.graph if is_op(n, "BatchNormalization")]
    if not bns:
        raise NormfoldError("the model has no BatchNormalization in its main graph: nothing to calibrate")
    combiners = [_combiner(bn, method, running_var, momentum) for bn in bns]
    probe = _probe(base, bns)
    from normfold.validate.providers import open_session

    with tempfile.TemporaryDirectory(prefix="normfold-calibrate-") as folder:
        path = Path(folder) / "calibration.onnx"
        ir.save(probe.model, path, external_data="calibration.onnx.data")
        session = open_session(path, provider)
        flag = {probe.flag: np.array(True)}
        fetches = [name for names in probe.fetches for name in names]
        for index, batch in enumerate(progress(batches)):
            try:
                outputs = session.run(fetches, {**batch, **flag})
            except Exception as error:
                raise NormfoldError(f"calibration batch does not fit the model: {describe(error, 300)}") from None
            for k, (bn, combiner) in enumerate(zip(bns, combiners)):
                mean, var, shape = outputs[3 * k : 3 * k + 3]
                _add_batch(combiner, node_label(bn), index, mean, var, shape, running_var)
    return _write(base, bns, [c.result() for c in combiners], method, running_var, len(batches))


def _require_finite_data(batches: Sequence[dict[str, np.ndarray]]) -> None:
    """Refuse NaN and infinite inputs: one would make every statistic it reaches NaN."""
    for index, batch in enumerate(batches):
        for name, array in batch.items():
            array = np.asarray(array)
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                raise NormfoldError(
                    f"calibration batch {index} (counting from 0): input '{name}' holds NaN or "
                    "infinite values, which would make the running statistics NaN"
                )


def _combiner(bn: ir.Node, method: str, running_var: str, momentum: float) -> _Combiner:
    """How this BN's batches combine: pooled or averaged (cumulative), or the running update."""
    if method == "running":
        return _Running(_stored(bn, 3), _stored(bn, 4), momentum)
    return _Averaged() if running_var == "unbiased" else _Pooled()


def _probe(base: ir.Model, bns: list[ir.Node]) -> _Probe:
    """The training-side graph of `base` whose outputs are only what calibration reads, per BN of `bns`.

    The model's own outputs go (a training-mode BN's running-statistics outputs among them, which would
    keep it out of the switch); every BN must switch, or calibration would miss it.
    """
    stripped = StripDropoutPass()(base).model
    stripped.graph.outputs.clear()
    flag = NameSource(stripped).fresh(DEFAULT_FLAG)
    result = SetTrainingModePass(flag, momentum=0.0, dropout=False)(stripped)
    records = [r for r in result.records if r.op_type == "BatchNormalization"]
    graph, names, fetches = result.model.graph, NameSource(result.model), []
    for bn, record, switch in zip(bns, records, result.switches, strict=True):
        if switch is None:
            raise NormfoldError(
                f"BatchNormalization '{node_label(bn)}' cannot run in training mode ({record.detail}); "
                "calibration needs every one"
            )
        shape = ir.Node("", "Shape", [switch.outputs[0]], name=names.fresh(f"{node_label(bn)}.batch_shape"))
        shape.outputs[0].name = names.fresh(f"{node_label(bn)}.batch_shape")
        shape.outputs[0].type = ir.TensorType(ir.DataType.INT64)
        graph.append(shape)
        graph.outputs.append(shape.outputs[0])
        fetches.append((str(switch.outputs[1].name), str(switch.outputs[2].name), shape.outputs[0].name))
    return _Probe(result.model, result.flag, fetches)


def _add_batch(
    combiner: _Combiner, label: str, index: int, mean: np.ndarray, var: np.ndarray, shape: np.ndarray, running_var: str
) -> None:
    """One batch's statistics of one BN into its combiner, in float64, the variance unbiased if asked."""
    mean, var = mean.astype(np.float64), var.astype(np.float64)
    if not (np.isfinite(mean).all() and np.isfinite(var).all()):
        raise NormfoldError(
            f"calibration batch {index} (counting from 0) gives BatchNormalization '{label}' NaN or "
            "infinite batch statistics (its input overflows its type or holds NaN)"
        )
    count = int(np.prod(shape)) // int(shape[1])
    if running_var == "unbiased":
        if count < 2:
            raise NormfoldError(
                f"calibration batch {index} (counting from 0) gives BatchNormalization '{label}' "
                f"{count} value(s) per channel; the unbiased variance n/(n-1) needs at least 2"
            )
        var = var * (count / (count - 1))
    combiner.add(count, mean, var)


def _stored(bn: ir.Node, index: int) -> np.ndarray:
    array = constant_array(bn.inputs[index])
    if array is None:
        raise NormfoldError(f"BatchNormalization '{node_label(bn)}' has no constant running statistics to start from")
    return array.astype(np.float64)


def _dtype(value: ir.Value | None) -> np.dtype:
    """The stored statistic's numpy dtype (also behind an untyped Identity chain), float32 if unknown."""
    if value is not None and value.dtype is not None:
        return np.dtype(value.dtype.numpy())
    array = constant_array(value)
    return np.dtype(np.float32) if array is None else array.dtype


def _write(
    base: ir.Model,
    bns: list[ir.Node],
    stats: list[tuple[np.ndarray, np.ndarray]],
    method: str,
    running_var: str,
    batches: int,
) -> CalibrationResult:
    """`base` (normfold's own copy) in inference mode, each BN reading its new statistics, rounded once."""
    names = NameSource(base)
    scope = Scope("main", base.graph, base.opset_imports.get("", 1))
    records, statistics, replaced = [], {}, []
    for bn, (mean, var) in zip(bns, stats, strict=True):
        label = node_label(bn)
        for index, array, kind in ((3, mean, "mean"), (4, var, "var")):
            rounded = array.astype(_dtype(bn.inputs[index]))
            value = add_constant(scope, bn, rounded, names.fresh(f"{label}_calibrated_{kind}"), names)
            replaced.append(bn.inputs[index])
            bn.replace_input_with(index, value)
        statistics[label] = (mean, var)
        records.append(
            NodeRecord(
                "main",
                label,
                "BatchNormalization",
                "converted",
                f"running statistics re-estimated from {batches} batch(es) ({method}, {running_var} variance)",
            )
        )
    drop_if_unused(replaced)
    inference = SetInferenceModePass()(base).model
    return CalibrationResult(inference, statistics, records, batches)
