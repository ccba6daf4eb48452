"""A *different model* for each shipped card: the dishonest side of the challenge tests.

The same file with its largest weight tensor reversed along its first axis (for EfficientNet the
final classifier's rows, for BlazeFace its largest convolution kernel): same input and output
shapes, same runtime path, different function.  A device that answers a challenge with it must
fail.  Built on the x86 side (needs onnx / the LiteRT flatbuffer schema), fixed: no randomness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.inference.cards import load_card


def different_onnx(source: Path, out: Path) -> str:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.dims else 0)
    array = numpy_helper.to_array(largest)
    largest.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array[::-1]), largest.name))
    onnx.save(model, str(out))
    return largest.name


def different_tflite(source: Path, out: Path) -> str:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    data = source.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    graph = model.subgraphs[0]
    weights = [t for t in graph.tensors if t.buffer and model.buffers[t.buffer].data is not None]
    largest = max(weights, key=lambda t: len(model.buffers[t.buffer].data))
    buffer = model.buffers[largest.buffer]
    dtype = {schema.TensorType.FLOAT32: "<f4", schema.TensorType.FLOAT16: "<f2"}[largest.type]
    values = np.frombuffer(bytes(bytearray(buffer.data)), dtype=dtype).reshape(
        [int(d) for d in largest.shape]
    )
    buffer.data = np.ascontiguousarray(values[::-1]).tobytes()
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(bytes(builder.Output()))
    name = largest.name
    return name.decode() if isinstance(name, bytes) else str(name)


def different_path(card: Path, directory: Path) -> Path:
    loaded = load_card(card)
    return directory / f"different-{card.stem}{Path(loaded.card.file).suffix}"


def write_different(card: Path, directory: Path) -> Path:
    loaded = load_card(card)
    out = different_path(card, directory)
    if loaded.card.format == "onnx":
        different_onnx(loaded.model_path, out)
    else:
        different_tflite(loaded.model_path, out)
    return out
