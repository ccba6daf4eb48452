"""agent.inference.cpu_class: CPU class names and int8 arithmetic families from CPU flags."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from agent.inference import cpu_class as c


@pytest.mark.parametrize(
    ("flags", "name", "arithmetic"),
    [
        ({"sse4_2", "avx2", "sha_ni"}, "x86_64-avx2", "x86-saturating-int16"),
        ({"avx2", "avx512f", "avx512bw"}, "x86_64-avx512", "x86-saturating-int16"),
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64-avx512-vnni", "x86-vnni-int32"),
        ({"avx2", "avx_vnni"}, "x86_64-avx-vnni", "x86-vnni-int32"),
        ({"sse4_2"}, "x86_64-sse", "x86-saturating-int16"),
    ],
)
def test_x86_classes(flags: set[str], name: str, arithmetic: str) -> None:
    features, got = c.x86_class(flags)
    assert got == name
    assert set(features) <= flags
    assert c.arithmetic("x86_64", features) == arithmetic


@pytest.mark.parametrize(
    ("hwcap", "hwcap2", "name", "features"),
    [
        (0, 0, "aarch64-neon", ()),
        (c.HWCAP_ASIMDDP, 0, "aarch64-dotprod", ("asimddp",)),
        (c.HWCAP_ASIMDDP, c.HWCAP2_I8MM, "aarch64-i8mm", ("asimddp", "i8mm")),
    ],
)
def test_aarch64_classes(hwcap: int, hwcap2: int, name: str, features: tuple[str, ...]) -> None:
    assert c.aarch64_class(hwcap, hwcap2) == (features, name)
    assert c.arithmetic("aarch64", features) == "arm-int32"


def test_cpuinfo_flags_are_read_from_the_flags_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\nbugs\t: x\n", encoding="utf-8")
    assert c._cpuinfo_flags(info) == {"fpu", "avx2", "avx512_vnni"}
    assert c._cpuinfo_flags(tmp_path / "missing") == set()


def test_detect_names_this_machine() -> None:
    cpu = c.detect()
    assert cpu.machine == platform.machine()
    if cpu.machine == "x86_64":
        flags = c._cpuinfo_flags()
        assert cpu.name == c.x86_class(flags)[1]
        assert cpu.vnni == ("avx512_vnni" in flags or "avx_vnni" in flags)
    assert cpu.arithmetic in c.ARITHMETIC_TEXT
