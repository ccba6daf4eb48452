"""Make the evaluation (held-out) image set from the photos in Debian's ``opencv-doc`` package.

    apt-get install opencv-doc        # Debian main; installs offline from the Debian archive
    .venv/bin/python models/build/make_eval.py [--count 400] [--out models/build/.cache/eval]

Calibration uses the ``skimage.data`` crops in tests/data/calib; this set comes from other photos
altogether (the OpenCV sample images, ``/usr/share/doc/opencv-doc/examples/data``), so calibration
and evaluation are disjoint by source, not only by a split.  Each image is a random square crop
(40-100% of the short side, random position, random horizontal flip) resized to 224x224 and written
as PNG (lossless: the figures do not depend on a JPEG encoder).  Fixed seed.

Source and license: Debian package opencv-doc 4.6.0+dfsg-12 (bookworm, main), files
examples/data/*.jpg|png from OpenCV's samples/data; its debian/copyright covers them with
``Files: *`` -- ``License: Apache-2.0 AND BSD-3-Clause`` (OpenCV contributors).  Debian removed the
images it could not license (``Files-Excluded``: lena).  The images are not committed; see
models/build/EVAL_SOURCES.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
DATA = Path("/usr/share/doc/opencv-doc/examples/data")
OUT = HERE / ".cache" / "eval"
SIZE = 224
SEED = 11

# Colour photographs of things ImageNet-1k has classes for (fruit, animals, buildings, sports
# balls, aircraft, a boat, toys...); drawings, calibration boards, text and logos are left out.
PHOTOS = (
    "apple.jpg",
    "orange.jpg",
    "fruits.jpg",
    "baboon.jpg",
    "butterfly.jpg",
    "squirrel_cls.jpg",
    "HappyFish.jpg",
    "building.jpg",
    "aero1.jpg",
    "aero3.jpg",
    "basketball1.png",
    "messi5.jpg",
    "smarties.png",
    "chicky_512.png",
    "home.jpg",
    "stuff.jpg",
    "board.jpg",
    "box_in_scene.png",
    "rubberwhale1.png",
    "starry_night.jpg",
    "leuvenA.jpg",
    "graf1.png",
    "pic1.png",
    "pic3.png",
    "pic5.png",
)


def crops(data: Path, count: int, seed: int = SEED) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    per = max(1, round(count / len(PHOTOS)))
    out: list[tuple[str, np.ndarray]] = []
    for name in PHOTOS:
        image = cv2.imread(str(data / name), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"{data / name} is missing or unreadable: apt-get install opencv-doc")
        h, w = image.shape[:2]
        for i in range(per):
            side = int(min(h, w) * rng.uniform(0.4, 1.0))
            y = int(rng.integers(0, h - side + 1))
            x = int(rng.integers(0, w - side + 1))
            crop = image[y : y + side, x : x + side]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            out.append((f"{Path(name).stem.lower()}-{i:03d}.png", crop))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=400, help="number of crops (default 400)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"photo directory (default {DATA})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.png"):
        old.unlink()
    made = crops(args.data, args.count)
    for name, crop in made:
        cv2.imwrite(str(args.out / name), crop)
    (args.out / "SOURCE.txt").write_text(
        f"crops of {len(PHOTOS)} OpenCV sample photos, Debian opencv-doc 4.6.0+dfsg-12, Apache-2.0 AND "
        "BSD-3-Clause; models/build/make_eval.py\n",
        encoding="utf-8",
    )
    print(f"wrote {len(made)} images from {len(PHOTOS)} photos of {args.data} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
