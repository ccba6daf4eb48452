"""Every firmware profile's detection, against fake /proc, /sys and /etc trees."""

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import ConfigError
from agent.profiles import Profile, detect, load_profiles
from agent.validation import load_toml

PROFILES = load_profiles()


def fake_root(
    tmp: Path,
    arch: str,
    dt_model: str | None = None,
    tegra: str | None = None,
    android: bool = False,
    dt_in_sys: bool = False,
) -> Path:
    root = tmp / "root"
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/arch").write_text(arch + "\n")
    if dt_model is not None:
        rel = "sys/firmware/devicetree/base/model" if dt_in_sys else "proc/device-tree/model"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(dt_model.encode() + b"\x00")  # device-tree strings are NUL-terminated
    if tegra is not None:
        (root / "etc").mkdir(parents=True)
        (root / "etc/nv_tegra_release").write_text(tegra)
    if android:
        (root / "system").mkdir(parents=True)
        (root / "system/build.prop").write_text("ro.build.version.release=14\n")
    return root


CASES = [
    ("rpi4", dict(arch="aarch64", dt_model="Raspberry Pi 4 Model B Rev 1.4")),
    ("rpi4", dict(arch="armv7l", dt_model="Raspberry Pi Compute Module 4 Rev 1.0", dt_in_sys=True)),
    ("rpi5", dict(arch="aarch64", dt_model="Raspberry Pi 5 Model B Rev 1.0")),
    (
        "jetson-nano",
        dict(
            arch="aarch64",
            dt_model="NVIDIA Jetson Nano Developer Kit",
            tegra="# R32 (release), REVISION: 7.1",
        ),
    ),
    (
        "jetson-orin",
        dict(
            arch="aarch64",
            dt_model="NVIDIA Jetson Orin Nano Developer Kit",
            tegra="# R36 (release), REVISION: 3.0",
        ),
    ),
    (
        "jetson-orin",
        dict(arch="aarch64", dt_model="NVIDIA Jetson AGX Orin", tegra="# R35 (release), REVISION: 4.1"),
    ),
    ("android-termux", dict(arch="aarch64", android=True)),
    ("generic-x86_64", dict(arch="x86_64")),
    ("generic-aarch64", dict(arch="aarch64", dt_model="Pine64 RockPro64")),
    ("generic-aarch64", dict(arch="aarch64")),
]


@pytest.mark.parametrize(("expected", "facts"), CASES, ids=[f"{e}-{i}" for i, (e, _) in enumerate(CASES)])
def test_detect(tmp_path, expected, facts):
    profile, host = detect(PROFILES, fake_root(tmp_path, **facts), env={})
    assert profile.id == expected
    assert host.arch == facts["arch"]


def test_every_shipped_profile_is_detected_by_some_case():
    assert {expected for expected, _ in CASES} == set(PROFILES)


def test_unknown_arch_matches_nothing(tmp_path):
    with pytest.raises(ConfigError, match=r"no firmware profile matches this host \(arch=riscv64"):
        detect(PROFILES, fake_root(tmp_path, arch="riscv64"), env={})


def test_cli_detect_json_with_root(tmp_path, capsys):
    root = fake_root(tmp_path, arch="aarch64", dt_model="Raspberry Pi 5 Model B Rev 1.0")
    assert main(["profile", "detect", "--root", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] == "rpi5"
    assert out["facts"]["device_tree_model"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert out["backend"] == "litert"


def test_profiles_carry_throughput_bounds_for_shipped_model_classes():
    for profile in PROFILES.values():
        assert {"classifier-small", "detector-small"} <= set(profile.throughput), profile.id


def test_profile_with_misspelt_key_is_refused_with_line_and_suggestion(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('id = "bad"\nname = "x"\n\n[detect]\narch = ["x86_64"]\n\n[inference]\nthreds = 2\n')
    with pytest.raises(ConfigError) as info:
        load_toml(Profile, bad)
    assert str(info.value) == (
        f"{bad}:8: inference.threds: unknown key 'threds'; did you mean 'threads'?\n  fix: rename 'threds' to 'threads'"
    )


def test_thermal_order_is_checked(tmp_path):
    bad = tmp_path / "hot.toml"
    bad.write_text(
        'id = "hot"\nname = "x"\n[detect]\narch = ["x86_64"]\n[thermal]\nthrottle_c = 60\nresume_c = 70\n'
    )
    with pytest.raises(ConfigError, match="need resume_c < throttle_c <= critical_c"):
        load_toml(Profile, bad)
