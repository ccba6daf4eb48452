"""Backend settings from the firmware profile, with explicit overrides on top."""

from __future__ import annotations

from pathlib import Path

from agent.inference.backends.base import BackendSettings
from agent.profiles import Profile, detect, get_profile, load_profiles


def resolve_profile(profile_id: str = "auto", root: Path = Path("/")) -> Profile:
    profiles = load_profiles()
    if profile_id == "auto":
        return detect(profiles, root)[0]
    return get_profile(profiles, profile_id)


def backend_settings(
    profile: Profile,
    *,
    threads: int = 0,
    onnx_providers: list[str] | None = None,
    litert_delegates: list[str] | None = None,
    spin_wait: bool = True,
    tensorrt_cache: str = "",
) -> BackendSettings:
    defaults = profile.inference
    return BackendSettings(
        threads=threads or defaults.threads,
        onnx_providers=tuple(onnx_providers or defaults.onnx_providers),
        litert_delegates=tuple(litert_delegates or defaults.litert_delegates),
        spin_wait=spin_wait,
        tensorrt_cache=tensorrt_cache,
    )
