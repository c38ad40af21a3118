"""Deterministic benchmark models (seeded numpy, onnx.helper; no downloads, no torch).

Every builder returns a checked `onnx.ModelProto` with a symbolic batch dimension and non-trivial
BatchNormalization statistics (mean != 0, var != 1). `write_models` saves them into a folder, the
ones over EXTERNAL_DATA_BYTES with their tensors in `<name>.onnx.data` beside them, and adds the
committed PyTorch exports from `models/`.

- resnet18, resnet50:  torchvision layouts (basic blocks / bottlenecks), 3x224x224, 1000 classes.
- mobilenetv2:         inverted residuals with depthwise Conv+BN, Clip(0, 6), Dropout before the Gemm.
- vgg16_bn:            13 Conv-BN-ReLU, then Gemm-ReLU-Dropout twice and a Gemm: 553 MB, external data.
- unet:                encoder / decoder, ConvTranspose+BN+ReLU upsampling, skip Concats, 3x128x128.
- deeplab:             DeepLabV3-MobileNetV3-Large shape: stride-16 depthwise backbone to 960 channels at
                       20x20, ASPP with dilations 12/24/36 and a global-pool branch, Resize to 3x320x320.
- mlp:                 MatMul+Add -> BN (2-D), Gemm -> BN, Dropouts.
- stack{N}:            N x (Conv 3x3 8->8 + BN + ReLU) on 8x16x16; each layer contracts (BN scale
                       0.15-0.3, positive shift), so a 5000-layer stack neither overflows nor vanishes
                       and its rounding errors stay at float32 level.
- big (optional):      MatMul with a 16384 x 33000 weight (2.16 GB) -> BN, external data.

For the scale tables (`run.py --scale-only`), written into the work folder, never committed:
- scale_one, scale_forty, scale_4000: about 450 MB of Conv 3x3 C->C + BN layers split into one weight
                       (C 3535), forty of 11 MB (C 553) or four thousand of 0.11 MB (C 56); each saved with
                       external data and inline.
- small0 ... small49:  a small CNN (five Conv+BN+ReLU, 16 to 64 channels, Gemm), seeded apart: the folder
                       of small models folded in one invocation.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
OPSET, IR_VERSION = 17, 8
EXTERNAL_DATA_BYTES = 400 * 2**20
TORCHVISION_EXPORTS = ("torchvision_resnet_eval", "torchvision_mobilenetv3_eval")


class Builder:
    """Nodes and seeded initializers of one graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        name = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        k: int,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
        dilation: int = 1,
    ) -> str:
        fan_in = c_in // group * k * k
        w = self.rng.standard_normal((c_out, c_in // group, k, k), dtype=np.float32) * np.float32(np.sqrt(2 / fan_in))
        inputs = [x, self.const(w, "w")]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.1, c_out).astype(np.float32), "b"))
        dilated = {"dilations": [dilation, dilation]} if dilation != 1 else {}
        return self.node(
            "Conv",
            inputs,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[dilation * (k // 2)] * 4,
            group=group,
            **dilated,
        )

    def conv_transpose(self, x: str, c_in: int, c_out: int) -> str:
        w = self.rng.standard_normal((c_in, c_out, 2, 2), dtype=np.float32) * np.float32(np.sqrt(1 / c_in))
        return self.node("ConvTranspose", [x, self.const(w, "wt")], kernel_shape=[2, 2], strides=[2, 2])

    def batchnorm(self, x: str, c: int, contractive: bool = False) -> str:
        scale = self.rng.uniform(0.15, 0.3, c) if contractive else self.rng.uniform(0.5, 1.5, c)
        bias = self.rng.normal(0.5, 0.2, c) if contractive else self.rng.normal(0, 0.2, c)
        mean, var = self.rng.normal(0, 0.5, c), self.rng.uniform(0.5, 2.0, c)
        names = [self.const(p.astype(np.float32), n) for p, n in zip((scale, bias, mean, var), ("s", "bb", "m", "v"))]
        return self.node("BatchNormalization", [x, *names], epsilon=1e-5)

    def conv_bn(
        self,
        x: str,
        c_in: int,
        c_out: int,
        k: int,
        stride: int = 1,
        group: int = 1,
        act: str | None = "Relu",
        dilation: int = 1,
    ) -> str:
        y = self.batchnorm(self.conv(x, c_in, c_out, k, stride, group, dilation=dilation), c_out)
        if act == "Relu":
            return self.node("Relu", [y])
        if act == "Relu6":
            return self.node("Clip", [y, self.const(np.float32(0), "lo"), self.const(np.float32(6), "hi")])
        return y

    def gemm(self, x: str, n_in: int, n_out: int) -> str:
        w = self.rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(np.sqrt(2 / n_in))
        b = self.rng.normal(0, 0.1, n_out).astype(np.float32)
        return self.node("Gemm", [x, self.const(w, "fc_w"), self.const(b, "fc_b")], transB=1)

    def dropout(self, x: str) -> str:
        return self.node("Dropout", [x, self.const(np.float32(0.5), "ratio")])

    def upsample(self, x: str, factor: int) -> str:
        """Bilinear Resize by `factor` in H and W (half_pixel: PyTorch's interpolate with align_corners=False)."""
        scales = self.const(np.array([1, 1, factor, factor], dtype=np.float32), "scales")
        return self.node("Resize", [x, "", scales], mode="linear")

    def model(self, name: str, x_shape: list[int | str], out: str, out_shape: list[int | str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="normfold-bench")
        model.ir_version = IR_VERSION
        return model


def _classifier(b: Builder, x: str, c: int, classes: int = 1000, dropout: bool = False) -> str:
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    return b.gemm(b.dropout(x) if dropout else x, c, classes)


def resnet(depth: int) -> onnx.ModelProto:
    """torchvision's ResNet-18 (basic blocks) or ResNet-50 (bottlenecks), 224x224."""
    b = Builder(depth)
    blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}[depth]
    expansion = 1 if depth == 18 else 4
    x = b.conv_bn("input", 3, 64, 7, 2)
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for stage, count in enumerate(blocks):
        width = 64 * 2**stage
        for i in range(count):
            stride = 2 if stage and not i else 1
            c_out = width * expansion
            if depth == 18:
                y = b.conv_bn(b.conv_bn(x, c_in, width, 3, stride), width, width, 3, act=None)
            else:
                y = b.conv_bn(b.conv_bn(x, c_in, width, 1), width, width, 3, stride)
                y = b.conv_bn(y, width, c_out, 1, act=None)
            shortcut = b.conv_bn(x, c_in, c_out, 1, stride, act=None) if stride != 1 or c_in != c_out else x
            x, c_in = b.node("Relu", [b.node("Add", [y, shortcut])]), c_out
    return b.model(f"resnet{depth}", ["batch", 3, 224, 224], _classifier(b, x, c_in), ["batch", 1000])


def mobilenetv2() -> onnx.ModelProto:
    """torchvision's MobileNetV2 layout: inverted residuals, depthwise 3x3, ReLU6 as Clip."""
    b = Builder(2)
    x, c_in = b.conv_bn("input", 3, 32, 3, 2, act="Relu6"), 32
    for t, c, n, s in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]:
        for i in range(n):
            stride, hidden = s if i == 0 else 1, c_in * t
            y = b.conv_bn(x, c_in, hidden, 1, act="Relu6") if t != 1 else x
            y = b.conv_bn(y, hidden, hidden, 3, stride, group=hidden, act="Relu6")
            y = b.conv_bn(y, hidden, c, 1, act=None)
            x, c_in = (b.node("Add", [x, y]) if stride == 1 and c_in == c else y), c
    x = b.conv_bn(x, c_in, 1280, 1, act="Relu6")
    return b.model("mobilenetv2", ["batch", 3, 224, 224], _classifier(b, x, 1280, dropout=True), ["batch", 1000])


def vgg16_bn() -> onnx.ModelProto:
    """torchvision's VGG-16-BN: 13 Conv-BN-ReLU, max pools, classifier with Dropout before each later Gemm."""
    b = Builder(16)
    x, c_in = "input", 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        else:
            x, c_in = b.conv_bn(x, c_in, int(v), 3), int(v)
    x = b.node("Flatten", [x])
    x = b.dropout(b.node("Relu", [b.gemm(x, 512 * 7 * 7, 4096)]))
    x = b.dropout(b.node("Relu", [b.gemm(x, 4096, 4096)]))
    return b.model("vgg16_bn", ["batch", 3, 224, 224], b.gemm(x, 4096, 1000), ["batch", 1000])


def unet(base: int = 32, levels: int = 4) -> onnx.ModelProto:
    """U-Net: double Conv-BN-ReLU per level, ConvTranspose(2x2, stride 2)+BN+ReLU up, skip Concats."""
    b = Builder(7)
    x, c_in, skips = "input", 3, []
    for level in range(levels):
        c = base * 2**level
        x = b.conv_bn(b.conv_bn(x, c_in, c, 3), c, c, 3)
        skips.append((x, c))
        x, c_in = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), c
    c = base * 2**levels
    x, c_in = b.conv_bn(b.conv_bn(x, c_in, c, 3), c, c, 3), c
    for skip, c in reversed(skips):
        up = b.node("Relu", [b.batchnorm(b.conv_transpose(x, c_in, c), c)])
        x = b.node("Concat", [up, skip], axis=1)
        x, c_in = b.conv_bn(b.conv_bn(x, 2 * c, c, 3), c, c, 3), c
    out = b.conv(x, c_in, 2, 1, bias=True)
    return b.model("unet", ["batch", 3, 128, 128], out, ["batch", 2, 128, 128])


