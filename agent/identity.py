"""Device identity: an ed25519 key in Solana CLI keypair JSON (a 64-byte array).

The device id is the base58 public key.  Key files are written with mode 0600,
never overwritten, and refused when others can read them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from solders.keypair import Keypair

from agent.errors import KeyFileError


def device_id(keypair: Keypair) -> str:
    return str(keypair.pubkey())


def check_permissions(path: Path) -> None:
    """Refuse a key file that group or others can read or write."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"key file {path} has mode {mode:04o}: group or others can access it",
            hint=f"chmod 600 {path}",
        )


def load_keypair(path: Path | str, *, check_mode: bool = True) -> Keypair:
    """Read a Solana CLI keypair JSON file (64 integers 0..255)."""
    key_path = Path(path)
    try:
        if check_mode:
            check_permissions(key_path)
        text = key_path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"key file {key_path} does not exist",
            hint=f"create one with: edgeproof keys init --key {key_path}",
        ) from exc
    except OSError as exc:
        raise KeyFileError(f"key file {key_path} cannot be read: {exc}") from exc
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"key file {key_path} is not JSON: {exc}") from exc
    if (
        not isinstance(values, list)
        or len(values) != 64
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values)
    ):
        raise KeyFileError(
            f"key file {key_path} is not a Solana CLI keypair: expected a JSON array of 64 integers 0..255"
        )
    try:
        keypair = Keypair.from_bytes(bytes(values))
    except ValueError as exc:
        raise KeyFileError(f"key file {key_path} holds an invalid ed25519 keypair: {exc}") from exc
    return keypair


def write_keypair(path: Path | str, keypair: Keypair) -> None:
    """Write a new key file with mode 0600; never replace an existing file."""
    key_path = Path(path)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(list(bytes(keypair))).encode()
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(
            f"key file {key_path} already exists; refusing to overwrite a device key",
            hint="use a different --key path, or move the old key away yourself if you really mean it",
        ) from exc
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {key_path}: {exc}") from exc
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def init_keypair(path: Path | str, *, seed: bytes | None = None) -> Keypair:
    """Create and store a new device key (``seed`` only for tests and demos)."""
    keypair = Keypair.from_seed(seed) if seed is not None else Keypair()
    write_keypair(path, keypair)
    return keypair
