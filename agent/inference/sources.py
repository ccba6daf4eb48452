"""Frame sources through OpenCV: camera index, video file, RTSP/HTTP URL, image folder, synthetic.

``open_source(spec)`` understands:

* ``0``, ``1``, ...            a camera index (``/dev/videoN``); ``/dev/videoN`` itself also works
* ``rtsp://...``, ``http(s)://...``  a network stream
* a video file path            (``.mp4``, ``.avi``, ``.mkv``, ...)
* an image folder              (``*.jpg``, ``*.png``, ... in name order)
* ``synthetic[:WxH[:SEED]]``   deterministic generated frames (tests, demos, benchmarks)

Cameras and streams that stop delivering are reopened with capped
exponential backoff; a source that cannot be opened at all is a SourceError.
The capture factory and the sleep function are parameters of
:class:`CaptureSource` (and pass through :func:`open_source`), so tests inject a
fake capture object and a recording sleep instead of a real camera and clock.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from agent.errors import SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_SYNTHETIC = re.compile(r"^synthetic(?::(\d+)x(\d+))?(?::(\d+))?$")
_URL = re.compile(r"^(rtsp|rtsps|http|https|rtmp|udp|tcp)://", re.IGNORECASE)
_V4L_DEVICE = re.compile(r"^/dev/video\d+$")
MAX_SYNTHETIC_SIDE = 8192


class FrameSource(Protocol):
    description: str

    def read(self) -> np.ndarray | None:
        """The next BGR uint8 frame, or None at the end of the source."""

    def close(self) -> None: ...


_BACKGROUNDS: dict[tuple[int, int, int], np.ndarray] = {}


def _background(width: int, height: int, seed: int) -> np.ndarray:
    key = (width, height, seed)
    cached = _BACKGROUNDS.get(key)
    if cached is None:
        base = np.random.default_rng(seed).integers(0, 256, size=3)
        ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
        cached = np.empty((height, width, 3), dtype=np.uint8)
        cached[:, :, 0] = ((ys + base[0]) % 256).astype(np.uint8)
        cached[:, :, 1] = ((xs + base[1]) % 256).astype(np.uint8)
        cached[:, :, 2] = (((xs + ys) / 2 + base[2]) % 256).astype(np.uint8)
        if len(_BACKGROUNDS) < 8:
            _BACKGROUNDS[key] = cached
    return cached


def synthetic_frame(width: int, height: int, seed: int, index: int) -> np.ndarray:
    """A deterministic BGR frame: a seeded background plus a disc that moves with ``index``."""
    frame = _background(width, height, seed).copy()
    cx = int((index * 7 + seed) % max(width, 1))
    cy = int((index * 5 + seed) % max(height, 1))
    radius = max(4, min(width, height) // 6)
    colour = ((index * 37 + seed) % 256, (index * 91 + 64) % 256, (index * 53 + 128) % 256)
    cv2.circle(frame, (cx, cy), radius, colour, thickness=-1)
    return frame


class SyntheticSource:
    def __init__(self, width: int = 640, height: int = 480, seed: int = 0, limit: int | None = None) -> None:
        self.width, self.height, self.seed, self.limit = width, height, seed, limit
        self.index = 0
        self.description = f"synthetic:{width}x{height}:{seed}"

    def read(self) -> np.ndarray | None:
        if self.limit is not None and self.index >= self.limit:
            return None
        frame = synthetic_frame(self.width, self.height, self.seed, self.index)
        self.index += 1
        return frame

    def close(self) -> None:
        pass


class FolderSource:
    def __init__(self, folder: Path, loop: bool = False) -> None:
        try:
            entries = list(folder.iterdir())
        except OSError as exc:
            raise SourceError(f"image folder {folder} cannot be listed: {exc.strerror or exc}") from exc
        self.files = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise SourceError(
                f"image folder {folder} has no images",
                hint="put .jpg/.png files there, or pass another --source",
            )
        self.folder = folder
        self.loop = loop
        self.position = 0
        self.description = f"folder:{folder} ({len(self.files)} images)"

    def read(self) -> np.ndarray | None:
        failures = 0  # consecutive undecodable images; a whole pass of them is an error, not a spin
        while True:
            if self.position >= len(self.files):
                if not self.loop:
                    return None
                self.position = 0
            path = self.files[self.position]
            self.position += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
            log.warning("unreadable image skipped", extra={"path": str(path)})
            failures += 1
            if failures >= len(self.files):
                raise SourceError(
                    f"image folder {self.folder}: none of its {len(self.files)} images can be decoded",
                    hint="check the files are valid JPEG/PNG images",
                )

    def close(self) -> None:
        pass


CaptureFactory = Callable[[Any], Any]


class CaptureSource:
    """cv2.VideoCapture over a file, camera or stream; live sources reopen with backoff."""

    def __init__(
        self,
        target: int | str,
        *,
        live: bool,
        loop: bool = False,
        factory: CaptureFactory = cv2.VideoCapture,
        max_reopen_attempts: int = 8,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target, self.live, self.loop = target, live, loop
        self.factory = factory
        self.max_reopen_attempts = max_reopen_attempts
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.reopens = 0
        self.description = f"{self._kind().split()[0]}:{target}"  # camera:0, stream:rtsp://.., video:clip.mp4
        self.capture = self._open()
        if self.capture is None:
            raise SourceError(f"cannot open {self._kind()} {target!r}", hint=self._hint())

    def _kind(self) -> str:
        if isinstance(self.target, int) or _V4L_DEVICE.match(self.target):
            return "camera"
        return "stream" if _URL.match(self.target) else "video file"

    def _hint(self) -> str:
        kind = self._kind()
        if kind == "camera":
            return "check the camera is connected and not in use by another program (ls /dev/video*)"
        if kind == "stream":
            return "check the URL (host, port, path, credentials) and that the stream is up"
        return "is it a video file OpenCV can decode (mp4, avi, mkv with an FFmpeg codec)?"

    def _open(self) -> Any:
        try:
            capture = self.factory(self.target)
        except cv2.error as exc:
            log.warning("capture open failed", extra={"source": self.description, "error": str(exc)})
            return None
        if capture is not None and capture.isOpened():
            return capture
        if capture is not None:
            capture.release()
        return None

    def _grab(self) -> np.ndarray | None:
        try:
            ok, frame = self.capture.read()
        except cv2.error as exc:  # some backends raise instead of returning False
            log.warning("capture read failed", extra={"source": self.description, "error": str(exc)})
            return None
        return np.asarray(frame) if ok and frame is not None else None

    def read(self) -> np.ndarray | None:
        frame = self._grab()
        if frame is not None:
            return frame
        if not self.live:
            if self.loop:
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                return self._grab()
            return None
        return self._reopen()

    def _reopen(self) -> np.ndarray | None:
        delay, ceiling = self.backoff_s
        for attempt in range(1, self.max_reopen_attempts + 1):
            log.warning("source lost, reopening", extra={"source": self.description, "attempt": attempt})
            self.capture.release()
            self.sleep(delay)
            capture = self._open()
            if capture is not None:
                self.capture = capture
                frame = self._grab()
                if frame is not None:
                    self.reopens += 1
                    log.info("source reopened", extra={"source": self.description, "attempt": attempt})
                    return frame
            delay = min(delay * 2, ceiling)
        raise SourceError(
            f"source {self.description} lost and not back after {self.max_reopen_attempts} attempts",
            hint="check the camera cable / stream; the daemon restarts the source on the next run",
        )

    def close(self) -> None:
        self.capture.release()


def open_source(spec: str, *, loop: bool = False, **capture_options: Any) -> FrameSource:
    """Open a frame source from its text form (see the module docstring).

    ``capture_options`` go to :class:`CaptureSource` (``factory``, ``sleep``,
    ``max_reopen_attempts``, ``backoff_s``) for cameras, streams and video files.
    """
    if not spec.strip():
        raise SourceError(
            "empty source", hint="use e.g. 0, rtsp://host/stream, clip.mp4, a folder, or synthetic"
        )
    synthetic = _SYNTHETIC.match(spec)
    if synthetic:
        width = int(synthetic.group(1) or 640)
        height = int(synthetic.group(2) or 480)
        if not (1 <= width <= MAX_SYNTHETIC_SIDE and 1 <= height <= MAX_SYNTHETIC_SIDE):
            raise SourceError(
                f"bad synthetic source '{spec}': width and height must be 1..{MAX_SYNTHETIC_SIDE}",
                hint="use e.g. synthetic:640x480",
            )
        return SyntheticSource(width, height, int(synthetic.group(3) or 0))
    if spec.startswith("synthetic"):
        raise SourceError(
            f"bad synthetic source '{spec}'", hint="use synthetic, synthetic:640x480 or synthetic:640x480:7"
        )
    if spec.isdigit():
        return CaptureSource(int(spec), live=True, **capture_options)
    if _URL.match(spec):
        return CaptureSource(spec, live=True, **capture_options)
    if _V4L_DEVICE.match(spec):
        if not Path(spec).exists():
            raise SourceError(
                f"camera {spec} does not exist",
                hint="check the camera is connected (ls /dev/video*), or pass its index, e.g. --source 0",
            )
        return CaptureSource(spec, live=True, **capture_options)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, loop=loop)
    if not path.exists():
        raise SourceError(
            f"source '{spec}' is not a camera index, URL, folder or existing file",
            hint="use e.g. 0, rtsp://host/stream, clip.mp4, a folder of images, or synthetic",
        )
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _single_image(path)
    return CaptureSource(str(path), live=False, loop=loop, **capture_options)


class _OneImage:
    def __init__(self, path: Path, frame: np.ndarray) -> None:
        self.frame: np.ndarray | None = frame
        self.description = f"image:{path}"

    def read(self) -> np.ndarray | None:
        frame, self.frame = self.frame, None
        return frame

    def close(self) -> None:
        pass


def _single_image(path: Path) -> FrameSource:
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise SourceError(f"image {path} cannot be decoded", hint="is it a valid JPEG/PNG?")
    return _OneImage(path, frame)


def frames(source: FrameSource, limit: int | None) -> Iterator[np.ndarray]:
    count = 0
    while limit is None or count < limit:
        frame = source.read()
        if frame is None:
            return
        count += 1
        yield frame
