"""Mosquitto password files: one ``user:hash`` line per broker user.

The hash is the form Mosquitto 2 writes (``mosquitto_passwd``, ``password_file``)::

    $7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt, iterations)>

with a 12-byte random salt, 101 iterations (Mosquitto's default) and the full 64-byte SHA-512
output, both in standard base64 with padding.  Blank lines and ``#`` comments are kept as they
are; an entry for a user replaces that user's line in place (and drops any second line of the
same user), so the file never holds two entries for one user.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.atomic_file import write_atomic
from agent.errors import BrokerCredentialsError

ITERATIONS = 101
SALT_BYTES = 12
#: What a generated device password looks like: 32 url-safe base64 characters (24 random bytes).
GENERATED_BYTES = 24
MAX_PASSWORD_BYTES = 256
MAX_FILE_BYTES = 16 * 1024 * 1024


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The ``$7$`` hash of ``password`` (a fresh random salt unless one is given)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(hashed: str, password: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash; False for any other or a broken hash."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        want = base64.b64decode(parts[4], validate=True)
    except (binascii.Error, ValueError):
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return hmac.compare_digest(got, want)


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_BYTES)


def check_password(password: str) -> str:
    """A password given by the user: non-empty, bounded, printable (it goes into an MQTT CONNECT)."""
    if not password:
        raise BrokerCredentialsError("the password is empty", reason="bad_password")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise BrokerCredentialsError(
            f"the password is {len(password.encode())} bytes, more than {MAX_PASSWORD_BYTES}",
            reason="bad_password",
        )
    if any(not ch.isprintable() for ch in password):
        raise BrokerCredentialsError(
            "the password contains a control character (a newline inside it?)", reason="bad_password"
        )
    return password


@dataclass(frozen=True)
class Upsert:
    path: Path
    user: str
    replaced: bool  # an entry for the user existed (and was replaced)
    entries: int  # user entries in the file afterwards
    created: bool  # the file did not exist


def read_lines(path: Path) -> list[str]:
    """The file's lines; a line that is neither blank, a comment nor ``user:hash`` is refused."""
    if not path.exists():
        return []
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BrokerCredentialsError(
            f"{path} is {size} bytes, more than {MAX_FILE_BYTES}: not a password file?",
            reason="passwd_malformed",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BrokerCredentialsError(f"{path} is not UTF-8 text: {exc}", reason="passwd_malformed") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            raise BrokerCredentialsError(
                f"{path}:{number}: not a 'user:hash' line",
                reason="passwd_malformed",
                hint="fix or remove that line (mosquitto_passwd -D FILE USER removes a user)",
            )
    return lines


def entry_of(lines: list[str], user: str) -> str | None:
    for line in lines:
        name, sep, hashed = line.partition(":")
        if sep and name == user and not line.lstrip().startswith("#"):
            return hashed
    return None


def upsert(path: Path, user: str, password: str) -> Upsert:
    """Write ``user``'s entry (replacing any), atomically; mode and owner of an existing file kept."""
    lines = read_lines(path)
    entry = f"{user}:{hash_password(password)}"
    out: list[str] = []
    replaced = False
    for line in lines:
        name, sep, _ = line.partition(":")
        if sep and name == user and not line.lstrip().startswith("#"):
            if not replaced:
                out.append(entry)
            replaced = True
            continue
        out.append(line)
    if not replaced:
        out.append(entry)
    created = not path.exists()
    _write_atomic(path, "\n".join(out) + "\n")
    entries = sum(1 for line in out if ":" in line and not line.lstrip().startswith("#"))
    return Upsert(path=path, user=user, replaced=replaced, entries=entries, created=created)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.stat() if path.exists() else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if old is not None:
            os.chmod(tmp, old.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, old.st_uid, old.st_gid)
        else:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_secret(path: Path, secret: str) -> None:
    """The device's plaintext password, mode 0600 (``[mqtt] password_file`` on the device)."""
    write_atomic(path, (secret + "\n").encode("utf-8"), mode=0o600)
