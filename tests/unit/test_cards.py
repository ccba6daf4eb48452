"""Every model card validation error, and card-vs-model mismatches."""

import hashlib

import pytest

from agent.errors import ConfigError, ModelError
from agent.inference.backends import create_backend
from agent.inference.backends.base import BackendSettings
from agent.inference.cards import load_card
from tests.support.onnx_models import tiny_classifier, write_model_and_card

CPU = BackendSettings(threads=1)


@pytest.fixture
def card_path(tmp_path):
    return write_model_and_card(tmp_path, tiny_classifier())


def edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_valid_card_loads_and_opens(card_path):
    loaded = load_card(card_path)
    backend = create_backend(loaded, CPU)
    assert backend.info.provider == "CPUExecutionProvider"
    assert [o.name for o in backend.outputs()] == ["logits"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('version = "1.0.0"', 'versoin = "1.0.0"', "unknown key 'versoin'; did you mean 'version'?"),
        ('format = "onnx"', 'format = "pt"', "format: Input should be 'onnx' or 'tflite' (got 'pt')"),
        ('id = "tiny"', 'id = "Tiny Model"', "id: String should match pattern"),
        ('sha256 = "', 'sha256 = "zz', "sha256: String should match pattern"),
        ('layout = "NCHW"', 'layout = "CHW"', "input.layout: Input should be 'NCHW' or 'NHWC'"),
        (
            'dtype = "float32"',
            'dtype = "int4"',
            "input.dtype: Input should be 'float32', 'float16', 'uint8' or 'int8'",
        ),
        (
            "shape = [1, 3, 32, 32]",
            "shape = [3, 32, 32]",
            "input shape must have 4 dimensions (batch first), got [3, 32, 32]",
        ),
        (
            "shape = [1, 3, 32, 32]",
            "shape = [1, 4, 32, 32]",
            "input has 4 channels for layout NCHW; expected 1 or 3",
        ),
        ("std = [127.5]", "std = [0.0]", "std must not contain 0"),
        ("mean = [127.5]", "mean = [1.0, 2.0]", "mean needs 1 or 3 values, got 2"),
        ('kind = "classification"', 'kind = "segmentation"', "does not match any of the expected tags"),
        (
            "top_k = 3",
            "top_k = 0",
            "decoder.classification.top_k: Input should be greater than or equal to 1",
        ),
        ('license = "CC0-1.0"\n', "", "license: required key is missing"),
    ],
)
def test_card_schema_errors(card_path, old, new, message):
    edit(card_path, old, new)
    with pytest.raises(ConfigError) as info:
        load_card(card_path)
    assert message in str(info.value)
    assert str(card_path) in str(info.value)


def test_int8_input_with_normalisation_needs_quantization(card_path):
    edit(card_path, 'dtype = "float32"', 'dtype = "int8"')
    with pytest.raises(ConfigError, match=r"a int8 input with normalisation needs \[input.quantization\]"):
        load_card(card_path)


def test_sha256_mismatch(card_path):
    (card_path.parent / "tiny.onnx").write_bytes(
        b"\x08\x07" + (card_path.parent / "tiny.onnx").read_bytes()[2:]
    )
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), CPU)
    assert "has sha256" in info.value.message and "but card" in info.value.message
    assert "restore it" in (info.value.hint or "")


def test_missing_model_file(card_path):
    (card_path.parent / "tiny.onnx").unlink()
    with pytest.raises(ModelError, match="does not exist"):
        create_backend(load_card(card_path), CPU)


def test_corrupt_model_with_matching_sha(card_path):
    garbage = b"this is not an onnx model" * 10
    (card_path.parent / "tiny.onnx").write_bytes(garbage)
    edit(card_path, load_card(card_path).card.sha256, hashlib.sha256(garbage).hexdigest())
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        create_backend(load_card(card_path), CPU)


@pytest.mark.parametrize(
    ("old", "new", "difference"),
    [
        ('name = "input"', 'name = "images"', "input name: card says 'images', model has 'input'"),
        (
            "shape = [1, 3, 32, 32]",
            "shape = [1, 3, 64, 64]",
            "input shape: card says [1, 3, 64, 64], model has [1, 3, 32, 32]",
        ),
        ('name = "logits"', 'name = "scores"', "outputs[0] name: card says 'scores', model has 'logits'"),
        (
            "shape = [1, 10]",
            "shape = [1, 1000]",
            "output 'logits' shape: card says [1, 1000], model has [1, 10]",
        ),
    ],
)
def test_card_that_does_not_fit_its_model(card_path, old, new, difference):
    edit(card_path, old, new)
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), CPU)
    assert difference in info.value.message
    assert "does not match model" in info.value.message


def test_output_dtype_and_count_mismatch(card_path):
    edit(
        card_path,
        "shape = [1, 10]\n",
        'shape = [1, 10]\ndtype = "uint8"\n\n[[outputs]]\nname = "extra"\nshape = [1]\n',
    )
    with pytest.raises(ModelError, match="outputs: card lists 2, model has 1"):
        create_backend(load_card(card_path), CPU)
    edit(card_path, '\n[[outputs]]\nname = "extra"\nshape = [1]\n', "")
    with pytest.raises(ModelError, match="output 'logits' dtype: card says uint8, model has float32"):
        create_backend(load_card(card_path), CPU)


def test_wrong_backend_for_format(card_path):
    from agent.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="backend 'litert' cannot run a onnx model"):
        create_backend(load_card(card_path), CPU, "litert")


def test_unknown_backend(card_path):
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        create_backend(load_card(card_path), CPU, "tensorrt")


def test_unknown_and_unavailable_providers(card_path):
    from agent.errors import BackendUnavailableError

    loaded = load_card(card_path)
    with pytest.raises(BackendUnavailableError) as info:
        create_backend(loaded, BackendSettings(onnx_providers=("CPUExecutionProvidr",)))
    assert info.value.message == "unknown ONNX Runtime execution provider(s): CPUExecutionProvidr"
    assert info.value.hint == "did you mean CPUExecutionProvider?"
    with pytest.raises(
        BackendUnavailableError, match="none of the requested execution providers is available"
    ):
        create_backend(loaded, BackendSettings(onnx_providers=("CUDAExecutionProvider",)))
    # Falls back in order, and says what it skipped and what actually runs.
    backend = create_backend(
        loaded, BackendSettings(onnx_providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    )
    assert backend.info.provider == "CPUExecutionProvider"
    assert backend.info.skipped == ["TensorrtExecutionProvider: not available in this onnxruntime build"]
