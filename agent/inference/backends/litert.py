"""LiteRT (TFLite) backend: ai_edge_litert, else tflite_runtime; XNNPACK; threads.

Delegates come from the profile in order: ``xnnpack`` (the default CPU
delegate built into the runtime), ``gpu`` / ``nnapi`` (external delegate
libraries, used only when they load) and ``none`` (plain builtin kernels).
The delegate actually in use is reported.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

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

# Shared-library names of external delegates, tried in order.
_EXTERNAL_DELEGATES = {
    "gpu": ("libtensorflowlite_gpu_delegate.so",),
    "nnapi": ("libnnapi_delegate.so",),
}
DELEGATES = ("xnnpack", *_EXTERNAL_DELEGATES, "none")


def check_delegates(requested: tuple[str, ...]) -> None:
    """Unknown delegate names are an error (not silently skipped), with the nearest known name."""
    unknown = [d for d in requested if d not in DELEGATES]
    if unknown:
        from agent.validation import suggest

        near = [s for s in (suggest(d, list(DELEGATES)) for d in unknown) if s]
        raise BackendUnavailableError(
            f"unknown LiteRT delegate(s): {', '.join(unknown)}",
            hint=(f"did you mean {', '.join(near)}? " if near else "")
            + f"LiteRT delegates: {', '.join(DELEGATES)}",
        )
    if not requested:
        raise BackendUnavailableError(
            "no LiteRT delegate requested", hint=f"set litert_delegates to some of: {', '.join(DELEGATES)}"
        )


def import_interpreter() -> tuple[Any, str]:
    """(interpreter module, runtime name): ai_edge_litert first, tflite_runtime second."""
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as litert

        return litert, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as tflite

        return tflite, f"tflite-runtime {getattr(tflite_runtime, '__version__', '?')}"
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'litert' needs ai-edge-litert (or tflite-runtime), and neither is installed",
            hint="pip install 'edgeproof[litert]'   (or the tflite extra where ai-edge-litert has no wheel)",
        ) from exc


class LiteRTBackend(Backend):
    key = "litert"

    def __init__(self, loaded: LoadedCard, settings: BackendSettings) -> None:
        super().__init__(loaded, settings)
        check_delegates(settings.litert_delegates)
        module, runtime = import_interpreter()
        model_path = str(loaded.verify_model())
        skipped: list[str] = []
        interpreter = None
        provider = ""
        for delegate in settings.litert_delegates:
            try:
                interpreter = self._open(module, model_path, delegate, settings.threads, loaded)
                provider = delegate if delegate != "none" else "builtin"
                break
            except _DelegateUnavailable as exc:
                skipped.append(f"{delegate}: {exc}")
                log.warning("litert delegate skipped", extra={"delegate": delegate, "reason": str(exc)})
        if interpreter is None:
            raise BackendUnavailableError(
                f"no LiteRT delegate from {list(settings.litert_delegates)} could be used",
                hint="add 'xnnpack' or 'none' to litert_delegates; skipped: " + "; ".join(skipped),
            )
        self._interp = interpreter
        self._info = BackendInfo(self.key, runtime, provider, settings.threads, skipped)
        check_card_against(loaded, self.inputs(), self.outputs())
        details = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        self._input_index = interpreter.get_input_details()[0]["index"]
        self._output_indices = [details[o.name] for o in loaded.card.outputs]

    @staticmethod
    def _open(module: Any, model_path: str, delegate: str, threads: int, card: LoadedCard) -> Any:
        resolver = module.OpResolverType
        kwargs: dict[str, Any] = {"model_path": model_path, "num_threads": threads}
        if delegate == "xnnpack":
            kwargs["experimental_op_resolver_type"] = resolver.AUTO
        elif delegate == "none":
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        else:
            loaded = None
            for library in _EXTERNAL_DELEGATES.get(delegate, ()):
                try:
                    # Probe first: the runtime's Delegate object raises from its own __del__
                    # (noise on stderr) when its library cannot be loaded.
                    ctypes.CDLL(library)
                    loaded = module.load_delegate(library)
                    break
                except (ValueError, OSError, RuntimeError):
                    continue
            if loaded is None:
                raise _DelegateUnavailable(f"delegate library {_EXTERNAL_DELEGATES.get(delegate)} not found")
            kwargs["experimental_delegates"] = [loaded]
        try:
            interpreter = module.Interpreter(**kwargs)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"LiteRT cannot load {card.model_path}: {str(exc).strip()[:300]}",
                hint="the file is not a valid .tflite model, or needs ops this runtime lacks",
            ) from exc
        return interpreter

    @property
    def info(self) -> BackendInfo:
        return self._info

    @staticmethod
    def _tensor_info(detail: dict[str, Any]) -> TensorInfo:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        return TensorInfo(
            detail["name"],
            tuple(int(d) for d in detail["shape"]),
            np.dtype(detail["dtype"]).name,
            (float(scale), int(zero_point)) if scale else None,
        )

    def inputs(self) -> list[TensorInfo]:
        return [self._tensor_info(d) for d in self._interp.get_input_details()]

    def outputs(self) -> list[TensorInfo]:
        return [self._tensor_info(d) for d in self._interp.get_output_details()]

    def run(self, tensor: Array) -> list[Array]:
        interp = self._interp
        interp.set_tensor(self._input_index, tensor)
        interp.invoke()
        return [interp.get_tensor(i) for i in self._output_indices]

    def bare_call(self) -> Callable[[Array], object]:
        interp, index = self._interp, self._input_index
        outputs = [d["index"] for d in interp.get_output_details()]

        def call(tensor: Array) -> object:
            interp.set_tensor(index, tensor)
            interp.invoke()
            return [interp.get_tensor(i) for i in outputs]

        return call


class _DelegateUnavailable(Exception):
    pass


BACKEND = LiteRTBackend