def deeplab(classes: int = 21) -> onnx.ModelProto:
    """torchvision's DeepLabV3-MobileNetV3-Large shape, 320x320: a stride-16 backbone (depthwise-separable
    Conv+BN+ReLU) to 960 channels at 20x20, ASPP (1x1, 3x3 dilated 12/24/36, global pool -> 1x1 -> Resize;
    256 each), Concat, 1x1 projection + Dropout, 3x3 head, 1x1 classifier, bilinear Resize to 320x320."""
    b = Builder(21)
    x, c_in = b.conv_bn("input", 3, 16, 3, 2), 16
    for c, stride in [(24, 2), (40, 2), (80, 2), (112, 1), (160, 1)]:
        x = b.conv_bn(x, c_in, c_in, 3, stride, group=c_in)
        x, c_in = b.conv_bn(x, c_in, c, 1, act=None), c
    x = b.conv_bn(x, c_in, 960, 1)
    branches = [b.conv_bn(x, 960, 256, 1)] + [b.conv_bn(x, 960, 256, 3, dilation=d) for d in (12, 24, 36)]
    branches.append(b.upsample(b.conv_bn(b.node("GlobalAveragePool", [x]), 960, 256, 1), 20))
    x = b.dropout(b.conv_bn(b.node("Concat", branches, axis=1), 5 * 256, 256, 1))
    x = b.conv(b.conv_bn(x, 256, 256, 3), 256, classes, 1, bias=True)
    return b.model("deeplab", ["batch", 3, 320, 320], b.upsample(x, 16), ["batch", classes, 320, 320])


