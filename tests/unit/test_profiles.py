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


@pytest.mark.parametrize(("expected", "facts"), CASES, ids=[f"{e}-{i}" for i, (e, _) in enumerate(CASES)])
def test_cli_detect_json_for_every_profile(tmp_path, capsys, expected, facts):
    root = fake_root(tmp_path, **facts)
    assert main(["profile", "detect", "--root", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    profile = PROFILES[expected]
    assert set(out) == {"profile", "name", "backend", "threads", "facts", "evidence"}
    assert (out["profile"], out["name"], out["backend"], out["threads"]) == (
        expected,
        profile.name,
        profile.inference.backend,
        profile.inference.threads,
    )
    assert out["facts"] == {
        "arch": facts["arch"],
        "device_tree_model": facts.get("dt_model"),
        "tegra_release": facts.get("tegra"),
        "android": facts.get("android", False),
    }
    assert out["evidence"]["arch"] == str(root / "proc/sys/kernel/arch")
    if facts.get("dt_model"):
        rel = "sys/firmware/devicetree/base/model" if facts.get("dt_in_sys") else "proc/device-tree/model"
        assert out["evidence"]["device_tree_model"] == str(root / rel)
    if facts.get("android"):
        assert out["evidence"]["android"] == "system/build.prop"


def test_cli_detect_without_a_match_is_a_clear_error(tmp_path, capsys):
    root = fake_root(tmp_path, arch="riscv64")
    assert main(["profile", "detect", "--root", str(root), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "edgeproof: error: no firmware profile matches this host (arch=riscv64, model=None)\n"
        "  fix: pass --profile ID, or add a profile to firmware_profiles/\n"
    )


def test_cli_list_and_show(capsys):
    assert main(["profile", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(listed) == sorted(
        ["rpi4", "rpi5", "jetson-nano", "jetson-orin", "android-termux", "generic-x86_64", "generic-aarch64"]
    )
    assert listed["jetson-orin"]["inference"]["onnx_providers"] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert main(["profile", "show", "rpi4", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == listed["rpi4"]
    assert set(shown) >= {"detect", "inference", "thermal", "memory_budget_mb", "throughput"}
    assert main(["profile", "show", "rpi"]) == 2
    assert capsys.readouterr().err == (
        "edgeproof: error: unknown firmware profile 'rpi'\n  fix: did you mean 'rpi4' or 'rpi5'?\n"
    )
    assert main(["profile", "show", "jetson-orn"]) == 2
    assert capsys.readouterr().err == (
        "edgeproof: error: unknown firmware profile 'jetson-orn'\n  fix: did you mean 'jetson-orin'?\n"
    )
    assert main(["profile", "show", "pc"]) == 2
    assert capsys.readouterr().err.endswith(
        "fix: known: android-termux, generic-aarch64, generic-x86_64, jetson-nano, jetson-orin, rpi4, rpi5\n"
    )


def test_every_profile_sets_what_the_issue_lists():
    """Detection rules, backend with provider/delegate order, threads, thermal, memory, throughput."""
    for path in sorted((Path(__file__).parents[2] / "firmware_profiles").glob("*.toml")):
        text = path.read_text()
        for needle in (
            "[detect]",
            "[inference]",
            "backend =",
            "threads =",
            "[thermal]",
            "memory_budget_mb =",
        ):
            assert needle in text, (path.name, needle)
        profile = PROFILES[path.stem]
        assert profile.inference.onnx_providers[-1] == "CPUExecutionProvider", path.name  # CPU last resort
        assert profile.throughput, path.name


def test_misspelt_key_under_a_throughput_class_is_located(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'id = "bad"\nname = "x"\n[detect]\narch = ["x86_64"]\n\n'
        "[throughput.classifier-small]\nmax_fps = 10\nlatency_budget_ms = 50\n\n"
        "[throughput.detector-small]\nmax_fsp = 10\nlatency_budget_ms = 50\n"
    )
    with pytest.raises(ConfigError) as info:
        load_toml(Profile, bad)
    assert str(info.value) == (
        f"{bad}: 2 problems\n"
        f"  {bad}:10: throughput.detector-small.max_fps: required key is missing\n"
        f"  {bad}:11: throughput.detector-small.max_fsp: unknown key 'max_fsp'; did you mean 'max_fps'?\n"
        "  fix: rename 'max_fsp' to 'max_fps'"
    )


def test_jetson_nano_ignores_its_pmic_placeholder_zone():
    from agent.profiles import get_profile, load_profiles

    assert get_profile(load_profiles(), "jetson-nano").thermal.ignore_zone_types == ["PMIC-Die"]
