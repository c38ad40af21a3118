"""Build normfold's small example models deterministically (seeded numpy, onnx.helper).

    python models/build_examples.py      # writes the .onnx files next to this script

- resnet_block.onnx:      ResNet-style CNN: Conv-BN-ReLU blocks, residual Adds, a strided block with
                          a 1x1 Conv+BN shortcut, global pooling, Dropout before the classifier Gemm.
- mlp.onnx:               MLP with BN on 2-D activations: MatMul+Add bias -> BN, Gemm -> BN, Dropouts.
- training_export.onnx:   exported in training form: BN with training_mode=1 and running-statistics
                          outputs, Dropout with a constant true training_mode.
All BN statistics are non-trivial (mean != 0, var != 1), so folding is really exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
IR_VERSION = 8


class GraphBuilder:
    """Accumulates nodes and seeded initializers for one graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        """A fresh name with the given prefix."""
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        """Register an initializer and return its name."""
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.array(array, copy=True), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs: object) -> list[str]:
        """Append a node; returns its output names."""
        name = self.name(op.lower())
        outputs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1, bias: bool = False) -> str:
        """Conv with 'same' padding and He-initialised weights."""
        w = self.rng.normal(0, np.sqrt(2 / (c_in * k * k)), (c_out, c_in, k, k)).astype(np.float32)
        inputs = [x, self.const(w, "conv_w")]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.1, c_out).astype(np.float32), "conv_b"))
        pad = k // 2
        return self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)[0]

    def batchnorm(self, x: str, c: int, **attrs: object) -> str:
        """BatchNormalization with seeded, non-trivial statistics."""
        params = [
            self.rng.uniform(0.5, 1.5, c),
            self.rng.normal(0, 0.2, c),
            self.rng.normal(0, 0.5, c),
            self.rng.uniform(0.5, 2.0, c),
        ]
        names = [
            self.const(p.astype(np.float32), n) for p, n in zip(params, ("bn_scale", "bn_bias", "bn_mean", "bn_var"))
        ]
        return self.node("BatchNormalization", [x, *names], epsilon=1e-5, **attrs)[0]

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], opset: int, name: str
    ) -> onnx.ModelProto:
        """The finished, checked model."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="normfold-examples"
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def resnet_block() -> onnx.ModelProto:
    """ResNet-style CNN, 3x32x32 input, 10 classes, opset 17."""
    g = GraphBuilder(seed=1)
    x = g.node("Relu", [g.batchnorm(g.conv("input", 3, 16, 3), 16)])[0]
    for c_in, c_out, stride in ((16, 16, 1), (16, 32, 2)):
        h = g.node("Relu", [g.batchnorm(g.conv(x, c_in, c_out, 3, stride), c_out)])[0]
        h = g.batchnorm(g.conv(h, c_out, c_out, 3), c_out)
        shortcut = x if stride == 1 else g.batchnorm(g.conv(x, c_in, c_out, 1, stride), c_out)
        x = g.node("Relu", [g.node("Add", [h, shortcut])[0]])[0]
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [x])[0]], axis=1)[0]
    ratio = g.const(np.array(0.2, dtype=np.float32), "dropout_ratio")
    dropped = g.node("Dropout", [pooled, ratio])[0]
    w = g.const(g.rng.normal(0, 0.1, (10, 32)).astype(np.float32), "fc_w")
    b = g.const(g.rng.normal(0, 0.1, 10).astype(np.float32), "fc_b")
    logits = g.node("Gemm", [dropped, w, b], transB=1)[0]
    g.nodes[-1].output[0] = "logits"
    del logits
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])]
    return g.model(inputs, outputs, 17, "resnet_block")


def mlp() -> onnx.ModelProto:
    """MLP 32 -> 64 -> 48 -> 10 with BN on 2-D activations and Dropout, opset 13."""
    g = GraphBuilder(seed=2)
    w1 = g.const(g.rng.normal(0, 0.2, (32, 64)).astype(np.float32), "fc1_w")
    b1 = g.const(g.rng.normal(0, 0.1, 64).astype(np.float32), "fc1_b")
    h = g.node("Add", [g.node("MatMul", ["features", w1])[0], b1])[0]
    h = g.node("Relu", [g.batchnorm(h, 64)])[0]
    h = g.node("Dropout", [h, g.const(np.array(0.5, dtype=np.float32), "ratio")])[0]
    w2 = g.const(g.rng.normal(0, 0.2, (48, 64)).astype(np.float32), "fc2_w")
    b2 = g.const(g.rng.normal(0, 0.1, 48).astype(np.float32), "fc2_b")
    h = g.node("Relu", [g.batchnorm(g.node("Gemm", [h, w2, b2], transB=1)[0], 48)])[0]
    false = g.const(np.array(False), "training_mode")
    h = g.node("Dropout", [h, g.const(np.array(0.1, dtype=np.float32), "ratio"), false])[0]
    w3 = g.const(g.rng.normal(0, 0.2, (48, 10)).astype(np.float32), "fc3_w")
    g.node("MatMul", [h, w3])
    g.nodes[-1].output[0] = "scores"
    inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 32])]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])]
    return g.model(inputs, outputs, 13, "mlp")


def training_export() -> onnx.ModelProto:
    """Conv-BN-ReLU-Dropout-Gemm as a training-mode export writes it (opset 15)."""
    g = GraphBuilder(seed=3)
    h = g.conv("input", 3, 8, 3, bias=True)
    h = g.batchnorm(h, 8, training_mode=1)
    bn = g.nodes[-1]
    bn.output.extend([f"{bn.name}_running_mean", f"{bn.name}_running_var"])
    h = g.node("Relu", [h])[0]
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [h])[0]], axis=1)[0]
    true = g.const(np.array(True), "training_mode")
    dropped = g.node("Dropout", [pooled, g.const(np.array(0.3, dtype=np.float32), "ratio"), true], n_out=2)[0]
    w = g.const(g.rng.normal(0, 0.2, (4, 8)).astype(np.float32), "fc_w")
    g.node("Gemm", [dropped, w], transB=1)
    g.nodes[-1].output[0] = "logits"
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])]
    return g.model(inputs, outputs, 15, "training_export")


EXAMPLES = {"resnet_block": resnet_block, "mlp": mlp, "training_export": training_export}


def main() -> None:
    """Write every example next to this script."""
    for name, build in EXAMPLES.items():
        path = HERE / f"{name}.onnx"
        onnx.save(build(), path)
        print(f"wrote {path.relative_to(HERE.parent)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
