"""Unit tests for agent.inference.quantize on a tiny conv + gemm classifier built in the test."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from agent.errors import ConfigError, ModelError, QuantizationRefusedError
from agent.inference import quantize as q
from agent.inference.cards import load_card
from agent.inference.cpu_class import detect
from tests.support.quantize_cards import tiny_classifier, write_card

CALIB = Path(__file__).resolve().parents[1] / "data" / "calib"

FAST = {"rounds": 2, "per_round": 2, "threads": 1}


@pytest.fixture()
def card(tmp_path: Path) -> Path:
    return write_card(tmp_path)


def test_success_writes_model_and_card_that_loads(card: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "tiny-int8.onnx"
    report = q.quantize(
        card,
        CALIB,
        out,
        threshold=0.0,
        metric="all",
        holdout=40,
        produced_by="edgeproof models quantize x",
        **FAST,
    )
    assert report.written
    loaded = load_card(out_dir / "tiny-int8.toml")
    data = loaded.read_verified_model()  # sha256 in the card matches the file
    assert hashlib.sha256(data).hexdigest() == report.int8_sha256 == loaded.card.sha256
    assert loaded.card.id == "tiny-int8"
    assert loaded.card.file == "tiny-int8.onnx"
    assert loaded.card.produced_by == "edgeproof models quantize x"
    assert loaded.labels() == ["a", "b", "c", "d"]  # labels path rewritten relative to the new card
    assert loaded.card.input == load_card(card).card.input
    # the written model really is quantized and still agrees with the float model on the figures reported
    graph_ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= graph_ops
    assert report.agreement.holdout == 40
    assert report.calibration_images == 160
    assert 0.0 <= report.agreement.top1_all <= report.agreement.top5_contains <= 1.0
    assert report.fp32_ms > 0 and report.int8_ms > 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["tiny-int8.onnx", "tiny-int8.toml"]
    # every figure names the CPU class it was measured on, in the report and in the card
    assert report.cpu == detect().name and report.arithmetic == detect().arithmetic
    assert report.recipe.reduce_range is True  # the default recipe: exact on every CPU class
    [figure] = loaded.card.measured
    assert figure.cpu == report.cpu
    assert figure.images == 40 and figure.top1_all == round(report.agreement.top1_all, 4)
    assert f"Measured on {report.cpu}, 40 held out of {CALIB} (seed 0)" in loaded.card.description
    assert loaded.card.challenge is None  # tolerance is measured across CPU classes, not here


def test_impossible_threshold_refuses_and_writes_nothing(card: Path, tmp_path: Path) -> None:
    out = tmp_path / "refused-int8.onnx"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(QuantizationRefusedError) as info:
        q.quantize(card, CALIB, out, threshold=1.01, metric="all", holdout=0.25, **FAST)
    pct = r"\d{1,3}\.\d%"
    assert re.fullmatch(
        rf"refused: top-1 agreement on all held-out images is {pct}, under the threshold 101\.0% "
        rf"\(all: {pct}, confident: ({pct}|n/a) of \d+ \[95% CI {pct}-{pct}\], top-5: {pct}, 50 held-out "
        rf"images, measured on {re.escape(detect().name)}\); "
        rf"{re.escape(str(out))} was not written",
        info.value.message,
    ), info.value.message
    assert info.value.hint == (
        "calibrate on more representative images, keep sensitive layers in float (--exclude), "
        "or lower --threshold"
    )
    assert info.value.exit_code == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_calibration_directory(card: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        q.quantize(card, missing, tmp_path / "x.onnx", **FAST)
    assert info.value.message == f"calibration directory {missing} does not exist"


def test_calibration_path_is_a_file(card: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        q.quantize(card, card, tmp_path / "x.onnx", **FAST)
    assert info.value.message == f"calibration path {card} is not a directory"


@pytest.mark.parametrize("content", [[], ["notes.txt", "data.npy"]])
def test_calibration_directory_without_images(card: Path, tmp_path: Path, content: list[str]) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for name in content:
        (calib / name).write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        q.quantize(card, calib, tmp_path / "x.onnx", **FAST)
    assert info.value.message == (
        f"calibration directory {calib} has no images (.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff)"
    )
    assert not (tmp_path / "x.onnx").exists()


def test_unreadable_image_is_named(card: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, src in enumerate(sorted(CALIB.glob("*.jpg"))[:3]):
        (calib / f"ok{i}.jpg").write_bytes(src.read_bytes())
    (calib / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError) as info:
        q.quantize(card, calib, tmp_path / "x.onnx", holdout=1, **FAST)
    assert info.value.message == f"calibration image {calib / 'broken.jpg'} cannot be read as an image"


@pytest.mark.parametrize(
    ("holdout", "message"),
    [
        (0.0, "--holdout must be a fraction in (0, 1) or a count >= 1, got 0"),
        (10.0, "--holdout 10 leaves 0 of 10 images for calibration and 10 held out"),
        (2.5, "--holdout count must be a whole number, got 2.5"),
    ],
)
def test_bad_holdout(holdout: float, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        q.holdout_count(10, holdout)
    assert info.value.message == message


def test_split_is_reproducible_and_disjoint() -> None:
    images = q.list_images(CALIB)
    calib_a, held_a = q.split_images(images, 0.5)
    calib_b, held_b = q.split_images(images, 0.5)
    assert (calib_a, held_a) == (calib_b, held_b)
    assert len(held_a) == len(images) // 2
    assert not set(calib_a) & set(held_a)
    assert sorted(calib_a + held_a) == images


def test_agreement_figures() -> None:
    fp32 = np.log(
        np.array(
            [
                [0.90, 0.05, 0.03, 0.02],  # confident, int8 agrees
                [0.60, 0.30, 0.05, 0.05],  # confident, int8 flips to class 1
                [0.30, 0.28, 0.22, 0.20],  # near-tie, int8 flips to class 3
                [0.26, 0.25, 0.25, 0.24],  # near-tie, int8 agrees
            ]
        )
    )
    int8 = np.log(
        np.array(
            [
                [0.85, 0.05, 0.05, 0.05],
                [0.40, 0.45, 0.10, 0.05],
                [0.10, 0.20, 0.30, 0.40],
                [0.30, 0.25, 0.25, 0.20],
            ]
        )
    )
    figures = q.agreement(fp32, int8, apply_softmax=True)
    assert figures == q.Agreement(
        holdout=4,
        top1_all=0.5,
        confident=2,
        top1_confident=0.5,
        top5_contains=1.0,
        top1_confident_ci95=q.wilson_interval(1, 2),
    )


def test_no_confident_input_refuses_with_reason(
    card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(q, "CONFIDENT", 1.01)  # nothing is ever that confident
    out = tmp_path / "c-int8.onnx"
    with pytest.raises(QuantizationRefusedError) as info:
        q.quantize(card, CALIB, out, threshold=0.5, holdout=10, **FAST)
    assert info.value.message.startswith(
        "refused: none of the 10 held-out images has fp32 softmax >= 1.01, "
        "so confident top-1 agreement cannot be measured"
    )
    assert not out.exists()


def test_non_classification_card_is_refused(tmp_path: Path) -> None:
    card = write_card(tmp_path, decoder='kind = "raw"')
    with pytest.raises(ConfigError) as info:
        q.quantize(card, CALIB, tmp_path / "x.onnx", **FAST)
    assert info.value.message == (
        f"card {card} has decoder kind 'raw'; agreement is measured on classification models only"
    )


def test_model_hash_mismatch_is_a_model_error(card: Path, tmp_path: Path) -> None:
    tiny_classifier(tmp_path / "tiny-fp32.onnx", seed=1)  # replace the file the card vouches for
    with pytest.raises(ModelError) as info:
        q.quantize(card, CALIB, tmp_path / "x.onnx", **FAST)
    assert "has sha256" in info.value.message and "but card" in info.value.message


@pytest.mark.parametrize(
    ("out_name", "message"),
    [
        ("x.bin", "--out {out} must end in .onnx"),
        ("tiny-fp32.onnx", "--out {out} is the float model itself; choose another file name"),
    ],
)
def test_bad_out(card: Path, tmp_path: Path, out_name: str, message: str) -> None:
    out = tmp_path / out_name
    with pytest.raises(ConfigError) as info:
        q.quantize(card, CALIB, out, **FAST)
    assert info.value.message == message.format(out=out)


def test_wilson_interval() -> None:
    lo, hi = q.wilson_interval(37, 38)
    assert (round(lo, 4), round(hi, 4)) == (0.865, 0.9953)
    assert q.wilson_interval(10, 10)[1] == 1.0 and q.wilson_interval(10, 10)[0] < 1.0
    assert q.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="outside"):
        q.wilson_interval(5, 4)


def _cpu(name: str, machine: str, features: tuple[str, ...]) -> q.CpuClass:
    return q.CpuClass(machine=machine, features=features, name=name)


def test_fleet_warning_when_the_gate_saturates_and_the_fleet_does_not() -> None:
    avx2 = _cpu("x86_64-avx2", "x86_64", ("avx2",))
    [warning] = q.fleet_warnings(avx2, q.Recipe(reduce_range=False))
    assert warning.startswith("the agreement gate ran on x86_64-avx2 (x86 without VNNI: ")
    assert "saturates where the fleet does not" in warning and "--reduce-range" in warning
    [warning] = q.fleet_warnings(avx2, q.Recipe())  # 7-bit weights: exact, still not proven on ARM
    assert "computes the same integers" in warning and "make test-arm64" in warning
    vnni = _cpu("x86_64-avx512-vnni", "x86_64", ("avx2", "avx512_vnni"))
    assert "x86 with VNNI" in q.fleet_warnings(vnni, q.Recipe(reduce_range=False))[0]
    assert q.fleet_warnings(_cpu("aarch64-neon", "aarch64", ()), q.Recipe(reduce_range=False)) == []
