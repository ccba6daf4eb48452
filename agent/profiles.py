"""Firmware profiles: what the agent should do on a given kind of hardware.

One TOML file per hardware/OS in ``firmware_profiles/``: detection rules,
preferred backend with provider/delegate order, threads, thermal policy,
memory budget and throughput bounds per model class (used by the
coordinator for plausibility checks).  :func:`detect` matches the rules
against a root directory, so a fake ``/proc`` + ``/sys`` tree can stand in for
real hardware in tests (``edgeproof profile detect --root DIR``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.errors import ConfigError
from agent.validation import Strict, did_you_mean, load_toml, suggestions

PROFILE_DIR_ENV = "EDGEPROOF_PROFILES_DIR"
_DT_MODEL_PATHS = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")


Delegate = Literal["xnnpack", "gpu", "nnapi", "none"]


class DetectRules(Strict):
    """Every rule that is given must match; an empty rule set never matches."""

    arch: list[str] = Field(default_factory=list)  # any of these machine names
    device_tree_model: list[str] = Field(default_factory=list)  # any substring of the DT model
    tegra_release: list[str] = Field(default_factory=list)  # any prefix of /etc/nv_tegra_release
    android: bool | None = None  # Android markers present (True) or absent (False)


class InferenceDefaults(Strict):
    backend: Literal["onnx", "litert"] = "onnx"
    onnx_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    litert_delegates: list[Delegate] = Field(default_factory=lambda: list[Delegate](["xnnpack"]))
    threads: Annotated[int, Field(ge=1, le=64)] = 2


class ThermalPolicy(Strict):
    zone_glob: str = "sys/class/thermal/thermal_zone*/temp"
    # Zones whose ``type`` file names one of these are not read (e.g. Jetson's PMIC-Die,
    # a fixed 100 C placeholder rather than a sensor).
    ignore_zone_types: list[str] = Field(default_factory=list)
    throttle_c: Annotated[int, Field(ge=30, le=120)] = 80
    resume_c: Annotated[int, Field(ge=20, le=120)] = 70
    critical_c: Annotated[int, Field(ge=30, le=130)] = 85
    # What to do above throttle_c: run at this fraction of the configured rate;
    # above critical_c inference pauses until the device cools to resume_c.
    throttled_rate_bp: Annotated[int, Field(ge=0, le=10_000)] = 5_000

    @model_validator(mode="after")
    def _order(self) -> ThermalPolicy:
        if not self.resume_c < self.throttle_c <= self.critical_c:
            raise ValueError("need resume_c < throttle_c <= critical_c")
        return self


class ThroughputBounds(Strict):
    """Plausible inferences per second for one model class on this hardware."""

    max_fps: Annotated[int, Field(ge=1)]
    latency_budget_ms: Annotated[int, Field(ge=1)]


class Profile(Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    name: str
    priority: Annotated[int, Field(ge=0, le=1000)] = 100
    detect: DetectRules
    inference: InferenceDefaults = Field(default_factory=InferenceDefaults)
    thermal: ThermalPolicy = Field(default_factory=ThermalPolicy)
    memory_budget_mb: Annotated[int, Field(ge=16)] = 512
    throughput: dict[str, ThroughputBounds] = Field(default_factory=dict)
    notes: str = ""


def default_profile_dir() -> Path:
    env = os.environ.get(PROFILE_DIR_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "firmware_profiles"
    if here.is_dir():
        return here
    return Path("/usr/share/edgeproof/firmware_profiles")


def load_profiles(directory: Path | None = None) -> dict[str, Profile]:
    folder = directory or default_profile_dir()
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise ConfigError(
            f"no firmware profiles (*.toml) in {folder}", hint=f"set {PROFILE_DIR_ENV} to the profiles folder"
        )
    profiles: dict[str, Profile] = {}
    for path in files:
        profile = load_toml(Profile, path)
        if profile.id != path.stem:
            raise ConfigError(f"{path}: id '{profile.id}' must equal the file name '{path.stem}'")
        profiles[profile.id] = profile
    return profiles


@dataclass(frozen=True)
class HostFacts:
    """What detection looks at, read from a (possibly fake) root."""

    arch: str
    device_tree_model: str | None
    tegra_release: str | None
    android: bool
    sources: dict[str, str] = field(default_factory=dict)


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(encoding="utf-8", errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def read_host_facts(root: Path = Path("/"), env: Mapping[str, str] | None = None) -> HostFacts:
    environ = os.environ if env is None else env
    sources: dict[str, str] = {}
    # On the live host the userland's own arch (uname, as this process sees it) decides: under
    # qemu-user (make test-arm64) /proc/sys/kernel/arch is the host kernel's, not the emulated
    # CPU's.  A fake root (--root, tests) has no process of its own: its file decides.
    arch = None if root == Path("/") else _read(root, "proc/sys/kernel/arch")
    if arch:
        sources["arch"] = str(root / "proc/sys/kernel/arch")
    else:
        arch = platform.machine()
        sources["arch"] = "platform.machine()"
    model = None
    for rel in _DT_MODEL_PATHS:
        model = _read(root, rel)
        if model:
            sources["device_tree_model"] = str(root / rel)
            break
    tegra = _read(root, "etc/nv_tegra_release")
    if tegra:
        sources["tegra_release"] = str(root / "etc/nv_tegra_release")
    android_markers = [
        rel for rel in ("system/build.prop", "system/bin/app_process") if (root / rel).exists()
    ]
    if str(root) == "/":
        android_markers += [name for name in ("ANDROID_ROOT", "TERMUX_VERSION") if name in environ]
    if android_markers:
        sources["android"] = ", ".join(android_markers)
    return HostFacts(arch, model or None, tegra or None, bool(android_markers), sources)


def matches(rules: DetectRules, facts: HostFacts) -> bool:
    checks: list[bool] = []
    if rules.arch:
        checks.append(facts.arch in rules.arch)
    if rules.device_tree_model:
        model = facts.device_tree_model or ""
        checks.append(any(s in model for s in rules.device_tree_model))
    if rules.tegra_release:
        release = facts.tegra_release or ""
        checks.append(any(release.startswith(p) for p in rules.tegra_release))
    if rules.android is not None:
        checks.append(facts.android == rules.android)
    return bool(checks) and all(checks)


def detect(
    profiles: Mapping[str, Profile], root: Path = Path("/"), env: Mapping[str, str] | None = None
) -> tuple[Profile, HostFacts]:
    """The matching profile with the highest priority, and the facts it was chosen on."""
    facts = read_host_facts(root, env)
    candidates = [p for p in profiles.values() if matches(p.detect, facts)]
    if not candidates:
        raise ConfigError(
            f"no firmware profile matches this host (arch={facts.arch}, model={facts.device_tree_model!r})",
            hint="pass --profile ID, or add a profile to firmware_profiles/",
        )
    candidates.sort(key=lambda p: (-p.priority, p.id))
    return candidates[0], facts


def get_profile(profiles: Mapping[str, Profile], profile_id: str) -> Profile:
    try:
        return profiles[profile_id]
    except KeyError:
        near = suggestions(profile_id, list(profiles))
        hint = did_you_mean(near) if near else "known: " + ", ".join(sorted(profiles))
        raise ConfigError(f"unknown firmware profile '{profile_id}'", hint=hint) from None
