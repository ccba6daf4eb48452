"""A generated demo clip: slow pans across the bundled sample photos, as an MJPG AVI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agent.config import default_models_dir
from agent.errors import SourceError
from agent.inference.sources import IMAGE_SUFFIXES, synthetic_frame


def sample_photos(folder: Path | None = None) -> list[np.ndarray]:
    directory = folder or default_models_dir() / "samples"
    photos = []
    for path in sorted(directory.glob("*")) if directory.is_dir() else []:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                photos.append(image)
    return photos


def make_clip(
    path: Path, *, seconds_per_photo: float = 2.0, fps: int = 10, size: tuple[int, int] = (640, 480)
) -> int:
    """Write the clip; returns the number of frames.  Falls back to synthetic frames without photos."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise SourceError(f"OpenCV cannot write {path} (MJPG)", hint="is opencv-python-headless installed?")
    frames = 0
    photos = sample_photos() or [synthetic_frame(width, height, seed, 0) for seed in range(3)]
    per_photo = max(1, int(seconds_per_photo * fps))
    for photo in photos:
        h, w = photo.shape[:2]
        for i in range(per_photo):
            # Zoom from 100% to 80% of the photo, centred: a slow push-in.
            t = i / max(per_photo - 1, 1)
            crop = 1.0 - 0.2 * t
            cw, ch = int(w * crop), int(h * crop)
            x0, y0 = (w - cw) // 2, (h - ch) // 2
            frame = cv2.resize(
                photo[y0 : y0 + ch, x0 : x0 + cw], (width, height), interpolation=cv2.INTER_AREA
            )
            writer.write(frame)
            frames += 1
    writer.release()
    return frames
