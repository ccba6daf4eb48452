"""Every model card validation error, and card-vs-model mismatches (ONNX), with exact messages.

The LiteRT side of the same checks is in test_litert.py.
"""

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.errors import BackendUnavailableError, ConfigError, ModelError
from agent.inference.backends import create_backend
from agent.inference.backends.base import BackendSettings
from agent.inference.cards import load_card
from tests.support.onnx_models import tiny_classifier, write_model_and_card

CPU = BackendSettings(threads=1)
FIT_HINT = "fix the card to describe the model (every difference is listed above)"

# Line numbers in the card write_model_and_card writes (no extra): 2 version, 3 format, 9 [input],
# 11 input.shape, 12 layout, 13 dtype, 14 mean, 15 std, 17 [[outputs]], 19 outputs shape,
# 21 [decoder], 22 kind, 23 top_k.


@pytest.fixture
def card_path(tmp_path):
    return write_model_and_card(tmp_path, tiny_classifier())


def edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def refused(card_path):
    with pytest.raises(ConfigError) as info:
        load_card(card_path)
    return str(info.value)


def test_valid_card_loads_and_opens(card_path):
    loaded = load_card(card_path)
    backend = create_backend(loaded, CPU)
    assert backend.info.provider == "CPUExecutionProvider"
    assert [o.name for o in backend.outputs()] == ["logits"]
    out = backend.run(np.zeros((1, 3, 32, 32), dtype=np.float32))
    assert out[0].shape == (1, 10) and out[0].dtype == np.float32


SCHEMA_ERRORS = [
    (
        'version = "1.0.0"',
        'versoin = "1.0.0"',
        ": 2 problems\n  {card}: version: required key is missing\n"
        "  {card}:2: versoin: unknown key 'versoin'; did you mean 'version'?\n"
        "  fix: rename 'versoin' to 'version'",
    ),
    ('format = "onnx"', 'format = "pt"', "3: format: Input should be 'onnx' or 'tflite' (got 'pt')"),
    (
        'id = "tiny"',
        'id = "Tiny Model"',
        "1: id: String should match pattern '^[a-z0-9][a-z0-9._-]{0,63}$' (got 'Tiny Model')",
    ),
    (
        'sha256 = "',
        'sha256 = "zz',
        "5: sha256: String should match pattern '^[0-9a-f]{64}$' (got 'zz",  # digest follows
    ),
    ('layout = "NCHW"', 'layout = "CHW"', "12: input.layout: Input should be 'NCHW' or 'NHWC' (got 'CHW')"),
    (
        'dtype = "float32"',
        'dtype = "int4"',
        "13: input.dtype: Input should be 'float32', 'float16', 'uint8' or 'int8' (got 'int4')",
    ),
    (
        "shape = [1, 3, 32, 32]",
        "shape = [3, 32, 32]",
        "9: input: input shape must have 4 dimensions (batch first), got [3, 32, 32]",
    ),
    (
        "shape = [1, 3, 32, 32]",
        "shape = [1, 4, 32, 32]",
        "9: input: input has 4 channels for layout NCHW; expected 1 or 3",
    ),
    (
        "shape = [1, 3, 32, 32]",
        "shape = [1, 3, 0, 32]",
        "11: input.shape.2: Input should be greater than or equal to 1 (got 0)",
    ),
    ("std = [127.5]", "std = [0.0]", "9: input: std must not contain 0"),
    ("mean = [127.5]", "mean = [1.0, 2.0]", "9: input: mean needs 1 or 3 values, got 2"),
    (
        'kind = "classification"',
        'kind = "segmentation"',
        "22: decoder.kind: unknown kind 'segmentation' (expected one of: classification, yolo, anchors, raw)",
    ),
    (
        'kind = "classification"',
        'kind = "clasification"',
        "22: decoder.kind: unknown kind 'clasification' (expected one of: classification, yolo, anchors, "
        "raw); did you mean 'classification'?\n  fix: set decoder.kind = \"classification\"",
    ),
    ('kind = "classification"\n', "", "21: decoder.kind: required key is missing"),
    ("top_k = 3", "top_k = 0", "23: decoder.top_k: Input should be greater than or equal to 1 (got 0)"),
    (
        "top_k = 3",
        "top_k = 3\nlabls = 'x.txt'",
        "24: decoder.labls: unknown key 'labls'; did you mean 'labels'?\n  fix: rename 'labls' to 'labels'",
    ),
    (
        "top_k = 3",
        "top_k = 3\noutput = 1",
        ": decoder.output = 1, but the card lists 1 output(s) (indices 0..0)",
    ),
    ('license = "CC0-1.0"\n', "", ": license: required key is missing"),
    (
        'license = "CC0-1.0"',
        'license = "CC0-1.0"\nbackend = "tensorrt"',
        "7: backend: Input should be 'onnx' or 'litert' (got 'tensorrt')",
    ),
    (
        'license = "CC0-1.0"',
        'license = "CC0-1.0"\nbackend = "litert"',
        ": backend 'litert' cannot run a onnx model",
    ),
    (
        "shape = [1, 10]\n",
        'shape = [1, 10]\n\n[[outputs]]\nname = "logits"\nshape = [1, 10]\n',
        ": outputs: duplicate name(s) logits",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "message"), SCHEMA_ERRORS, ids=[m.split(":")[1] for *_, m in SCHEMA_ERRORS]
)
def test_card_schema_errors(card_path, old, new, message):
    """The whole message: file, line (when the key is in the file), key path, problem, fix."""
    edit(card_path, old, new)
    text = refused(card_path)
    message = message.replace("{card}", str(card_path))
    if message.startswith(": "):  # no line: a key that is missing at top level, or a whole-card rule
        assert text == f"{card_path}{message}"
    else:
        assert text.startswith(f"{card_path}:{message}")
        if "zz" not in message:
            assert text == f"{card_path}:{message}"


