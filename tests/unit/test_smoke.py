"""The smoke test a new model release must pass: loads, right output shapes, finite, fast enough."""

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.device.smoke import SmokeResult, smoke_test
from agent.errors import ConfigError, DeployError
from agent.inference.pipeline import Pipeline
from agent.inference.runtime import backend_settings, resolve_profile
from agent.inference.sources import synthetic_frame
from agent.profiles import ThroughputBounds
from tests.support.onnx_models import tiny_classifier, write_model_and_card

MODELS = Path(__file__).resolve().parents[2] / "models"
CARD = MODELS / "efficientnet-lite0-int8.toml"
MODEL = MODELS / "efficientnet-lite0-int8.onnx"


@pytest.fixture(scope="module")
def profile():
    return resolve_profile("generic-x86_64")


@pytest.fixture(scope="module")
def settings(profile):
    return backend_settings(profile, threads=1)


def shipped_card_copy(folder: Path, old: str = "", new: str = "") -> Path:
    """The shipped card in ``folder``, naming the real model and labels by absolute path, one edit made."""
    text = CARD.read_text(encoding="utf-8")
    text = text.replace('file = "efficientnet-lite0-int8.onnx"', f'file = "{MODEL}"')
    text = text.replace('labels = "imagenet_labels.txt"', f'labels = "{MODELS / "imagenet_labels.txt"}"')
    assert old in text
    card = folder / "card.toml"
    card.write_text(text.replace(old, new, 1), encoding="utf-8")
    return card


def nan_model() -> onnx.ModelProto:
    """input (1,3,32,32) -> mean per channel -> log(-(|x| + 1)): three NaN scores."""
    one = numpy_helper.from_array(np.ones((1,), dtype=np.float32), "one")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Abs", ["f"], ["a"]),
        helper.make_node("Add", ["a", "one"], ["b"]),
        helper.make_node("Neg", ["b"], ["c"]),
        helper.make_node("Log", ["c"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_shipped_model_passes(profile, settings):
    pipeline, result = smoke_test(CARD, profile, settings)
    assert isinstance(pipeline, Pipeline)
    assert pipeline.loaded.card.id == "efficientnet-lite0-int8"
    assert result.runs == 5
    assert result.budget_ms == 100  # generic-x86_64, classifier-small
    assert result.provider == "CPUExecutionProvider"
    assert 0 < result.latency_ms_p50 < 100
    assert set(result.to_dict()) == {"runs", "latency_ms_p50", "budget_ms", "provider"}
    assert pipeline.step(synthetic_frame(64, 48, 1, 0)).outputs[0].shape == (1, 1000)  # still open


def test_no_budget_without_a_bound_for_the_model_class(tmp_path, profile, settings):
    card = write_model_and_card(tmp_path, tiny_classifier())
    unbounded = profile.model_copy(update={"throughput": {}})
    _, result = smoke_test(card, unbounded, settings, runs=2)
    assert (result.runs, result.budget_ms) == (2, None)


def test_wrong_sha256_fails_to_load(tmp_path, profile, settings):
    real = "1582aeb20a34a406584182f86544773c43e9a4a2c53e16082c8c763221b5459b"
    card = shipped_card_copy(tmp_path, real, "0" * 64)
    with pytest.raises(DeployError) as info:
        smoke_test(card, profile, settings)
    assert info.value.reason == "load_failed"
    assert info.value.message == (
        f"model card {card} cannot be loaded: model file {MODEL} has sha256 {real}, "
        f"but card {card} expects {'0' * 64}"
    )


def test_a_static_output_shape_the_model_does_not_have_fails_to_load(tmp_path, profile, settings):
    card = shipped_card_copy(tmp_path, "shape = [1, 1000]", "shape = [1, 1001]")
    with pytest.raises(DeployError) as info:
        smoke_test(card, profile, settings)
    assert info.value.reason == "load_failed"
    assert info.value.message == (
        f"model card {card} cannot be loaded: card {card} does not match model {MODEL}:\n"
        "  - output 'logits' shape: card says [1, 1001], model has [1, 1000]"
    )


def test_output_shape_differs_at_run_time(tmp_path, profile, settings):
    model = tiny_classifier()
    for value in (model.graph.input[0], model.graph.output[0]):  # dynamic batch: checked only when run
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    card = write_model_and_card(tmp_path, model, output_shape="[2, 10]")
    with pytest.raises(DeployError) as info:
        smoke_test(card, profile, settings)
    assert info.value.reason == "output_shape"
    assert info.value.message == (
        f"model of card {card} on synthetic frame 0: output 'logits' has shape [1, 10], the card says [2, 10]"
    )


def test_non_finite_outputs(tmp_path, profile, settings):
    card = write_model_and_card(
        tmp_path, nan_model(), name="nan", output_name="scores", output_shape="[1, 3]", decoder='kind = "raw"'
    )
    with pytest.raises(DeployError) as info:
        smoke_test(card, profile, settings)
    assert info.value.reason == "not_finite"
    assert info.value.message == (
        f"model of card {card} on synthetic frame 0: output 'scores' has 3 non-finite value(s) (NaN or inf) of 3"
    )


def test_too_slow_for_the_profile(profile, settings):
    tight = profile.model_copy(
        update={"throughput": {"classifier-small": ThroughputBounds(max_fps=2000, latency_budget_ms=1)}}
    )
    with pytest.raises(DeployError) as info:
        smoke_test(CARD, tight, settings, runs=3)
    assert info.value.reason == "too_slow"
    assert re.fullmatch(
        rf"model of card {re.escape(str(CARD))} is too slow: median latency \d+\.\d\d ms over 3 runs, "
        r"the budget of profile generic-x86_64 for model class classifier-small is 1 ms",
        info.value.message,
    )


def test_an_error_while_running_is_inference_failed(tmp_path, profile, settings, monkeypatch):
    card = write_model_and_card(tmp_path, tiny_classifier())

    def broken(self, frame):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Pipeline, "step", broken)
    with pytest.raises(DeployError) as info:
        smoke_test(card, profile, settings)
    assert info.value.reason == "inference_failed"
    assert (
        info.value.message == f"model of card {card} failed on synthetic frame 0: RuntimeError: out of memory"
    )


def test_runs_must_be_positive(profile, settings):
    with pytest.raises(ConfigError, match=r"^a smoke test needs at least 1 run, got 0$"):
        smoke_test(CARD, profile, settings, runs=0)


def test_result_to_dict():
    assert SmokeResult(5, 4.12345, 100, "CPUExecutionProvider").to_dict() == {
        "runs": 5,
        "latency_ms_p50": 4.123,
        "budget_ms": 100,
        "provider": "CPUExecutionProvider",
    }
