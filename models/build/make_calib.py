"""Make the calibration / hold-out image set from the photos bundled in scikit-image.

    .venv/bin/python models/build/make_calib.py                 # tests/data/calib (committed)
    .venv/bin/python models/build/make_calib.py --dev           # models/build/.cache/dev (recipe tuning)

Each image is a random square crop (35-100% of the photo's short side, random
position, random horizontal flip) of one ``skimage.data`` photo, resized to
224x224 and saved as JPEG.  The committed set and the tuning set use different
seeds, so quantization recipes are chosen on crops the reported figures never saw.
``skimage.data`` photos are distributed with scikit-image under BSD-3-Clause
(see tests/data/calib/SOURCES.md for the per-photo notes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CALIB = ROOT / "tests" / "data" / "calib"
DEV = HERE / ".cache" / "dev"

# photo name in skimage.data -> crops per 100 images (colour photos with ImageNet-like objects weigh more)
PHOTOS = {
    "chelsea": 16,
    "coffee": 16,
    "astronaut": 14,
    "rocket": 14,
    "camera": 8,
    "clock": 6,
    "coins": 6,
    "hubble_deep_field": 5,
    "immunohistochemistry": 4,
    "retina": 4,
    "moon": 3,
    "brick": 2,
    "gravel": 2,
}
SIZE = 224
QUALITY = 75


def photo(name: str) -> np.ndarray:
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return cv2.cvtColor(image[:, :, :3].astype(np.uint8), cv2.COLOR_RGB2BGR)


def crops(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    total = sum(PHOTOS.values())
    out: list[tuple[str, np.ndarray]] = []
    for name, weight in PHOTOS.items():
        image = photo(name)
        h, w = image.shape[:2]
        n = max(1, round(count * weight / total))
        for i in range(n):
            side = int(min(h, w) * rng.uniform(0.35, 1.0))
            y = int(rng.integers(0, h - side + 1))
            x = int(rng.integers(0, w - side + 1))
            crop = image[y : y + side, x : x + side]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            out.append((f"{name}-{i:03d}.jpg", crop))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dev", action="store_true", help="write the tuning set to models/build/.cache/dev")
    parser.add_argument("--count", type=int, default=None, help="number of crops (default 200, dev 300)")
    args = parser.parse_args()
    target = DEV if args.dev else CALIB
    count = args.count or (300 if args.dev else 200)
    seed = 2 if args.dev else 1
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.jpg"):
        old.unlink()
    total = 0
    for name, crop in crops(count, seed):
        path = target / name
        cv2.imwrite(str(path), crop, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        total += path.stat().st_size
    print(f"wrote {len(list(target.glob('*.jpg')))} images, {total} bytes, to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