QUANTIZATION_ERRORS = [
    # (dtype, [input.quantization] table, normalisation lines, exact message tail)
    (
        "uint8",
        "scale = 0.0\nzero_point = 0",
        "17: input.quantization.scale: Input should be greater than 0 (got 0.0)",
    ),
    (
        "int8",
        "scale = -0.5\nzero_point = 0",
        "17: input.quantization.scale: Input should be greater than 0 (got -0.5)",
    ),
    (
        "uint8",
        "scale = nan\nzero_point = 0",
        "17: input.quantization.scale: Input should be a finite number (got nan)",
    ),
    ("uint8", "scale = 0.5", "16: input.quantization.zero_point: required key is missing"),
    (
        "uint8",
        "scale = 0.5\nzero_point = 0\nzero_pont = 1",
        "19: input.quantization.zero_pont: unknown key 'zero_pont'; did you mean 'zero_point'?\n"
        "  fix: rename 'zero_pont' to 'zero_point'",
    ),
    (
        "uint8",
        "scale = 0.5\nzero_point = 256",
        "9: input: quantization zero_point 256 is outside the uint8 range 0..255",
    ),
    (
        "int8",
        "scale = 0.5\nzero_point = 128",
        "9: input: quantization zero_point 128 is outside the int8 range -128..127",
    ),
    (
        "float32",
        "scale = 0.5\nzero_point = 0",
        "9: input: quantization parameters apply to int8/uint8 tensors, but dtype is float32",
    ),
]


@pytest.mark.parametrize(("dtype", "table", "message"), QUANTIZATION_ERRORS)
def test_bad_input_quantization_parameters(card_path, dtype, table, message):
    edit(card_path, 'dtype = "float32"', f'dtype = "{dtype}"')
    edit(card_path, "std = [127.5]\n", f"std = [127.5]\n[input.quantization]\n{table}\n")
    assert refused(card_path) == f"{card_path}:{message}"


def test_bad_output_quantization_parameters(card_path):
    edit(
        card_path,
        "shape = [1, 10]\n",
        'shape = [1, 10]\ndtype = "int8"\nquantization = { scale = 0.1, zero_point = -129 }\n',
    )
    assert (
        refused(card_path)
        == f"{card_path}:17: outputs.0: quantization zero_point -129 is outside the int8 range -128..127"
    )
    edit(card_path, 'dtype = "int8"\n', "")
    assert refused(card_path) == (
        f"{card_path}:17: outputs.0: quantization parameters apply to int8/uint8 tensors, but dtype is float32"
    )


def test_int8_input_with_normalisation_needs_quantization(card_path):
    edit(card_path, 'dtype = "float32"', 'dtype = "int8"')
    assert refused(card_path) == (
        f"{card_path}:9: input: a int8 input with normalisation needs [input.quantization] scale and zero_point"
    )


def test_several_problems_are_listed_together(card_path):
    edit(card_path, 'layout = "NCHW"', 'layout = "CHW"')
    edit(card_path, "top_k = 3", "top_k = 0")
    assert refused(card_path) == (
        f"{card_path}: 2 problems\n"
        f"  {card_path}:12: input.layout: Input should be 'NCHW' or 'NHWC' (got 'CHW')\n"
        f"  {card_path}:23: decoder.top_k: Input should be greater than or equal to 1 (got 0)"
    )


