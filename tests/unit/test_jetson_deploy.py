"""deploy/jetson: the systemd drop-in (verified with the shipped unit), the TensorRT engine cache
handed to ONNX Runtime, and the doctor's Jetson platform check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.device.doctor_checks import platform, power_mode
from agent.inference.backends.onnx import provider_entries
from agent.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[2]
DROPIN = ROOT / "deploy" / "jetson" / "edgeproof-jetson.conf"
UNIT = ROOT / "deploy" / "systemd" / "edgeproof.service"
PROFILES = load_profiles(ROOT / "firmware_profiles")


def test_the_tensorrt_provider_gets_its_engine_and_timing_cache() -> None:
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_entries(providers, "") == providers
    cache = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": "/var/lib/edgeproof/tensorrt",
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": "/var/lib/edgeproof/tensorrt",
    }
    assert provider_entries(providers, "/var/lib/edgeproof/tensorrt") == [
        ("TensorrtExecutionProvider", cache),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_the_drop_in_passes_systemd_analyze_verify_with_the_unit(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), (
        "systemd-analyze is missing: apt-get install systemd (make test does)"
    )
    console = Path(sys.executable).parent / "edgeproof"
    found = str(console) if console.exists() else shutil.which("edgeproof")
    assert found, "no edgeproof console script: pip install -e . first"
    unit = tmp_path / "edgeproof.service"
    unit.write_text(UNIT.read_text().replace("/opt/edgeproof/venv/bin/edgeproof", found))
    (tmp_path / "edgeproof.service.d").mkdir()
    dropin = tmp_path / "edgeproof.service.d" / "jetson.conf"
    shutil.copy(DROPIN, dropin)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert str(dropin) not in output and str(unit) not in output, output
    # The same check sees a broken drop-in (so it is read at all).
    dropin.write_text(DROPIN.read_text().replace("TimeoutStartSec=15min", "TimeoutStartSec=soon"))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert f"{dropin}:" in done.stdout + done.stderr


def config(tmp_path: Path, body: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\nprofile = "jetson-orin"\n[inference]\n{body}')
    return path


def fake_root(tmp_path: Path, status: str | None) -> Path:
    root = tmp_path / "root"
    (root / "var/lib/nvpmodel").mkdir(parents=True)
    if status is not None:
        (root / "var/lib/nvpmodel/status").write_text(status)
    return root


def test_the_cpu_build_of_onnxruntime_is_named_on_a_jetson(tmp_path: Path) -> None:
    """This machine's real onnxruntime is the CPU build: what a Jetson has before deploy/jetson."""
    cfg = load_config(config(tmp_path), env={})
    status, detail, hint = platform(
        PROFILES["jetson-orin"], cfg, {}, fake_root(tmp_path, "pmode:0002 fmode:quiet\n")
    )
    assert status == "warn"
    assert detail.endswith(
        "no TensorrtExecutionProvider, CUDAExecutionProvider (a CPU build), so inference runs on the CPU; "
        "power mode 2 (nvpmodel)"
    )
    assert hint == "install NVIDIA's onnxruntime-gpu for this JetPack (deploy/jetson/README.md)"


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit-test stand-in for NVIDIA's onnxruntime-gpu: only the provider list differs."""
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )


def test_the_engine_cache_is_required_writable(tmp_path: Path, gpu_build: None) -> None:
    root = fake_root(tmp_path, None)
    profile = PROFILES["jetson-orin"]
    status, detail, hint = platform(profile, load_config(config(tmp_path), env={}), {}, root)
    assert (status, detail) == (
        "warn",
        "GPU providers: TensorrtExecutionProvider, CUDAExecutionProvider; no TensorRT engine cache, so every "
        "start rebuilds the engine (minutes); power mode unknown (no nvpmodel status)",
    )
    assert "deploy/jetson/edgeproof-jetson.conf" in hint
    missing = tmp_path / "trt"
    cfg = load_config(config(tmp_path, f'tensorrt_cache = "{missing}"\n'), env={})
    assert platform(profile, cfg, {}, root)[:2] == (
        "fail",
        f"inference.tensorrt_cache {missing} is not a folder this user can write: TensorRT cannot keep its engine",
    )
    missing.mkdir()
    assert platform(profile, cfg, {}, fake_root(tmp_path / "m0", "pmode:0000\n")) == (
        "ok",
        f"GPU providers: TensorrtExecutionProvider, CUDAExecutionProvider; TensorRT engine cache {missing}; "
        "power mode 0 (nvpmodel)",
        "",
    )
    # The cache path is resolved against the config file's folder, like every other path.
    relative = load_config(config(tmp_path, 'tensorrt_cache = "trt"\n'), env={})
    assert relative.inference.tensorrt_cache == str(missing)
    # Forcing the CPU needs no cache.
    cpu = load_config(config(tmp_path, 'onnx_providers = ["CPUExecutionProvider"]\n'), env={})
    assert platform(profile, cpu, {}, root)[0] == "ok"


def test_power_mode_status_is_read_defensively(tmp_path: Path) -> None:
    assert power_mode(fake_root(tmp_path / "a", "pmode:0003 fmode:cool")) == "3"
    assert power_mode(fake_root(tmp_path / "b", "garbage\x00\xff")) is None
    assert power_mode(fake_root(tmp_path / "c", None)) is None


def test_the_jetson_profiles_name_their_deploy_recipe() -> None:
    for name in ("jetson-nano", "jetson-orin"):
        assert "deploy/jetson" in PROFILES[name].notes
    assert "deploy/termux" in PROFILES["android-termux"].notes
