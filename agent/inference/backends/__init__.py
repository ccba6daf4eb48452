"""Registry of inference backends: key -> module, imported only when asked for.

A backend whose runtime is not installed is reported with the package that
provides it; it is never silently replaced by another backend.
"""

from __future__ import annotations

import importlib

from agent.errors import BackendUnavailableError, ConfigError
from agent.inference.backends.base import Backend, BackendSettings
from agent.inference.cards import LoadedCard

BACKENDS: dict[str, str] = {
    "onnx": "agent.inference.backends.onnx",
    "litert": "agent.inference.backends.litert",
}


def backend_class(key: str) -> type[Backend]:
    module_name = BACKENDS.get(key)
    if module_name is None:
        raise ConfigError(f"unknown backend '{key}'", hint="known backends: " + ", ".join(sorted(BACKENDS)))
    module = importlib.import_module(module_name)
    cls: type[Backend] = module.BACKEND
    return cls


def create_backend(loaded: LoadedCard, settings: BackendSettings, key: str | None = None) -> Backend:
    """Verify the model file and open it with the card's (or the given) backend."""
    chosen = key or loaded.card.backend_key
    cls = backend_class(chosen)
    if chosen == "onnx" and loaded.card.format != "onnx":
        raise BackendUnavailableError(
            f"backend 'onnx' cannot run a {loaded.card.format} model ({loaded.path})"
        )
    if chosen == "litert" and loaded.card.format != "tflite":
        raise BackendUnavailableError(
            f"backend 'litert' cannot run a {loaded.card.format} model ({loaded.path})"
        )
    return cls(loaded, settings)