def mlp() -> onnx.ModelProto:
    """784 -> 1024 -> 1024 -> 10: MatMul+Add -> BN -> ReLU -> Dropout, Gemm -> BN -> ReLU -> Dropout, Gemm."""
    b = Builder(3)
    w = b.rng.standard_normal((784, 1024), dtype=np.float32) * np.float32(np.sqrt(2 / 784))
    x = b.node(
        "Add",
        [
            b.node("MatMul", ["input", b.const(w, "mm_w")]),
            b.const(b.rng.normal(0, 0.1, 1024).astype(np.float32), "mm_b"),
        ],
    )
    x = b.dropout(b.node("Relu", [b.batchnorm(x, 1024)]))
    x = b.dropout(b.node("Relu", [b.batchnorm(b.gemm(x, 1024, 1024), 1024)]))
    return b.model("mlp", ["batch", 784], b.gemm(x, 1024, 10), ["batch", 10])


def stack(depth: int, channels: int = 8, size: int = 16) -> onnx.ModelProto:
    """`depth` x (Conv 3x3 + BN + ReLU). Each layer is a contraction (BN scale / sqrt(var) about 0.2)
    with a positive BN shift, so activations stay O(1) and rounding errors do not grow with depth."""
    b = Builder(depth)
    x = "input"
    for _ in range(depth):
        x = b.node("Relu", [b.batchnorm(b.conv(x, channels, channels, 3), channels, contractive=True)])
    return b.model(f"stack{depth}", ["batch", channels, size, size], x, ["batch", channels, size, size])


def write_big(path: Path, k: int = 16384, n: int = 33000) -> None:
    """MatMul with a k x n float32 weight (2.16 GB by default) then a 2-D BN, written with external data.

    Built with onnx_ir, because a ModelProto over 2 GB cannot be serialized.
    """
    g = np.random.default_rng(5)

    def initializer(name: str, array: np.ndarray) -> ir.Value:
        tensor = ir.tensor(array, name=name)
        return ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape, const_value=tensor)

    weight = initializer("w", g.standard_normal((k, n), dtype=np.float32))
    params = [
        initializer(name, a.astype(np.float32))
        for name, a in (
            ("scale", g.uniform(0.5, 1.5, n)),
            ("bias", g.normal(0, 0.2, n)),
            ("mean", g.normal(0, 0.5, n)),
            ("var", g.uniform(0.5, 2.0, n)),
        )
    ]
    x = ir.Value(name="input", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["batch", k]))
    matmul = ir.Node("", "MatMul", [x, weight], name="matmul")
    bn = ir.Node("", "BatchNormalization", [matmul.outputs[0], *params], name="bn")
    y = bn.outputs[0]
    y.name, y.type, y.shape = "output", ir.TensorType(ir.DataType.FLOAT), ir.Shape(["batch", n])
    graph = ir.Graph([x], [y], nodes=[matmul, bn], initializers=[weight, *params], opset_imports={"": 17}, name="big")
    ir.save(ir.Model(graph, ir_version=8), path, external_data=f"{path.name}.data")


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet18": lambda: resnet(18),
    "resnet50": lambda: resnet(50),
    "mobilenetv2": mobilenetv2,
    "vgg16_bn": vgg16_bn,
    "unet": unet,
    "deeplab": deeplab,
    "mlp": mlp,
    "stack100": lambda: stack(100),
    "stack1000": lambda: stack(1000),
    "stack5000": lambda: stack(5000),
}
QUICK = ("resnet18", "mlp", "stack100", "torchvision_resnet_eval")


