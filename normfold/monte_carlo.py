"""Monte Carlo Dropout (seed 2.4): BN in inference mode, Dropout active, N seeded passes on ONNX Runtime.

Masks follow the seed's inverted Dropout exactly: m ~ Bernoulli(p), y = m / p * x, with the keep
probability p = 1 - ratio (ONNX's `ratio` is the drop probability). They are drawn by numpy from
`seed` and fed to the model, each Dropout replaced by a Mul with its mask input, because ONNX
Runtime's own CPU Dropout is biased: measured with onnxruntime 1.31.1, element 0 of its mask is false
on every run. The same seed gives the same passes on every build and provider. Mean and standard
deviation per output element are accumulated in float64 (Welford).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from normfold.errors import NormfoldError
from normfold.graph_edit import constant_array, take_over
from normfold.graph_walk import is_op, node_label
from normfold.passes.set_inference_mode import SetInferenceModePass

ONNX_DEFAULT_RATIO = 0.5


@dataclasses.dataclass
class MonteCarloResult:
    """Per output name: the mean and the standard deviation over the passes."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    passes: int
    dropouts: list[str]


@dataclasses.dataclass(frozen=True)
class _Site:
    """A Dropout replaced by `x * mask`: its name, drop ratio, and the graph input/output used for it."""

    label: str
    ratio: float
    mask_input: str
    probe_output: str


def masked_model(model: ir.Model) -> tuple[ir.Model, ir.Model, list[_Site]]:
    """(probe, masked): the inference model exposing each Dropout's input, and one taking masks as inputs."""
    inference = SetInferenceModePass()(model).model
    probe = inference.clone()
    sites = []
    for node in [n for n in inference.graph if is_op(n, "Dropout")]:
        label = node_label(node)
        ratio_value = node.inputs[1] if len(node.inputs) > 1 else None
        ratio = ONNX_DEFAULT_RATIO if ratio_value is None else constant_array(ratio_value)
        if ratio is None or not 0 <= float(ratio) < 1:
            raise NormfoldError(f"Dropout '{label}' has no constant ratio in [0, 1) to sample masks with")
        if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
            raise NormfoldError(f"Dropout '{label}' has its mask output in use; Monte Carlo Dropout replaces it")
        x = node.inputs[0]
        mask = ir.Value(name=f"{label}.mc_mask", type=x.type, shape=x.shape)
        inference.graph.inputs.append(mask)
        product = ir.Node("", "Mul", [x, mask], name=f"{label}.mc_dropout")
        inference.graph.insert_before(node, product)
        take_over(node.outputs[0], product.outputs[0])
        inference.graph.remove(node, safe=True)
        sites.append(_Site(label, float(ratio), mask.name, x.name or ""))
    if not sites:
        raise NormfoldError("the model has no Dropout in its main graph: Monte Carlo Dropout needs at least one")
    by_name = {v.name: v for n in probe.graph for v in n.outputs}
    by_name.update({v.name: v for v in probe.graph.inputs})
    for site in sites:
        probe.graph.outputs.append(by_name[site.probe_output])
    return probe, inference, sites


def monte_carlo(model: ir.Model, feeds: dict[str, np.ndarray], *, passes: int = 50, seed: int = 0,
                provider: str = "cpu") -> MonteCarloResult:
    """Run `passes` stochastic forward passes on `feeds` and summarize every output."""
    if passes < 2:
        raise NormfoldError("Monte Carlo Dropout needs at least 2 passes (--samples)", exit_code=2)
    probe, masked, sites = masked_model(model)
    from normfold.validate.providers import open_session

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="normfold-mc-") as folder:
        shapes = _dropout_input_shapes(probe, feeds, len(sites), Path(folder), provider)
        inputs = {v.name: v for v in masked.graph.inputs}
        for site, (shape, dtype) in zip(sites, shapes):
            inputs[site.mask_input].type = ir.TensorType(ir.DataType.from_numpy(dtype))
            inputs[site.mask_input].shape = ir.Shape(list(shape))
        path = Path(folder) / "mc.onnx"
        ir.save(masked, path, external_data="mc.onnx.data")
        session = open_session(path, provider)
        names = [o.name for o in session.get_outputs()]
        count, mean, m2 = 0, None, None
        for _ in range(passes):
            masks = {s.mask_input: _mask(rng, shape, dtype, s.ratio) for s, (shape, dtype) in zip(sites, shapes)}
            outputs = [o.astype(np.float64) for o in session.run(None, {**feeds, **masks})]
            count += 1
            if mean is None:
                mean, m2 = outputs, [np.zeros_like(o) for o in outputs]
                continue
            for index, value in enumerate(outputs):
                delta = value - mean[index]
                mean[index] = mean[index] + delta / count
                m2[index] = m2[index] + delta * (value - mean[index])
    std = [np.sqrt(m / (count - 1)) for m in m2]
    return MonteCarloResult(dict(zip(names, mean)), dict(zip(names, std)), passes, [s.label for s in sites])


def _dropout_input_shapes(probe: ir.Model, feeds, count: int, folder: Path, provider: str):
    from normfold.validate.providers import open_session

    path = folder / "probe.onnx"
    ir.save(probe, path, external_data="probe.onnx.data")
    outputs = open_session(path, provider).run(None, feeds)
    return [(o.shape, o.dtype) for o in outputs[len(outputs) - count:]]


def _mask(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, ratio: float) -> np.ndarray:
    """Seed 2.2: m ~ Bernoulli(p) with p = 1 - ratio, scaled by 1/p (inverted Dropout)."""
    keep = 1.0 - ratio
    return ((rng.random(shape) < keep) / keep).astype(dtype)