def test_second_array_table_is_located(card_path):
    edit(
        card_path,
        "shape = [1, 10]\n",
        'shape = [1, 10]\n\n[[outputs]]\nname = "extra"\nshape = [1]\ndtyp = "int8"\n',
    )
    assert refused(card_path) == (
        f"{card_path}:24: outputs.1.dtyp: unknown key 'dtyp'; did you mean 'dtype'?\n  fix: rename 'dtyp' to 'dtype'"
    )


def test_card_path_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_card(tmp_path / "none.toml")
    assert str(info.value) == f"{tmp_path / 'none.toml'}: file not found"
    with pytest.raises(ConfigError) as info:
        load_card(tmp_path)
    assert str(info.value) == f"{tmp_path} is a directory; pass a model card file (models/*.toml)"
    bad = tmp_path / "bad.toml"
    bad.write_text('id = "x"\nversion = \n')
    with pytest.raises(ConfigError) as info:
        load_card(bad)
    assert str(info.value).startswith(f"{bad}: not valid TOML: Invalid value (at line 2, column")


def test_sha256_mismatch(card_path):
    model = card_path.parent / "tiny.onnx"
    data = b"\x08\x07" + model.read_bytes()[2:]
    model.write_bytes(data)
    expected = load_card(card_path).card.sha256
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), CPU)
    assert info.value.message == (
        f"model file {model} has sha256 {hashlib.sha256(data).hexdigest()}, but card {card_path} expects {expected}"
    )
    assert info.value.hint == (
        "the file is corrupt or was replaced; restore it, or update sha256 in the card if the change is intended"
    )
    assert info.value.exit_code == 4


def test_missing_model_file(card_path):
    model = card_path.parent / "tiny.onnx"
    model.unlink()
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), CPU)
    assert str(info.value) == (
        f"model file {model} named by card {card_path} does not exist\n"
        "  fix: check 'file' in the card, or restore the model file"
    )


def test_corrupt_model_with_matching_sha(card_path):
    model = card_path.parent / "tiny.onnx"
    garbage = b"this is not an onnx model" * 10
    model.write_bytes(garbage)
    edit(card_path, load_card(card_path).card.sha256, hashlib.sha256(garbage).hexdigest())
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), CPU)
    assert info.value.message.startswith(f"onnxruntime cannot load {model}: ")
    assert info.value.hint == "the file is not a valid ONNX model, or needs a newer onnxruntime"


MISMATCHES = [
    ('name = "input"', 'name = "images"', "input name: card says 'images', model has 'input'"),
    (
        "shape = [1, 3, 32, 32]",
        "shape = [1, 3, 64, 64]",
        "input shape: card says [1, 3, 64, 64], model has [1, 3, 32, 32]",
    ),
    (
        'dtype = "float32"\nmean = [127.5]\nstd = [127.5]',
        'dtype = "uint8"',
        "input dtype: card says uint8, model has float32",
    ),
    ('name = "logits"', 'name = "scores"', "outputs[0] name: card says 'scores', model has 'logits'"),
    ("shape = [1, 10]", "shape = [1, 1000]", "output 'logits' shape: card says [1, 1000], model has [1, 10]"),
    (
        "shape = [1, 10]",
        'shape = [1, 10]\ndtype = "uint8"',
        "output 'logits' dtype: card says uint8, model has float32",
    ),
    (
        "shape = [1, 10]\n",
        'shape = [1, 10]\n\n[[outputs]]\nname = "extra"\nshape = [1]\n',
        "outputs: card lists 2, model has 1 (logits)",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "difference"), MISMATCHES, ids=[d.split(":")[0] for *_, d in MISMATCHES]
)
def test_card_that_does_not_fit_its_model(card_path, old, new, difference):
    edit(card_path, old, new)
    model = card_path.parent / "tiny.onnx"
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), CPU)
    assert info.value.message == f"card {card_path} does not match model {model}:\n  - {difference}"
    assert info.value.hint == FIT_HINT


def test_every_difference_is_listed(card_path):
    edit(card_path, 'name = "input"', 'name = "images"')
    edit(card_path, "shape = [1, 10]", "shape = [1, 1000]")
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card_path), CPU)
    assert info.value.message.endswith(
        ":\n  - input name: card says 'images', model has 'input'"
        "\n  - output 'logits' shape: card says [1, 1000], model has [1, 10]"
    )


def test_model_with_two_inputs_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "bias"], ["logits"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 10]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    card = write_model_and_card(tmp_path, model, name="two")
    with pytest.raises(ModelError) as info:
        create_backend(load_card(card), CPU)
    assert info.value.message == (
        f"card {card} does not match model {tmp_path / 'two.onnx'}:\n  - model has 2 inputs (input, bias); cards describe 1"
    )


