"""Small real TFLite models written at test time with the flatbuffer schema in ai_edge_litert.

No .tflite test file ships with any installed package, and TensorFlow is not
installed, so these are built directly from the TFLite schema
(``ai_edge_litert.schema_py_generated``, object API) with builtin ops only.
Fixed seeds: the same bytes every run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

_TYPES = {"float32": schema.TensorType.FLOAT32, "uint8": schema.TensorType.UINT8}


def _tensor(
    name: str,
    shape: list[int],
    dtype: str = "float32",
    buffer: int = 0,
    quant: tuple[float, int] | None = None,
) -> schema.TensorT:
    tensor = schema.TensorT()
    tensor.name = name
    tensor.shape = list(shape)
    tensor.type = _TYPES[dtype]
    tensor.buffer = buffer
    if quant is not None:
        params = schema.QuantizationParametersT()
        params.scale = [quant[0]]
        params.zeroPoint = [quant[1]]
        tensor.quantization = params
    return tensor


def _buffer(data: bytes = b"") -> schema.BufferT:
    buffer = schema.BufferT()
    if data:
        buffer.data = list(data)
    return buffer


def _opcode(code: int) -> schema.OperatorCodeT:
    opcode = schema.OperatorCodeT()
    opcode.builtinCode = code
    opcode.deprecatedBuiltinCode = min(code, 127)
    opcode.version = 1
    return opcode


def _op(
    opcode: int, inputs: list[int], outputs: list[int], options_type: int = 0, options: object = None
) -> schema.OperatorT:
    op = schema.OperatorT()
    op.opcodeIndex = opcode
    op.inputs = inputs
    op.outputs = outputs
    op.builtinOptionsType = options_type
    op.builtinOptions = options
    return op


def pooled_dense_weights(classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The FULLY_CONNECTED weights (classes, 3) and bias (classes,) of :func:`pooled_dense`."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.5, size=(classes, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, size=(classes,)).astype(np.float32)
    return weights, bias


def pooled_dense(
    size: int = 16,
    classes: int = 4,
    seed: int = 0,
    *,
    uint8_input: tuple[float, int] | None = None,
    input_name: str = "image",
) -> bytes:
    """A TFLite model: image (1,size,size,3) -> MEAN over H,W -> 'pooled' (1,3)
    -> FULLY_CONNECTED -> 'scores' (1,classes).  Two outputs.

    With ``uint8_input=(scale, zero_point)`` the input is a quantized uint8
    tensor and a DEQUANTIZE op comes first.
    """
    weights, bias = pooled_dense_weights(classes, seed)
    axes = np.array([1, 2], dtype=np.int32)

    buffers = [_buffer(), _buffer(axes.tobytes()), _buffer(weights.tobytes()), _buffer(bias.tobytes())]
    tensors = [
        _tensor("axes", [2], buffer=1),
        _tensor("weights", [classes, 3], buffer=2),
        _tensor("bias", [classes], buffer=3),
        _tensor("pooled", [1, 3]),
        _tensor("scores", [1, classes]),
    ]
    for tensor in tensors:
        if tensor.name == "axes":
            tensor.type = schema.TensorType.INT32
    opcodes = [_opcode(schema.BuiltinOperator.MEAN), _opcode(schema.BuiltinOperator.FULLY_CONNECTED)]
    reducer = schema.ReducerOptionsT()
    reducer.keepDims = False
    dense = schema.FullyConnectedOptionsT()
    operators = []
    if uint8_input is None:
        tensors.append(_tensor(input_name, [1, size, size, 3]))
        image = len(tensors) - 1
        mean_input = image
    else:
        tensors.append(_tensor(input_name, [1, size, size, 3], "uint8", quant=uint8_input))
        image = len(tensors) - 1
        tensors.append(_tensor("dequantized", [1, size, size, 3]))
        mean_input = len(tensors) - 1
        opcodes.append(_opcode(schema.BuiltinOperator.DEQUANTIZE))
        operators.append(_op(2, [image], [mean_input]))
    operators += [
        _op(0, [mean_input, 0], [3], schema.BuiltinOptions.ReducerOptions, reducer),
        _op(1, [3, 1, 2], [4], schema.BuiltinOptions.FullyConnectedOptions, dense),
    ]

    subgraph = schema.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs = [image]
    subgraph.outputs = [3, 4]
    subgraph.operators = operators
    subgraph.name = "main"

    model = schema.ModelT()
    model.version = 3
    model.description = "edgeproof test model"
    model.operatorCodes = opcodes
    model.subgraphs = [subgraph]
    model.buffers = buffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def write_tflite_and_card(
    folder: Path,
    data: bytes,
    *,
    name: str = "pooled",
    size: int = 16,
    classes: int = 4,
    input_dtype: str = "float32",
    input_extra: str = "",
) -> Path:
    """Write NAME.tflite and a raw-decoder card NAME.toml; returns the card path."""
    (folder / f"{name}.tflite").write_bytes(data)
    card = folder / f"{name}.toml"
    card.write_text(
        f'''id = "{name}"
version = "0.0.1"
format = "tflite"
file = "{name}.tflite"
sha256 = "{hashlib.sha256(data).hexdigest()}"
license = "CC0-1.0"
source = "tests/support/tflite_models.py"

[input]
name = "image"
shape = [1, {size}, {size}, 3]
layout = "NHWC"
dtype = "{input_dtype}"
{input_extra}
[[outputs]]
name = "pooled"
shape = [1, 3]

[[outputs]]
name = "scores"
shape = [1, {classes}]

[decoder]
kind = "raw"
''',
        encoding="utf-8",
    )
    return card
