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
        (
            "/nonexistent/clip.mp4",
            "source '/nonexistent/clip.mp4' is not a camera index, URL, folder or existing file\n"
            "  fix: use e.g. 0, rtsp://host/stream, clip.mp4, a folder of images, or synthetic",
        ),
        (
            "synthetic:big",
            "bad synthetic source 'synthetic:big'\n"
            "  fix: use synthetic, synthetic:640x480 or synthetic:640x480:7",
        ),
        (
            "synthetic:0x10",
            "bad synthetic source 'synthetic:0x10': width and height must be 1..8192\n"
            "  fix: use e.g. synthetic:640x480",
        ),
        (
            "",
            "empty source\n  fix: use e.g. 0, rtsp://host/stream, clip.mp4, a folder, or synthetic",
        ),
        (
            "/dev/video97",
            "camera /dev/video97 does not exist\n"
            "  fix: check the camera is connected (ls /dev/video*), or pass its index, e.g. --source 0",
        ),
    ],
)
def test_bad_sources(spec_text, message):
    with pytest.raises(SourceError) as info:
        open_source(spec_text)
    assert str(info.value) == message
    assert info.value.exit_code == 6


def test_empty_folder_and_undecodable_file(tmp_path):
    with pytest.raises(SourceError) as info:
        open_source(str(tmp_path))
    assert str(info.value) == (
        f"image folder {tmp_path} has no images\n  fix: put .jpg/.png files there, or pass another --source"
    )
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(SourceError) as info:
        open_source(str(bad))
    assert str(info.value) == f"image {bad} cannot be decoded\n  fix: is it a valid JPEG/PNG?"


def test_folder_of_undecodable_images_is_an_error_not_an_endless_loop(tmp_path):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"not an image")
    source = open_source(str(tmp_path), loop=True)
    with pytest.raises(SourceError) as info:
        source.read()
    assert str(info.value) == (
        f"image folder {tmp_path}: none of its 2 images can be decoded\n"
        "  fix: check the files are valid JPEG/PNG images"
    )


def test_folder_skips_one_bad_image_and_keeps_going(tmp_path):
    cv2.imwrite(str(tmp_path / "0.png"), synthetic_frame(8, 8, 0, 0))
    (tmp_path / "1.png").write_bytes(b"broken")
    cv2.imwrite(str(tmp_path / "2.png"), synthetic_frame(8, 8, 0, 2))
    assert len(list(frames(open_source(str(tmp_path), loop=True), 5))) == 5


def test_corrupt_video_file_is_a_clear_error(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"this is not a video" * 50)
    with pytest.raises(SourceError) as info:
        open_source(str(video))
    assert str(info.value) == (
        f"cannot open video file '{video}'\n"
        "  fix: is it a video file OpenCV can decode (mp4, avi, mkv with an FFmpeg codec)?"
    )


def _refused_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: connections are refused


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_unreachable_stream_is_a_clear_error(scheme):
    url = f"{scheme}://127.0.0.1:{_refused_port()}/stream"
    with pytest.raises(SourceError) as info:
        open_source(url)
    assert str(info.value) == (
        f"cannot open stream '{url}'\n"
        "  fix: check the URL (host, port, path, credentials) and that the stream is up"
    )


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
    with pytest.raises(SourceError) as info:
        source.read()
    assert info.value.message == "source camera:0 lost and not back after 3 attempts"


def test_open_source_routes_camera_index_and_urls_to_live_captures():
    frame = np.zeros((2, 2, 3), dtype=np.uint8)
    targets = []

    def factory(target):
        targets.append(target)
        return FlakyCapture([frame])

    camera = open_source("2", factory=factory)
    rtsp = open_source("rtsp://cam.local:554/live", factory=factory)
    http = open_source("http://cam.local/video.mjpg", factory=factory)
    assert targets == [2, "rtsp://cam.local:554/live", "http://cam.local/video.mjpg"]
    assert [s.description for s in (camera, rtsp, http)] == [
        "camera:2",
        "stream:rtsp://cam.local:554/live",
        "stream:http://cam.local/video.mjpg",
    ]
    assert all(isinstance(s, CaptureSource) and s.live for s in (camera, rtsp, http))


def test_lost_stream_backoff_doubles_up_to_the_ceiling_then_gives_up():
    frame = np.zeros((2, 2, 3), dtype=np.uint8)
    opened = [FlakyCapture([frame])]
    sleeps = []

    def factory(target):
        return opened.pop(0) if opened else None  # the stream never comes back

    source = open_source(
        "rtsp://cam.local/live",
        factory=factory,
        sleep=sleeps.append,
        backoff_s=(0.5, 4.0),
        max_reopen_attempts=6,
    )
    assert source.read() is not None
    with pytest.raises(SourceError) as info:
        source.read()
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert str(info.value) == (
        "source stream:rtsp://cam.local/live lost and not back after 6 attempts\n"
        "  fix: check the camera cable / stream; the daemon restarts the source on the next run"
    )


def test_capture_that_raises_is_treated_as_lost_and_reopened():
    frame = np.ones((2, 2, 3), dtype=np.uint8)

    class Raising(FlakyCapture):
        def read(self):
            raise cv2.error("backend died")

    opened = [Raising([]), FlakyCapture([frame])]
    sleeps = []
    source = CaptureSource(0, live=True, factory=lambda t: opened.pop(0), sleep=sleeps.append)
    assert np.array_equal(source.read(), frame)
    assert sleeps == [0.5] and source.reopens == 1


def test_camera_that_cannot_open():
    class Closed(FlakyCapture):
        def isOpened(self):
            return False

    with pytest.raises(SourceError) as info:
        CaptureSource(3, live=True, factory=lambda t: Closed([]))
    assert str(info.value) == (
        "cannot open camera 3\n"
        "  fix: check the camera is connected and not in use by another program (ls /dev/video*)"
    )
