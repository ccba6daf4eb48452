"""A tiny fp32 classifier and its card, the input of ``edgeproof quantize`` in the tests.

``tiny_classifier`` writes Conv(3->8, 3x3, stride 2) + Relu + GlobalAveragePool + Flatten +
Gemm(8->4) on 1x3x32x32 with a fixed seed (the same bytes every run); ``write_card`` puts it,
its labels and a card that vouches for its sha256 in a directory.  Shared by
tests/unit/test_quantize.py, tests/integration/test_quantize_cli.py and test_infer_cli.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 4


def tiny_classifier(path: Path, seed: int = 0, *, near_tie: bool = False) -> None:
    """Conv(3->8, 3x3, stride 2) + Relu + GlobalAveragePool + Flatten + Gemm(8->4) on 1x3x32x32.

    ``near_tie``: the classifier rows differ by ~1e-3, so the fp32 winner is decided by
    differences int8 cannot represent: quantization must disagree with the float model.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, (8,)).astype(np.float32)
    fc = rng.normal(0, 2.0, (CLASSES, 8)).astype(np.float32)
    if near_tie:
        fc = (fc[:1] + rng.normal(0, 1e-3, (CLASSES, 8))).astype(np.float32)
    fb = np.zeros((CLASSES,), np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"), (fb, "fb"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_card(
    directory: Path,
    *,
    decoder: str = 'kind = "classification"\nlabels = "labels.txt"',
    near_tie: bool = False,
) -> Path:
    model = directory / "tiny-fp32.onnx"
    tiny_classifier(model, near_tie=near_tie)
    (directory / "labels.txt").write_text("a\nb\nc\nd\n", encoding="utf-8")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    card = directory / "tiny-fp32.toml"
    card.write_text(
        f"""id = "tiny-fp32"
version = "1"
format = "onnx"
file = "tiny-fp32.onnx"
sha256 = "{digest}"
license = "Apache-2.0"
source = "built by tests/support/quantize_cards.py"
description = "tiny test classifier"

[input]
name = "input"
shape = [1, 3, 32, 32]
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]

[[outputs]]
name = "logits"
shape = [1, {CLASSES}]

[decoder]
{decoder}
""",
        encoding="utf-8",
    )
    return card
