"""Which int8 arithmetic this CPU gives ONNX Runtime: the class every int8 figure is measured on.

ONNX Runtime's int8 kernels (MLAS) pick a code path by CPU feature, and the
paths do not compute the same thing:

* x86-64 without VNNI multiplies uint8 activations by int8 weights with
  ``vpmaddubsw``, which adds each pair of products into a *saturating* int16;
  8-bit weights can overflow it, 7-bit weights (``reduce_range``) cannot;
* x86-64 with AVX-512 VNNI or AVX-VNNI uses ``vpdpbusd``, which accumulates in
  int32 (no saturation);
* aarch64 widens to 16/32 bits (NEON ``smull``/``umull``) or uses the dot
  product instructions (``sdot``/``udot``, ARMv8.2 ``asimddp``) and the 8-bit
  matrix multiply (``i8mm``), all without saturation.

So an agreement figure measured on one class holds for the others only when
the recipe keeps the saturating path exact.  :func:`detect` names the class of
the running CPU; :func:`arithmetic` names its int8 family.  The x86 flags come
from ``/proc/cpuinfo``; the aarch64 ones from the ELF auxiliary vector
(``getauxval(AT_HWCAP)``), which qemu-user emulates faithfully (its
``/proc/cpuinfo`` is the host's).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Arithmetic = Literal["x86-saturating-int16", "x86-vnni-int32", "arm-int32", "other"]

AT_HWCAP = 16
AT_HWCAP2 = 26
HWCAP_ASIMDDP = 1 << 20  # aarch64 dot product (sdot/udot)
HWCAP2_I8MM = 1 << 13  # aarch64 int8 matrix multiply

ARITHMETIC_TEXT: dict[str, str] = {
    "x86-saturating-int16": "x86 without VNNI: u8 x s8 pairs summed in saturating int16 (vpmaddubsw)",
    "x86-vnni-int32": "x86 with VNNI: u8 x s8 accumulated in int32 (vpdpbusd), no saturation",
    "arm-int32": "aarch64: int8 products widened to int32 (NEON / sdot / i8mm), no saturation",
    "other": "no int8 kernel class known for this CPU",
}


@dataclass(frozen=True)
class CpuClass:
    machine: str  # platform.machine(): x86_64, aarch64, ...
    features: tuple[str, ...]  # the int8-relevant features present, sorted
    name: str  # e.g. x86_64-avx2, x86_64-avx512-vnni, aarch64-dotprod

    @property
    def vnni(self) -> bool:
        return "avx512_vnni" in self.features or "avx_vnni" in self.features

    @property
    def arithmetic(self) -> Arithmetic:
        return arithmetic(self.machine, self.features)


X86_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def x86_class(flags: set[str]) -> tuple[tuple[str, ...], str]:
    """(int8-relevant features, class name) from the ``flags`` of /proc/cpuinfo."""
    present = tuple(sorted(f for f in X86_FEATURES if f in flags))
    if "avx512_vnni" in flags:
        name = "x86_64-avx512-vnni"
    elif "avx_vnni" in flags:
        name = "x86_64-avx-vnni"
    elif "avx512bw" in flags:
        name = "x86_64-avx512"
    elif "avx2" in flags:
        name = "x86_64-avx2"
    else:
        name = "x86_64-sse"
    return present, name


def aarch64_class(hwcap: int, hwcap2: int) -> tuple[tuple[str, ...], str]:
    """(features, class name) from the aarch64 auxiliary vector words."""
    present = []
    if hwcap & HWCAP_ASIMDDP:
        present.append("asimddp")
    if hwcap2 & HWCAP2_I8MM:
        present.append("i8mm")
    if "i8mm" in present:
        name = "aarch64-i8mm"
    elif "asimddp" in present:
        name = "aarch64-dotprod"
    else:
        name = "aarch64-neon"
    return tuple(sorted(present)), name


def arithmetic(machine: str, features: tuple[str, ...]) -> Arithmetic:
    if machine in ("x86_64", "AMD64"):
        if "avx512_vnni" in features or "avx_vnni" in features:
            return "x86-vnni-int32"
        return "x86-saturating-int16"
    if machine in ("aarch64", "arm64"):
        return "arm-int32"
    return "other"


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def _auxval(kind: int) -> int:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return 0
    getauxval = libc.getauxval
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    return int(getauxval(kind))


def detect() -> CpuClass:
    """The class of the CPU this process runs on."""
    machine = platform.machine()
    if machine in ("x86_64", "AMD64"):
        features, name = x86_class(_cpuinfo_flags())
    elif machine in ("aarch64", "arm64"):
        features, name = aarch64_class(_auxval(AT_HWCAP), _auxval(AT_HWCAP2))
    else:
        features, name = (), machine or "unknown"
    return CpuClass(machine=machine, features=features, name=name)
