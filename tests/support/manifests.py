"""A valid fleet manifest body for unit tests (change fields with keyword arguments)."""

from __future__ import annotations

from typing import Any

NOW = 1_800_000_000_000


def manifest_body(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "stable",
        "version": 3,
        "model_id": "efficientnet-lite0-int8",
        "model_version": "1.1.0",
        "model": "model.onnx",
        "card": "model.toml",
        "artifacts": [
            {
                "name": "model.onnx",
                "url": "https://models.example/m.onnx",
                "sha256": "ab" * 32,
                "length": 5_000_000,
            },
            {
                "name": "model.toml",
                "url": "https://models.example/m.toml",
                "sha256": "cd" * 32,
                "length": 2_000,
            },
        ],
        "targets": {"profiles": ["rpi4", "rpi5"]},
        "expires_ms": NOW + 86_400_000,
        "stages": [500, 2500, 10_000],
        "stage": 2,
    }
    body.update(change)
    return body
