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


def fails_on_bright_frames(seed: int = 0, threshold: float = 0.9) -> onnx.ModelProto:
    """:func:`tiny_classifier` whose last Gather fails at run time on a bright frame.

    The logits are gathered at indices 0..9 + 100 * k, k = 1 when the mean of the normalised
    input is above ``threshold`` (a white frame is 1.0; the smoke test's synthetic frames are
    near 0), so the model passes its smoke test and onnxruntime raises (index out of bounds)
    on a white camera.  Static shapes are unchanged: the card check passes.
    """
    model = tiny_classifier(seed=seed)
    graph = model.graph
    graph.node[-1].output[0] = "pre"  # the Gemm's logits feed the Gather now
    consts = [
        numpy_helper.from_array(np.array(threshold, dtype=np.float32), "threshold"),
        numpy_helper.from_array(np.arange(10, dtype=np.int64), "indices"),
        numpy_helper.from_array(np.array(100, dtype=np.int64), "hundred"),
    ]
    graph.initializer.extend(consts)
    graph.node.extend(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
            helper.make_node("Greater", ["mean", "threshold"], ["bright"]),
            helper.make_node("Cast", ["bright"], ["k"], to=TensorProto.INT64),
            helper.make_node("Mul", ["k", "hundred"], ["offset"]),
            helper.make_node("Add", ["indices", "offset"], ["picked"]),
            helper.make_node("Gather", ["pre", "picked"], ["logits"], axis=1),
        ]
    )
    onnx.checker.check_model(model)
    return model