def write_model(name: str, folder: Path) -> Path:
    """`folder/name.onnx`, built (or copied from models/) unless it is already there."""
    path = folder / f"{name}.onnx"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    if name in TORCHVISION_EXPORTS:
        shutil.copyfile(REPO / "models" / f"{name}.onnx", path)
        return path
    if name == "big":
        staged = path.with_suffix(".tmp")
        write_big(staged)
        staged.with_name(f"{staged.name}.data").rename(path.with_name(f"{path.name}.data"))
        model = onnx.load(str(staged), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = f"{path.name}.data"
        onnx.save(model, str(path))
        staged.unlink()
        return path
    model = BUILDERS[name]()
    external = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    staged = path.with_suffix(".tmp")
    if external:
        onnx.save(model, staged, save_as_external_data=True, location=f"{name}.onnx.data", size_threshold=1024)
    else:
        onnx.save(model, staged)
    del model
    if not external:
        onnx.checker.check_model(str(staged), full_check=True)
    staged.rename(path)
    return path


def model_names(quick: bool, with_big: bool) -> list[str]:
    """The models a run covers, in order."""
    names = list(QUICK) if quick else [*BUILDERS, *TORCHVISION_EXPORTS]
    return names + ["big"] if with_big else names


def model_bytes(path: Path) -> int:
    """The model file plus its external data file, if any."""
    data = path.with_name(f"{path.name}.data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def has_external_data(path: Path) -> bool:
    return path.with_name(f"{path.name}.data").exists()


# name -> (layers, channels): about 450 MB of Conv 3x3 weights, split three ways.
SCALE_SHAPES = {"scale_one": (1, 3535), "scale_forty": (40, 553), "scale_4000": (4000, 56)}
SMALL_MODELS = 50


def conv_chain(name: str, layers: int, channels: int) -> onnx.ModelProto:
    """`layers` x (Conv 3x3 channels->channels + BN) on channels x 4 x 4: every weight the same size."""
    b = Builder(layers)
    x = "input"
    for _ in range(layers):
        x = b.batchnorm(b.conv(x, channels, channels, 3), channels)
    return b.model(name, ["batch", channels, 4, 4], x, ["batch", channels, 4, 4])


def write_scale_models(folder: Path) -> list[Path]:
    """Each scale shape saved twice, `<name>_external.onnx` (tensors of 1 KiB or more in `.data`) and
    `<name>_inline.onnx`, unless already there; built once per shape (the inline file is written first:
    saving with external data moves the proto's data out)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (layers, channels) in SCALE_SHAPES.items():
        external, inline = folder / f"{name}_external.onnx", folder / f"{name}_inline.onnx"
        if not (external.exists() and inline.exists()):
            model = conv_chain(name, layers, channels)
            onnx.save(model, inline)
            onnx.save(
                model, external, save_as_external_data=True, location=f"{external.name}.data", size_threshold=1024
            )
            del model
        paths += [external, inline]
    return paths


def small_cnn(seed: int) -> onnx.ModelProto:
    """A small CNN on 3x64x64: five Conv+BN+ReLU (16, 32, 32, 64, 64 channels), global pool, Gemm to 10."""
    b = Builder(1000 + seed)
    x, c_in = "input", 3
    for c_out, stride in ((16, 2), (32, 2), (32, 1), (64, 2), (64, 1)):
        x, c_in = b.conv_bn(x, c_in, c_out, 3, stride), c_out
    return b.model(f"small{seed}", ["batch", 3, 64, 64], _classifier(b, x, c_in, classes=10), ["batch", 10])


def write_small_models(folder: Path, count: int = SMALL_MODELS) -> list[Path]:
    """`folder/small<i>.onnx` for i < count (and nothing else there), unless already written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"small{seed}.onnx" for seed in range(count)]
    for seed, path in enumerate(paths):
        if not path.exists():
            onnx.save(small_cnn(seed), path)
    return paths
