import cv2
import numpy as np
import pytest

from agent.errors import SourceError
from agent.inference.cards import InputSpec
from agent.inference.preprocess import Preprocessor
from agent.inference.sources import CaptureSource, SyntheticSource, frames, open_source, synthetic_frame


def spec(**kw):
    base = {"name": "in", "shape": [1, 3, 4, 4]}
    base.update(kw)
    return InputSpec.model_validate(base)


def test_normalisation_layout_and_colour_order():
    frame = np.zeros((4, 4, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    out = Preprocessor(spec(mean=[127.0], std=[128.0]))(frame)
    assert out.tensor.shape == (1, 3, 4, 4) and out.tensor.dtype == np.float32
    assert out.tensor[0, :, 0, 0].tolist() == pytest.approx(
        [(30 - 127) / 128, (20 - 127) / 128, (10 - 127) / 128]
    )
    assert out.resized[0, 0].tolist() == [30, 20, 10]  # RGB, uint8: what the input commitment hashes
    bgr = Preprocessor(spec(layout="NHWC", shape=[1, 4, 4, 3], color="BGR"))(frame)
    assert bgr.tensor.shape == (1, 4, 4, 3) and bgr.tensor[0, 0, 0].tolist() == [10.0, 20.0, 30.0]


def test_quantized_int8_input():
    frame = np.full((4, 4, 3), 255, dtype=np.uint8)
    s = spec(dtype="int8", scale=1 / 255, quantization={"scale": 1 / 255, "zero_point": -128})
    out = Preprocessor(s)(frame)
    assert out.tensor.dtype == np.int8 and int(out.tensor.max()) == 127


def test_uint8_identity_passes_pixels_through():
    frame = synthetic_frame(8, 8, seed=3, index=0)
    out = Preprocessor(spec(dtype="uint8", layout="NHWC", shape=[1, 8, 8, 3]))(frame)
    assert np.array_equal(out.tensor[0], cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def test_letterbox_geometry():
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    out = Preprocessor(spec(shape=[1, 3, 64, 64], resize="letterbox"))(frame)
    g = out.geometry
    assert (g.scale_x, g.pad_x, g.pad_y) == (0.32, 0, 16)
    assert out.resized.shape == (64, 64, 3) and out.resized[0, 0, 0] == 114


def test_synthetic_source_is_deterministic():
    a = [f.copy() for f in frames(open_source("synthetic:32x24:5"), 3)]
    b = [f.copy() for f in frames(open_source("synthetic:32x24:5"), 3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (24, 32, 3) and not np.array_equal(a[0], a[1])
    assert SyntheticSource(8, 8, limit=2).read() is not None


def test_folder_and_video_sources(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), synthetic_frame(16, 16, 0, i))
    (folder / "notes.txt").write_text("ignored")
    assert len(list(frames(open_source(str(folder)), None))) == 3
    assert len(list(frames(open_source(str(folder), loop=True), 7))) == 7
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(5):
        writer.write(synthetic_frame(32, 32, 0, i))
    writer.release()
    assert len(list(frames(open_source(str(video)), None))) == 5
    assert len(list(frames(open_source(str(video), loop=True), 12))) == 12


@pytest.mark.parametrize(
    ("spec_text", "message"),
    [
        ("/nonexistent/clip.mp4", "is not a camera index, URL, folder or existing file"),
        ("synthetic:big", "bad synthetic source"),
    ],
)
def test_bad_sources(spec_text, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec_text)


def test_empty_folder_and_undecodable_file(tmp_path):
    with pytest.raises(SourceError, match="has no images"):
        open_source(str(tmp_path))
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(SourceError, match="cannot be decoded"):
        open_source(str(bad))


class FlakyCapture:
    """Stands in for cv2.VideoCapture of a camera that drops out."""

    def __init__(self, script):
        self.script = script  # list of frames/None that read() returns in turn

    def isOpened(self):
        return True

    def read(self):
        if not self.script:
            return False, None
        item = self.script.pop(0)
        return (item is not None), item

    def release(self):
        pass


def test_lost_camera_is_reopened_with_backoff():
    frame = np.zeros((2, 2, 3), dtype=np.uint8)
    opens = [FlakyCapture([frame, None]), None, FlakyCapture([frame])]
    sleeps = []

    def factory(target):
        capture = opens.pop(0)
        return capture if capture is not None else FlakyCapture([])  # opened but delivers nothing

    source = CaptureSource(0, live=True, factory=factory, sleep=sleeps.append, backoff_s=(0.5, 4.0))
    assert source.read() is not None
    assert source.read() is not None  # lost, reopened twice, back
    assert sleeps == [0.5, 1.0] and source.reopens == 1


def test_lost_camera_gives_up_with_a_clear_error():
    def factory(target):
        return FlakyCapture([])

    source = CaptureSource(0, live=True, factory=factory, sleep=lambda s: None, max_reopen_attempts=3)
    with pytest.raises(SourceError, match="lost and not back after 3 attempts"):
        source.read()


def test_camera_that_cannot_open():
    class Closed(FlakyCapture):
        def isOpened(self):
            return False

    with pytest.raises(SourceError, match="cannot open camera 3"):
        CaptureSource(3, live=True, factory=lambda t: Closed([]))
