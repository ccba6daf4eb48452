"""Small real ONNX models built with onnx.helper, with cards that describe them.

Fixed seeds: the same bytes every run.  Used where a test needs a model the
shipped ones don't cover (e.g. a card mismatch, a raw decoder on an unseen model).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_classifier(classes: int = 10, size: int = 32, seed: int = 0, channels: int = 3) -> onnx.ModelProto:
    """input (1,channels,size,size) float32 -> Conv(8) -> Relu -> GlobalAveragePool -> Gemm -> logits (1,classes)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, size=(8, channels, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, size=(8,)).astype(np.float32)
    w2 = rng.normal(0, 0.5, size=(classes, 8)).astype(np.float32)
    b2 = rng.normal(0, 0.1, size=(classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g1"]),
        helper.make_node("Flatten", ["g1"], ["f1"]),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model_and_card(
    folder: Path,
    model: onnx.ModelProto,
    *,
    name: str = "tiny",
    decoder: str = 'kind = "classification"\ntop_k = 3',
    input_shape: str = "[1, 3, 32, 32]",
    output_name: str = "logits",
    output_shape: str = "[1, 10]",
    extra: str = "",
) -> Path:
    """Write NAME.onnx and NAME.toml into ``folder``; returns the card path."""
    data = model.SerializeToString()
    (folder / f"{name}.onnx").write_bytes(data)
    card = folder / f"{name}.toml"
    card.write_text(
        f'''id = "{name}"
version = "1.0.0"
format = "onnx"
file = "{name}.onnx"
sha256 = "{hashlib.sha256(data).hexdigest()}"
license = "CC0-1.0"
source = "tests/support/onnx_models.py"
{extra}
[input]
name = "input"
shape = {input_shape}
layout = "NCHW"
dtype = "float32"
mean = [127.5]
std = [127.5]

[[outputs]]
name = "{output_name}"
shape = {output_shape}

[decoder]
{decoder}
''',
        encoding="utf-8",
    )
    return card
