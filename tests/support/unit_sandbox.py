"""Run a command under the seccomp filters a systemd unit asks for, the way systemd 252 builds them.

systemd is not PID 1 on the test machines, so a unit cannot be started for real. What a unit's
syscall settings allow can still be enforced on the real daemon: this module reads the unit's
``SystemCallFilter=`` lines (an allow-list, then ``~`` removals), expands the ``@groups`` with
``systemd-analyze syscall-filter`` (systemd's own tables), and loads, with libseccomp through
ctypes, the same three filters systemd installs just before ``execve``:

* the allow-list: any other system call fails with ``SystemCallErrorNumber=`` (EPERM);
* ``RestrictAddressFamilies=``: ``socket()`` of another family fails with EAFNOSUPPORT;
* ``MemoryDenyWriteExecute=yes``: ``mmap`` writable+executable, ``mprotect``/``pkey_mprotect``
  adding PROT_EXEC and ``shmat`` with SHM_EXEC fail with EPERM;

plus ``no_new_privs`` (``NoNewPrivileges=yes``). ``SystemCallArchitectures=native``: the filters
are built for the native ABI only (libseccomp kills other ABIs). Used as
``python tests/support/unit_sandbox.py UNIT -- COMMAND...`` (then it execs COMMAND) by
tests/integration/test_unit_sandbox.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE = 0x2
PROT_EXEC = 0x4
SHM_EXEC = 0o100000
AF_MAX = 46  # linux/socket.h (6.x)


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """[Service] key -> every value, in order (continuation lines are not used in our units)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """Every ``@group`` -> its entries (names and nested groups), from systemd-analyze."""
    output = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(entries: list[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for entry in entries:
        if entry.startswith("@"):
            names |= expand(groups[entry], groups)
        else:
            names.add(entry)
    return names


def allowed_syscalls(unit: Path) -> set[str]:
    """The allow-list systemd builds from the unit's SystemCallFilter= lines."""
    filters = unit_settings(unit).get("SystemCallFilter", [])
    if not filters or filters[0].startswith("~"):
        raise ValueError(f"{unit}: the first SystemCallFilter= must be an allow-list")
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in filters:
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        allowed = allowed - names if deny else allowed | names
    return allowed


def _error_number(unit: Path) -> int:
    name = unit_settings(unit).get("SystemCallErrorNumber", ["EPERM"])[-1]
    return int(getattr(errno, name))


def _families(unit: Path) -> set[int]:
    values = unit_settings(unit).get("RestrictAddressFamilies", [])
    return {int(getattr(socket, name)) for value in values for name in value.split()}


def install_filters(unit: Path) -> None:
    """Load the unit's filters into this process (irreversible: then exec the service)."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    def rule(ctx: int, action: int, name: str, *cmps: ArgCmp) -> None:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call of this architecture
            return
        array = (ArgCmp * max(1, len(cmps)))(*cmps)
        result = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
        if result < 0:
            raise OSError(-result, f"seccomp_rule_add({name})")

    def load(ctx: int) -> None:
        result = lib.seccomp_load(ctx)
        if result < 0:
            raise OSError(-result, "seccomp_load")

    settings = unit_settings(unit)
    refused = scmp_act_errno(_error_number(unit))
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        wx = PROT_WRITE | PROT_EXEC
        rule(ctx, scmp_act_errno(errno.EPERM), "mmap", ArgCmp(2, SCMP_CMP_MASKED_EQ, wx, wx))
        for name in ("mprotect", "pkey_mprotect"):
            rule(ctx, scmp_act_errno(errno.EPERM), name, ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        rule(ctx, scmp_act_errno(errno.EPERM), "shmat", ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        load(ctx)
    families = _families(unit)
    if families:
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        for family in range(AF_MAX + 1):
            if family not in families:
                rule(ctx, scmp_act_errno(errno.EAFNOSUPPORT), "socket", ArgCmp(0, SCMP_CMP_EQ, family, 0))
        load(ctx)
    ctx = lib.seccomp_init(refused)  # the allow-list last: it must still allow seccomp() above
    for name in sorted(allowed_syscalls(unit)):
        rule(ctx, SCMP_ACT_ALLOW, name)
    load(ctx)


def prefix(unit: Path) -> tuple[str, ...]:
    """What to put before a command line to run it under ``unit``'s filters."""
    return (sys.executable, str(Path(__file__).resolve()), str(unit), "--")


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        raise SystemExit("usage: unit_sandbox.py UNIT -- COMMAND...")
    install_filters(Path(args[0]))
    os.execvp(args[2], args[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
