"""Each decoder on fixed output tensors."""

import numpy as np
import pytest

from agent.inference.cards import ModelCard
from agent.inference.decoders import create_decoder
from agent.inference.decoders.anchors import AnchorsDecoder, ssd_anchors
from agent.inference.decoders.base import dequantize, nms
from agent.inference.decoders.classification import ClassificationDecoder
from agent.inference.decoders.raw import RawDecoder
from agent.inference.decoders.yolo import YoloDecoder
from agent.inference.preprocess import Geometry

IDENTITY = Geometry(frame_w=640, frame_h=640, scale_x=1.0, scale_y=1.0, pad_x=0, pad_y=0)


def card(decoder: dict, outputs: list[dict], size: int = 640, thresholds: dict | None = None) -> ModelCard:
    return ModelCard.model_validate(
        {
            "id": "t",
            "version": "1",
            "format": "onnx",
            "file": "t.onnx",
            "sha256": "0" * 64,
            "license": "x",
            "source": "x",
            "input": {"name": "in", "shape": [1, 3, size, size]},
            "outputs": outputs,
            "decoder": decoder,
            "thresholds": thresholds or {},
        }
    )


def test_classification_top_k_with_softmax_and_labels():
    c = card({"kind": "classification", "top_k": 3}, [{"name": "logits", "shape": [1, 4]}])
    decoder = ClassificationDecoder(c, ["cat", "dog", "fox", "owl"])
    logits = np.array([[1.0, 3.0, 2.0, 0.0]], dtype=np.float32)
    (top,) = decoder.decode([logits], IDENTITY)
    assert top.label == "dog" and top.class_id == 1
    assert top.score == pytest.approx(np.exp(3) / np.exp([1, 3, 2, 0]).sum(), rel=1e-6)
    assert [p.label for p in decoder.last_top_k] == ["dog", "fox", "cat"]
    decoder.decode([np.array([[5.0, 0, 0, 0]], dtype=np.float32)], IDENTITY)
    assert decoder.counts() == {"cat": 1, "dog": 1}
    assert decoder.summary() == {"decoder": "classification", "frames": 2, "counts": {"cat": 1, "dog": 1}}
    decoder.reset()
    assert decoder.counts() == {} and decoder.frames == 0


def test_classification_without_labels_and_quantized_output():
    c = card(
        {"kind": "classification", "top_k": 1, "softmax": False},
        [{"name": "p", "shape": [1, 3], "dtype": "uint8", "quantization": {"scale": 0.5, "zero_point": 10}}],
    )
    decoder = ClassificationDecoder(c, None)
    (top,) = decoder.decode([np.array([[10, 30, 12]], dtype=np.uint8)], IDENTITY)
    assert (top.label, top.score) == ("class_1", 10.0)


def test_yolo_boxes_threshold_and_class_aware_nms():
    c = card({"kind": "yolo"}, [{"name": "out", "shape": [1, 6, 4]}], thresholds={"score": 0.5, "iou": 0.5})
    decoder = YoloDecoder(c, ["person", "car"])
    # columns: cx, cy, w, h, score(person), score(car)
    rows = np.array(
        [
            [100, 100, 50, 50, 0.9, 0.1],  # person
            [102, 101, 50, 50, 0.8, 0.1],  # same person, suppressed
            [101, 100, 50, 50, 0.1, 0.7],  # a car at the same place: other class, kept
            [400, 400, 20, 20, 0.3, 0.2],  # below threshold
        ],
        dtype=np.float32,
    )
    predictions = decoder.decode([rows.T[None]], IDENTITY)
    assert [(p.label, round(p.score, 2)) for p in predictions] == [("person", 0.9), ("car", 0.7)]
    assert predictions[0].box == (75.0, 75.0, 125.0, 125.0)
    assert decoder.counts() == {"car": 1, "person": 1}


def test_yolo_maps_letterboxed_boxes_back_to_the_frame():
    c = card({"kind": "yolo", "transposed": True}, [{"name": "out", "shape": [1, 1, 5]}])
    decoder = YoloDecoder(c, None)
    geometry = Geometry(frame_w=1280, frame_h=720, scale_x=0.5, scale_y=0.5, pad_x=0, pad_y=140)
    (p,) = decoder.decode([np.array([[[320, 320, 100, 100, 0.9]]], dtype=np.float32)], geometry)
    assert p.box == (540.0, 260.0, 740.0, 460.0)


