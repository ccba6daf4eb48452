"""ONNX Runtime backend: execution providers in profile order, falling back in order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.errors import BackendUnavailableError, ModelError
from agent.inference.backends.base import (
    Array,
    Backend,
    BackendInfo,
    BackendSettings,
    TensorInfo,
    check_card_against,
)
from agent.inference.cards import LoadedCard

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'onnx' needs onnxruntime, which is not installed",
            hint="pip install onnxruntime   (Jetson: the gpu extra, onnxruntime-gpu)",
        ) from exc
    return onnxruntime


def choose_providers(
    requested: tuple[str, ...], available: list[str], known: list[str]
) -> tuple[list[str], list[str]]:
    """(providers to use in order, skipped-with-reason).  Unknown names are an error."""
    unknown = [p for p in requested if p not in known]
    if unknown:
        from agent.validation import suggest

        near = [s for s in (suggest(p, known) for p in unknown) if s]
        raise BackendUnavailableError(
            f"unknown ONNX Runtime execution provider(s): {', '.join(unknown)}",
            hint=(f"did you mean {', '.join(near)}?" if near else "see onnxruntime.get_all_providers()"),
        )
    use = [p for p in requested if p in available]
    skipped = [f"{p}: not available in this onnxruntime build" for p in requested if p not in available]
    if not use:
        raise BackendUnavailableError(
            f"none of the requested execution providers is available: {', '.join(requested)}",
            hint=f"this onnxruntime offers {', '.join(available)}; add one to onnx_providers",
        )
    return use, skipped


TENSORRT = "TensorrtExecutionProvider"


def provider_entries(providers: list[str], tensorrt_cache: str) -> list[str | tuple[str, dict[str, str]]]:
    """The providers for InferenceSession; TensorRT with its engine and timing caches when a folder
    is given (the engine is then built once per model, TensorRT version and GPU, not every start)."""
    if not tensorrt_cache:
        return list(providers)
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": tensorrt_cache,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": tensorrt_cache,
    }
    return [(p, options) if p == TENSORRT else p for p in providers]


class OnnxBackend(Backend):
    key = "onnx"

    def __init__(self, loaded: LoadedCard, settings: BackendSettings) -> None:
        super().__init__(loaded, settings)
        ort = _import_ort()
        # Verify the file against the card, then let onnxruntime read it by path: a session
        # built from a bytes object keeps ~2x the model size resident for its lifetime.
        model_path = loaded.verify_model()
        providers, skipped = choose_providers(
            settings.onnx_providers, list(ort.get_available_providers()), list(ort.get_all_providers())
        )
        for reason in skipped:
            log.warning("execution provider skipped", extra={"reason": reason})
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if settings.spin_wait else "0"
        )
        try:
            self._session = ort.InferenceSession(
                str(model_path),
                sess_options=options,
                providers=provider_entries(providers, settings.tensorrt_cache),
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelError(
                f"onnxruntime cannot load {loaded.model_path}: {str(exc).strip()[:300]}",
                hint="the file is not a valid ONNX model, or needs a newer onnxruntime",
            ) from exc
        actual = list(self._session.get_providers())
        for p in providers:
            if p not in actual:
                skipped.append(f"{p}: failed to initialise, fell back to {actual[0]}")
        self._info = BackendInfo(
            backend=self.key,
            runtime=f"onnxruntime {ort.__version__}",
            provider=actual[0],
            threads=settings.threads,
            skipped=skipped,
        )
        check_card_against(loaded, self.inputs(), self.outputs())
        self._input_name = loaded.card.input.name
        self._output_names = [o.name for o in loaded.card.outputs]

    @property
    def info(self) -> BackendInfo:
        return self._info

    @staticmethod
    def _tensor_info(node: Any) -> TensorInfo:
        dtype = _ORT_TYPES.get(node.type, node.type)
        return TensorInfo(node.name, tuple(node.shape), dtype)

    def inputs(self) -> list[TensorInfo]:
        return [self._tensor_info(n) for n in self._session.get_inputs()]

    def outputs(self) -> list[TensorInfo]:
        return [self._tensor_info(n) for n in self._session.get_outputs()]

    def run(self, tensor: Array) -> list[Array]:
        result: list[Array] = self._session.run(self._output_names, {self._input_name: tensor})
        return result

    def bare_call(self) -> Callable[[Array], object]:
        session, name = self._session, self._input_name

        def call(tensor: Array) -> object:
            return session.run(None, {name: tensor})

        return call


BACKEND = OnnxBackend