def test_dynamic_dimensions_match_any_card_value(tmp_path):
    """A model with a symbolic batch dimension fits a card with batch 1."""
    model = tiny_classifier()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    card = write_model_and_card(tmp_path, model, name="dyn")
    backend = create_backend(load_card(card), CPU)
    assert backend.inputs()[0].shape[0] == "batch"


def test_wrong_backend_for_format(card_path):
    with pytest.raises(BackendUnavailableError) as info:
        create_backend(load_card(card_path), CPU, "litert")
    assert info.value.message == f"backend 'litert' cannot run a onnx model ({card_path})"


def test_unknown_backend(card_path):
    with pytest.raises(ConfigError) as info:
        create_backend(load_card(card_path), CPU, "tensorrt")
    assert str(info.value) == "unknown backend 'tensorrt'\n  fix: known backends: litert, onnx"


def test_unknown_and_unavailable_providers(card_path):
    loaded = load_card(card_path)
    with pytest.raises(BackendUnavailableError) as info:
        create_backend(loaded, BackendSettings(onnx_providers=("CPUExecutionProvidr",)))
    assert info.value.message == "unknown ONNX Runtime execution provider(s): CPUExecutionProvidr"
    assert info.value.hint == "did you mean CPUExecutionProvider?"
    with pytest.raises(BackendUnavailableError) as info:
        create_backend(loaded, BackendSettings(onnx_providers=("CUDAExecutionProvider",)))
    assert (
        info.value.message == "none of the requested execution providers is available: CUDAExecutionProvider"
    )
    import onnxruntime

    offered = ", ".join(onnxruntime.get_available_providers())
    assert info.value.hint == f"this onnxruntime offers {offered}; add one to onnx_providers"
    # Falls back in order, and says what it skipped and what actually runs.
    backend = create_backend(
        loaded, BackendSettings(onnx_providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    )
    assert backend.info.provider == "CPUExecutionProvider"
    assert backend.info.skipped == ["TensorrtExecutionProvider: not available in this onnxruntime build"]


def test_colour_must_fit_the_channel_count(card_path):
    edit(card_path, 'dtype = "float32"', 'dtype = "float32"\ncolor = "GRAY"')
    assert refused(card_path) == (
        f"{card_path}:9: input: color GRAY does not fit 3 channel(s): "
        'use color = "GRAY" for 1 channel, RGB or BGR for 3'
    )


def test_one_channel_model_with_gray_card(tmp_path):
    from agent.inference.pipeline import Pipeline
    from agent.inference.sources import synthetic_frame

    card = write_model_and_card(
        tmp_path,
        tiny_classifier(channels=1),
        input_shape="[1, 1, 32, 32]",
        extra="",
    )
    with pytest.raises(ConfigError) as info:
        load_card(card)
    assert str(info.value) == (
        f"{card}:9: input: color RGB does not fit 1 channel(s): "
        'use color = "GRAY" for 1 channel, RGB or BGR for 3'
    )
    edit(card, 'dtype = "float32"', 'dtype = "float32"\ncolor = "GRAY"')
    pipeline = Pipeline.open(str(card), CPU)
    result = pipeline.step(synthetic_frame(40, 30, seed=1, index=0))
    assert result.outputs[0].shape == (1, 10) and len(result.predictions) == 1


def test_labels_file_missing_or_not_fitting_the_output(card_path):
    from agent.inference.decoders import create_decoder

    edit(card_path, "top_k = 3", 'top_k = 3\nlabels = "labels.txt"')
    labels = card_path.parent / "labels.txt"
    with pytest.raises(ConfigError) as info:
        create_decoder(load_card(card_path))
    assert str(info.value) == (
        f"{card_path}: decoder.labels file {labels} cannot be read: "
        f"[Errno 2] No such file or directory: '{labels}'"
    )
    labels.write_text("\n".join(f"label {i}" for i in range(9)) + "\n")
    with pytest.raises(ConfigError) as info:
        create_decoder(load_card(card_path))
    assert str(info.value) == (
        f"{card_path}: decoder.labels file labels.txt has 9 labels, but the classification output has 10 classes\n"
        "  fix: use the labels file that belongs to this model (one label per line, in class order)"
    )
    labels.write_text("\n".join(f"label {i}" for i in range(10)) + "\n\n")  # blank lines are ignored
    assert create_decoder(load_card(card_path)).labels == [f"label {i}" for i in range(10)]


@pytest.mark.parametrize("spin_wait, expected", [(True, "1"), (False, "0")])
def test_onnx_spin_wait_setting_reaches_the_session(card_path, spin_wait, expected):
    backend = create_backend(load_card(card_path), BackendSettings(threads=1, spin_wait=spin_wait))
    options = backend._session.get_session_options()  # type: ignore[attr-defined]
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