def test_nms_keeps_highest_and_limit():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.array([0.5, 0.9, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.5, 10) == [1, 2]
    assert nms(boxes, scores, 0.5, 1) == [1]


def test_ssd_anchor_layout_matches_blazeface_short_range():
    anchors = ssd_anchors(128, 128, [8, 16, 16, 16], 0.5)
    assert anchors.shape == (896, 2)  # 16*16*2 + 8*8*6
    assert anchors[0].tolist() == [pytest.approx(0.5 / 16), pytest.approx(0.5 / 16)]
    assert anchors[512].tolist() == [pytest.approx(0.5 / 8), pytest.approx(0.5 / 8)]


def test_anchor_decoder_decodes_one_face():
    c = card(
        {"kind": "anchors", "box_scale": 128.0},
        [{"name": "regressors", "shape": [1, 896, 16]}, {"name": "classificators", "shape": [1, 896, 1]}],
        size=128,
        thresholds={"score": 0.5, "iou": 0.3},
    )
    decoder = AnchorsDecoder(c, None)
    regs = np.zeros((1, 896, 16), dtype=np.float32)
    scores = np.full((1, 896, 1), -10.0, dtype=np.float32)
    index = 512 + 6 * (8 * 3 + 4)  # stride-16 grid cell (x=4, y=3), first anchor
    regs[0, index, :4] = [8.0, -8.0, 32.0, 32.0]  # shift (+8, -8) px, 32x32 box
    scores[0, index, 0] = 4.0
    geometry = Geometry(frame_w=256, frame_h=256, scale_x=0.5, scale_y=0.5, pad_x=0, pad_y=0)
    (face,) = decoder.decode([regs, scores], geometry)
    cx, cy = (4 + 0.5) / 8 * 128 + 8, (3 + 0.5) / 8 * 128 - 8
    assert face.label == "face"
    assert face.score == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert face.box == pytest.approx(((cx - 16) * 2, (cy - 16) * 2, (cx + 16) * 2, (cy + 16) * 2))


def test_anchor_decoder_refuses_wrong_anchor_count():
    from agent.errors import ModelError

    c = card(
        {"kind": "anchors"},
        [{"name": "r", "shape": [1, 10, 16]}, {"name": "s", "shape": [1, 10, 1]}],
        size=128,
    )
    with pytest.raises(
        ModelError,
        match="model gives 10 scores and 160 regressor values, but the card's strides make 896 anchors",
    ):
        AnchorsDecoder(c, None).decode([np.zeros((1, 10, 16)), np.zeros((1, 10, 1))], IDENTITY)


def test_raw_decoder_reports_shapes_and_statistics():
    c = card({"kind": "raw"}, [{"name": "a", "shape": [2, 2]}, {"name": "b", "shape": [3]}])
    decoder = RawDecoder(c, None)
    assert decoder.decode([np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.0, np.nan, 2.0])], IDENTITY) == []
    decoder.decode([np.array([[5.0, 6.0], [7.0, 8.0]]), np.array([1.0, 1.0, 1.0])], IDENTITY)
    summary = decoder.summary()
    assert summary["decoder"] == "raw" and summary["frames"] == 2
    a, b = summary["outputs"]
    assert a == {
        "name": "a",
        "shape": [2, 2],
        "dtype": "float64",
        "min": 1.0,
        "max": 8.0,
        "mean": 4.5,
        "std": pytest.approx(np.std(np.arange(1.0, 9.0))),
        "finite": 8,
        "nonfinite": 0,
    }
    # NaN is counted, not averaged: mean over the 5 finite values 0, 2, 1, 1, 1.
    assert (b["nonfinite"], b["finite"], b["min"], b["max"]) == (1, 5, 0.0, 2.0)
    assert b["mean"] == pytest.approx(1.0) and b["std"] == pytest.approx(np.std([0.0, 2.0, 1.0, 1.0, 1.0]))
    assert decoder.counts() == {}
    decoder.reset()
    assert decoder.summary() == {"decoder": "raw", "frames": 0, "outputs": []}


def test_raw_decoder_summary_is_valid_json_when_nothing_is_finite():
    import json

    c = card({"kind": "raw"}, [{"name": "a", "shape": [2]}])
    decoder = RawDecoder(c, None)
    decoder.decode([np.array([np.nan, np.inf], dtype=np.float32)], IDENTITY)
    (a,) = decoder.summary()["outputs"]
    assert (a["min"], a["max"], a["mean"], a["std"], a["finite"], a["nonfinite"]) == (None,) * 4 + (0, 2)
    json.dumps(decoder.summary(), allow_nan=False)  # no NaN/Infinity tokens


def test_raw_decoder_dequantizes_integer_outputs_with_card_parameters():
    c = card(
        {"kind": "raw"},
        [{"name": "q", "shape": [1, 3], "dtype": "int8", "quantization": {"scale": 0.5, "zero_point": -2}}],
    )
    decoder = RawDecoder(c, None)
    decoder.decode([np.array([[-2, 0, 4]], dtype=np.int8)], IDENTITY)
    (q,) = decoder.summary()["outputs"]
    assert (q["dtype"], q["min"], q["max"], q["mean"]) == ("float32", 0.0, 3.0, pytest.approx(4 / 3))


def test_dequantize_leaves_float_outputs_alone():
    c = card({"kind": "raw"}, [{"name": "a", "shape": [1]}])
    array = np.array([1.5], dtype=np.float32)
    assert dequantize([array], c.outputs)[0] is array


def test_registry_creates_by_kind(tmp_path):
    from agent.inference.cards import LoadedCard

    c = card({"kind": "raw"}, [{"name": "a", "shape": [1]}])
    assert isinstance(create_decoder(LoadedCard(c, tmp_path / "t.toml")), RawDecoder)


def test_classes_per_decoder_for_the_labels_check():
    assert (
        ClassificationDecoder(
            card({"kind": "classification"}, [{"name": "p", "shape": [1, 7]}]), None
        ).classes()
        == 7
    )
    assert YoloDecoder(card({"kind": "yolo"}, [{"name": "o", "shape": [1, 6, 100]}]), None).classes() == 2
    yolo_t = card({"kind": "yolo", "transposed": True}, [{"name": "o", "shape": [1, 100, 9]}])
    assert YoloDecoder(yolo_t, None).classes() == 5
    assert RawDecoder(card({"kind": "raw"}, [{"name": "a", "shape": [3]}]), None).classes() is None
