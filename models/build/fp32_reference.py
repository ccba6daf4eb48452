"""Record the fp32 EfficientNet's answers on the held-out calibration images, for int8 checks.

    .venv/bin/python models/build/fp32_reference.py     # needs models/build/.cache/efficientnet-lite0-fp32.*

writes models/efficientnet-lite0-fp32-reference.json: for each image of the held-out half of
tests/data/calib (the split `edgeproof models quantize --holdout 0.5` uses), the fp32 top-1 class,
its softmax and the top-5.  The fp32 file is 18 MB and not committed; this is what the int8
regression tests (here and in the arm64 root) compare the shipped int8 model with.  fp32 outputs
are the same on x86 and aarch64 (max |difference| recorded in docs/models.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from agent.inference import quantize as q  # noqa: E402
from agent.inference.cards import load_card  # noqa: E402
from agent.inference.cpu_class import detect  # noqa: E402

FP32_CARD = HERE / ".cache" / "efficientnet-lite0-fp32.toml"
OUT = ROOT / "models" / "efficientnet-lite0-fp32-reference.json"
CALIB = ROOT / "tests" / "data" / "calib"


def main() -> int:
    loaded = load_card(FP32_CARD)
    _, held = q.split_images(q.list_images(CALIB), 0.5)
    tensors = q.load_tensors(held, loaded.card.input, lambda _n: None)
    scores = q.run_all(q.session(loaded.verify_model(), 2), loaded.card.input.name, tensors, lambda _n: None)
    probs = q.softmax(scores)
    images = []
    for path, p in zip(held, probs, strict=True):
        order = np.argsort(-p, kind="stable")[:5]
        images.append(
            {
                "image": path.name,
                "top1": int(order[0]),
                "p_top1": round(float(p[order[0]]), 6),
                "top5": [int(i) for i in order],
            }
        )
    data = {
        "fp32_sha256": loaded.card.sha256,
        "measured_on": detect().name,
        "split": "held-out half of tests/data/calib (seed 0)",
        "images": images,
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    confident = sum(i["p_top1"] >= q.CONFIDENT for i in images)
    print(f"wrote {OUT.relative_to(ROOT)}: {len(images)} images, {confident} confident")
    return 0


if __name__ == "__main__":
    sys.exit(main())
