"""`edgeproof infer` in a subprocess on models the project never saw, given only a `raw` card.

The ONNX model is written here with onnx.helper; the TFLite model with the
flatbuffer schema that ships in ai_edge_litert (no .tflite test file ships
with any installed package).  Neither is a shipped model.  Also: every
"Bad input" of issue 2 through the real CLI (clear message, the documented
exit code, no traceback), `python -m agent --help`, and the progress bar on a
terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.quantize_cards import write_card
from tests.support.tflite_models import pooled_dense, pooled_dense_weights, write_tflite_and_card

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED = 11
BGR = (40, 80, 120)  # a solid test image; RGB (120, 80, 40)


# --------------------------------------------------------------------------- helpers


def edgeproof(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROOF_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> str:
    """stderr without the runtimes' own chatter (LiteRT 'INFO:', FFmpeg '[tcp @ ...]')."""
    assert "Traceback" not in result.stderr, result.stderr
    return "".join(
        line for line in result.stderr.splitlines(keepends=True) if not line.startswith(("INFO:", "["))
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def pooled_sigmoid_onnx(size: int = 24, classes: int = 5) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """pixels (1,3,size,size) -> ReduceMean(H,W) -> 'pooled' (1,3) -> MatMul + Add -> Sigmoid -> 'probs'."""
    rng = np.random.default_rng(SEED)
    weights = rng.normal(0, 1.0, size=(3, classes)).astype(np.float32)
    bias = rng.normal(0, 0.1, size=(classes,)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["pixels"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pooled_sigmoid",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, classes]),
        ],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, weights, bias


def write_onnx_card(folder: Path, model: onnx.ModelProto, *, extra: str = "") -> Path:
    data = model.SerializeToString()
    (folder / "unseen.onnx").write_bytes(data)
    card = folder / "unseen.toml"
    card.write_text(
        f'''id = "unseen-onnx"
version = "0.1.0"
format = "onnx"
file = "unseen.onnx"
sha256 = "{hashlib.sha256(data).hexdigest()}"
license = "CC0-1.0"
source = "written by tests/integration/test_infer_cli.py"
{extra}
[input]
name = "pixels"
shape = [1, 3, 24, 24]
layout = "NCHW"
dtype = "float32"
color = "RGB"
resize = "stretch"
scale = 0.00392156862745098

[[outputs]]
name = "pooled"
shape = [1, 3]

[[outputs]]
name = "probs"
shape = [1, 5]

[decoder]
kind = "raw"
''',
        encoding="utf-8",
    )
    return card


def solid_folder(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((30, 40, 3), BGR, dtype=np.uint8))
    return folder


def stats(values: np.ndarray) -> dict[str, Any]:
    flat = values.astype(np.float64).reshape(-1)
    return {
        "min": pytest.approx(flat.min(), rel=1e-5, abs=1e-6),
        "max": pytest.approx(flat.max(), rel=1e-5, abs=1e-6),
        "mean": pytest.approx(flat.mean(), rel=1e-5, abs=1e-6),
        "std": pytest.approx(flat.std(), rel=1e-4, abs=1e-6),
    }


def check_report(report: dict[str, Any], *, frames: int, backend: str, provider: str, threads: int) -> None:
    assert report["frames"] == frames
    assert (report["backend"], report["provider"], report["threads"]) == (backend, provider, threads)
    assert report["providers_skipped"] == []
    assert isinstance(report["fps"], float) and report["fps"] > 0
    latency = report["latency_us"]
    assert set(latency) == {"p50", "p95", "p99"}
    assert all(isinstance(v, int) for v in latency.values())
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    summary = report["summary"]
    assert (summary["decoder"], summary["frames"]) == ("raw", frames)
    assert report["last_predictions"] == []


# --------------------------------------------------------------------------- unseen models, raw decoder


@pytest.fixture
def onnx_card(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    model, weights, bias = pooled_sigmoid_onnx()
    return write_onnx_card(tmp_path, model), weights, bias


@pytest.fixture
def tflite_card(tmp_path: Path) -> Path:
    return write_tflite_and_card(tmp_path, pooled_dense(size=16, classes=4, seed=SEED))


def test_unseen_onnx_model_on_synthetic_frames(onnx_card: tuple[Path, np.ndarray, np.ndarray]) -> None:
    card, _, _ = onnx_card
    result = edgeproof(
        "infer",
        "--model",
        str(card),
        "--source",
        "synthetic:64x48:3",
        "--frames",
        "12",
        "--threads",
        "1",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    check_report(report, frames=12, backend="onnx", provider="CPUExecutionProvider", threads=1)
    assert report["runtime"].startswith("onnxruntime ")
    assert (report["model"], report["model_version"]) == ("unseen-onnx", "0.1.0")
    assert report["model_sha256"] == hashlib.sha256((card.parent / "unseen.onnx").read_bytes()).hexdigest()
    assert report["source"] == "synthetic:64x48:3"
    pooled, probs = report["summary"]["outputs"]
    assert (pooled["name"], pooled["shape"], pooled["dtype"]) == ("pooled", [1, 3], "float32")
    assert (probs["name"], probs["shape"], probs["dtype"]) == ("probs", [1, 5], "float32")
    assert (pooled["finite"], pooled["nonfinite"], probs["finite"], probs["nonfinite"]) == (36, 0, 60, 0)
    assert 0.0 <= pooled["min"] <= pooled["mean"] <= pooled["max"] <= 1.0  # pixel / 255
    assert 0.0 < probs["min"] <= probs["mean"] <= probs["max"] < 1.0  # sigmoid
    assert pooled["std"] > 0 and probs["std"] > 0  # the synthetic frames differ


def test_unseen_onnx_model_statistics_are_exact(
    onnx_card: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    card, weights, bias = onnx_card
    folder = solid_folder(tmp_path / "solid")
    result = edgeproof("infer", "--model", str(card), "--source", str(folder), "--frames", "10", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"] == 3  # the folder has 3 images and does not loop
    pooled_expected = np.array([[120, 80, 40]], dtype=np.float32) / 255
    probs_expected = sigmoid(pooled_expected @ weights + bias)
    pooled, probs = report["summary"]["outputs"]
    assert {k: pooled[k] for k in ("min", "max", "mean", "std")} == stats(pooled_expected)
    assert {k: probs[k] for k in ("min", "max", "mean", "std")} == stats(probs_expected)


def test_unseen_tflite_model_on_synthetic_frames(tflite_card: Path) -> None:
    result = edgeproof(
        "infer",
        "--model",
        str(tflite_card),
        "--source",
        "synthetic:32x32:5",
        "--frames",
        "9",
        "--threads",
        "2",
        "--providers",
        "gpu,xnnpack",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["providers_skipped"] == [
        "gpu: delegate library ('libtensorflowlite_gpu_delegate.so',) not found"
    ]
    report["providers_skipped"] = []
    check_report(report, frames=9, backend="litert", provider="xnnpack", threads=2)
    assert report["runtime"].startswith("ai-edge-litert ")
    pooled, scores = report["summary"]["outputs"]
    assert (pooled["name"], pooled["shape"], scores["name"], scores["shape"]) == (
        "pooled",
        [1, 3],
        "scores",
        [1, 4],
    )
    assert (pooled["finite"], scores["finite"]) == (27, 36)
    assert 0.0 <= pooled["min"] <= pooled["max"] <= 255.0  # raw pixels: the card does not normalise


def test_unseen_tflite_model_statistics_are_exact(tflite_card: Path, tmp_path: Path) -> None:
    folder = solid_folder(tmp_path / "solid", count=2)
    result = edgeproof("infer", "--model", str(tflite_card), "--source", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"] == 2
    weights, bias = pooled_dense_weights(4, SEED)
    pooled_expected = np.array([[120.0, 80.0, 40.0]], dtype=np.float32)
    scores_expected = pooled_expected @ weights.T + bias
    pooled, scores = report["summary"]["outputs"]
    assert {k: pooled[k] for k in ("min", "max", "mean", "std")} == stats(pooled_expected)
    assert {k: scores[k] for k in ("min", "max", "mean", "std")} == stats(scores_expected)


def test_video_file_source_and_text_output(
    onnx_card: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    card, _, _ = onnx_card
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    for i in range(7):
        writer.write(np.full((32, 48, 3), (i * 30) % 256, dtype=np.uint8))
    writer.release()
    result = edgeproof("infer", "--model", str(card), "--source", str(video), "--frames", "50")
    assert result.returncode == 0, result.stderr
    assert f"unseen-onnxonvideo:{video}" in "".join(result.stdout.split())  # the title wraps to the table
    for text in ("CPUExecutionProvider", "latency p50/p95/p99 (ms)", "pooled", "probs", "[1, 5]", "│ 7 "):
        assert text in result.stdout, text
    assert "━" not in result.stderr  # no progress bar when stderr is not a terminal


# --------------------------------------------------------------------------- bad input through the CLI


def test_unknown_backend(onnx_card: tuple[Path, np.ndarray, np.ndarray]) -> None:
    card, _, _ = onnx_card
    result = edgeproof("infer", "--model", str(card), "--backend", "tensorrt")
    assert result.returncode == 2
    assert error_lines(result).endswith(
        "edgeproof infer: error: argument --backend: invalid choice: 'tensorrt' (choose from 'litert', 'onnx')\n"
    )
    text = card.read_text().replace('license = "CC0-1.0"', 'license = "CC0-1.0"\nbackend = "tensorrt"')
    card.write_text(text)
    result = edgeproof("infer", "--model", str(card))
    assert result.returncode == 2
    assert error_lines(result) == (
        f"edgeproof: error: {card}:7: backend: Input should be 'onnx' or 'litert' (got 'tensorrt')\n"
    )


def test_unknown_provider_and_delegate(
    onnx_card: tuple[Path, np.ndarray, np.ndarray], tflite_card: Path
) -> None:
    card, _, _ = onnx_card
    result = edgeproof("infer", "--model", str(card), "--providers", "CPUExecutionProvidr", "--frames", "1")
    assert result.returncode == 5
    assert error_lines(result) == (
        "edgeproof: error: unknown ONNX Runtime execution provider(s): CPUExecutionProvidr\n"
        "  fix: did you mean CPUExecutionProvider?\n"
    )
    result = edgeproof("infer", "--model", str(tflite_card), "--providers", "xnnpak", "--frames", "1")
    assert result.returncode == 5
    assert error_lines(result) == (
        "edgeproof: error: unknown LiteRT delegate(s): xnnpak\n"
        "  fix: did you mean xnnpack? LiteRT delegates: xnnpack, gpu, nnapi, none\n"
    )


def test_runtime_not_installed(
    onnx_card: tuple[Path, np.ndarray, np.ndarray], tflite_card: Path, tmp_path: Path
) -> None:
    shim = tmp_path / "shim"
    for package in ("onnxruntime", "ai_edge_litert", "tflite_runtime"):
        (shim / package).mkdir(parents=True)
        (shim / package / "__init__.py").write_text(f'raise ImportError("{package} hidden by the test")\n')
    env = {"PYTHONPATH": str(shim)}
    card, _, _ = onnx_card
    result = edgeproof("infer", "--model", str(card), "--frames", "1", env=env)
    assert result.returncode == 5
    assert error_lines(result) == (
        "edgeproof: error: backend 'onnx' needs onnxruntime, which is not installed\n"
        "  fix: pip install onnxruntime   (Jetson: the gpu extra, onnxruntime-gpu)\n"
    )
    result = edgeproof("infer", "--model", str(tflite_card), "--frames", "1", env=env)
    assert result.returncode == 5
    assert error_lines(result) == (
        "edgeproof: error: backend 'litert' needs ai-edge-litert (or tflite-runtime), and neither is installed\n"
        "  fix: pip install 'edgeproof[litert]'   (or the tflite extra where ai-edge-litert has no wheel)\n"
    )


def test_model_file_problems(onnx_card: tuple[Path, np.ndarray, np.ndarray]) -> None:
    card, _, _ = onnx_card
    model = card.parent / "unseen.onnx"
    good = model.read_bytes()
    expected_sha = hashlib.sha256(good).hexdigest()

    model.write_bytes(good[:-8])  # truncated: sha256 mismatch
    result = edgeproof("infer", "--model", str(card), "--frames", "1")
    assert result.returncode == 4
    assert error_lines(result) == (
        f"edgeproof: error: model file {model} has sha256 {hashlib.sha256(good[:-8]).hexdigest()}, "
        f"but card {card} expects {expected_sha}\n"
        "  fix: the file is corrupt or was replaced; restore it, or update sha256 in the card if the change "
        "is intended\n"
    )

    model.unlink()
    result = edgeproof("infer", "--model", str(card), "--frames", "1")
    assert result.returncode == 4
    assert error_lines(result) == (
        f"edgeproof: error: model file {model} named by card {card} does not exist\n"
        "  fix: check 'file' in the card, or restore the model file\n"
    )

    garbage = b"\x00garbage, not protobuf\xff" * 20
    model.write_bytes(garbage)
    card.write_text(card.read_text().replace(expected_sha, hashlib.sha256(garbage).hexdigest()))
    result = edgeproof("infer", "--model", str(card), "--frames", "1")
    assert result.returncode == 4
    lines = error_lines(result)
    assert lines.startswith(f"edgeproof: error: onnxruntime cannot load {model}: ")
    assert lines.endswith("  fix: the file is not a valid ONNX model, or needs a newer onnxruntime\n")


def test_card_that_does_not_fit_its_model(onnx_card: tuple[Path, np.ndarray, np.ndarray]) -> None:
    card, _, _ = onnx_card
    card.write_text(
        card.read_text().replace('name = "probs"\nshape = [1, 5]', 'name = "probs"\nshape = [1, 6]')
    )
    result = edgeproof("infer", "--model", str(card), "--frames", "1")
    assert result.returncode == 4
    assert error_lines(result) == (
        f"edgeproof: error: card {card} does not match model {card.parent / 'unseen.onnx'}:\n"
        "  - output 'probs' shape: card says [1, 6], model has [1, 5]\n"
        "  fix: fix the card to describe the model (every difference is listed above)\n"
    )


def test_unreadable_sources(onnx_card: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    card, _, _ = onnx_card
    missing = tmp_path / "nope.mp4"
    result = edgeproof("infer", "--model", str(card), "--source", str(missing))
    assert result.returncode == 6
    assert error_lines(result) == (
        f"edgeproof: error: source '{missing}' is not a camera index, URL, folder or existing file\n"
        "  fix: use e.g. 0, rtsp://host/stream, clip.mp4, a folder of images, or synthetic\n"
    )
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all" * 64)
    result = edgeproof("infer", "--model", str(card), "--source", str(corrupt))
    assert result.returncode == 6
    assert error_lines(result) == (
        f"edgeproof: error: cannot open video file '{corrupt}'\n"
        "  fix: is it a video file OpenCV can decode (mp4, avi, mkv with an FFmpeg codec)?\n"
    )
    result = edgeproof("infer", "--model", str(card), "--source", "7")
    assert result.returncode == 6
    assert error_lines(result) == (
        "edgeproof: error: cannot open camera 7\n"
        "  fix: check the camera is connected and not in use by another program (ls /dev/video*)\n"
    )


def test_bad_numbers_are_usage_errors(onnx_card: tuple[Path, np.ndarray, np.ndarray]) -> None:
    card, _, _ = onnx_card
    result = edgeproof("infer", "--model", str(card), "--frames", "0")
    assert result.returncode == 2
    assert error_lines(result).endswith("edgeproof infer: error: argument --frames: must be >= 1, got 0\n")
    result = edgeproof("infer", "--model", str(card), "--threads", "-2")
    assert result.returncode == 2
    assert error_lines(result).endswith("edgeproof infer: error: argument --threads: must be >= 0, got -2\n")


def test_bad_config_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[inference]\nthreds = 2\n")
    result = edgeproof("config", "check", str(config))
    assert result.returncode == 2
    assert error_lines(result) == (
        f"edgeproof: error: {config}:2: inference.threds: unknown key 'threds'; did you mean 'threads'?\n"
        "  fix: rename 'threds' to 'threads'\n"
    )
    config.write_text("[inference]\nthreads = 2\n")
    result = edgeproof("config", "check", str(config), "--json", env={"EDGEPROOF_INFERENCE__THREADS": "3"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["config"]["inference"]["threads"] == 3


def test_python_m_agent_help() -> None:
    result = edgeproof("--help")
    assert result.returncode == 0
    for command in ("config", "keys", "profile", "models", "infer", "bench"):
        assert f"\n    {command} " in result.stdout, command
    result = edgeproof("infer", "--help")
    assert result.returncode == 0
    assert "Run a model card on frames from a source" in " ".join(result.stdout.split())


# --------------------------------------------------------------------------- progress bars on a terminal


def run_on_terminal(*args: str, timeout: float = 180) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal: (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROOF_")}
    env.update({"TERM": "xterm-256color", "COLUMNS": "100"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    code = proc.wait(timeout=10)
    os.close(master)
    return code, out, shown.decode(errors="replace")


def test_infer_shows_a_progress_bar_on_a_terminal(onnx_card: tuple[Path, np.ndarray, np.ndarray]) -> None:
    card, _, _ = onnx_card
    code, out, shown = run_on_terminal(
        "infer", "--model", str(card), "--frames", "40", "--source", "synthetic:64x48"
    )
    assert code == 0, shown
    assert "infer" in shown and "━" in shown and "/40" in shown
    assert "unseen-onnx on synthetic:64x48:0" in out  # the report still goes to stdout
    # --json keeps the terminal quiet (a script is reading stdout).
    code, out, shown = run_on_terminal("infer", "--model", str(card), "--frames", "5", "--json")
    assert code == 0 and json.loads(out)["frames"] == 5 and "━" not in shown


def test_bench_shows_a_progress_bar_on_a_terminal(tflite_card: Path) -> None:
    code, out, shown = run_on_terminal("bench", "--model", str(tflite_card), "--frames", "60", "--no-rss")
    assert code == 0, shown
    assert "bench" in shown and "━" in shown
    assert "bench pooled" in out


def test_quantize_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    card = write_card(tmp_path)
    out_model = tmp_path / "tiny-int8.onnx"
    code, out, shown = run_on_terminal(
        "models", "quantize", "--card", str(card), "--calib", str(ROOT / "tests/data/calib"),
        "--out", str(out_model), "--metric", "all", "--threshold", "0", "--holdout", "20",
        "--rounds", "2", "--threads", "1",
    )  # fmt: skip
    assert code == 0, shown
    assert "━" in shown
    assert "edgeproof models quantize" in out and out_model.exists()
