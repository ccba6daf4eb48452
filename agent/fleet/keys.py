"""Operator keys: ed25519 in Solana CLI keypair JSON (mode 0600), never overwritten."""

from __future__ import annotations

from pathlib import Path

from solders.keypair import Keypair

from agent.errors import FleetError, KeyFileError
from agent.identity import load_keypair, write_keypair


def init_operator_key(path: Path | str, *, seed: bytes | None = None) -> Keypair:
    """Create a new operator key file; an existing file (or symlink) is refused as ``key_exists``."""
    key_path = Path(path)
    keypair = Keypair.from_seed(seed) if seed is not None else Keypair()
    if key_path.exists() or key_path.is_symlink():
        raise _exists(key_path)
    try:
        write_keypair(key_path, keypair)
    except KeyFileError as exc:
        if key_path.exists():  # created by someone else between the check and the link
            raise _exists(key_path) from exc
        raise
    return keypair


def load_operator_key(path: Path | str) -> Keypair:
    """Read an operator key (mode 0600 enforced, as for a device key)."""
    key_path = Path(path)
    if not key_path.exists():
        raise KeyFileError(
            f"operator key file {key_path} does not exist",
            hint=f"create one with: edgeproof fleet keys init --key {key_path} (or restore your backup)",
        )
    return load_keypair(key_path)


def _exists(key_path: Path) -> FleetError:
    return FleetError(
        f"operator key file {key_path} already exists; refusing to overwrite it",
        reason="key_exists",
        hint="use another --key path; `edgeproof fleet keys show --key FILE` prints the existing key",
    )
