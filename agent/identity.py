"""Device identity: an ed25519 key in Solana CLI keypair JSON (a 64-byte array).

The device id is the base58 public key.  Key files are written with mode 0600,
never overwritten, and refused when others can read them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
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
    """Write a new key file with mode 0600; never replace an existing file.

    The key is written and fsynced under a temporary name in the same folder,
    then hard-linked to its final name (``link`` fails if the name exists, so
    a concurrent writer cannot be overwritten either): the key file appears
    complete or not at all, even on a full disk or a crash.
    """
    key_path = Path(path)
    if key_path.exists() or key_path.is_symlink():
        raise _exists(key_path)
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create folder {key_path.parent} for key file: {exc}") from exc
    data = json.dumps(list(bytes(keypair))).encode()
    tmp = key_path.with_name(f".{key_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        _write_new(tmp, data)
        try:
            os.link(tmp, key_path)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            _write_new(key_path, data)  # e.g. vfat: no hard links; O_EXCL still never overwrites
    except FileExistsError as exc:
        raise _exists(key_path) from exc
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {key_path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(key_path.parent)


_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (never an existing one) with mode 0600, write all of ``data``, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        path.unlink()  # never leave a half-written key behind
        raise
    os.close(fd)


def _exists(key_path: Path) -> KeyFileError:
    return KeyFileError(
        f"key file {key_path} already exists; refusing to overwrite a device key",
        hint="use a different --key path, or move the old key away yourself if you really mean it",
    )


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def init_keypair(path: Path | str, *, seed: bytes | None = None) -> Keypair:
    """Create and store a new device key (``seed`` only for tests and demos)."""
    keypair = Keypair.from_seed(seed) if seed is not None else Keypair()
    write_keypair(path, keypair)
    return keypair
