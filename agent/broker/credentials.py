"""``edgeproof broker credentials DEV``: one device's broker login, checked against the ACL.

Order: the device id is validated, the ACL is parsed and must grant the device exactly its role's
topics (before anything is written: a device the broker would confine wrongly gets no login), with
a CA folder a client certificate is issued, then the password is hashed into the password file
(replacing the device's entry) and the plaintext goes to a 0600 file for the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solders.pubkey import Pubkey

from agent.broker.acl import parse_acl, require_coverage
from agent.broker.ca import ClientCert, issue_client_cert
from agent.broker.passwd import Upsert, check_password, generate_password, upsert, write_secret
from agent.config import REPO_ROOT
from agent.errors import BrokerCredentialsError

SHIPPED_ACL = REPO_ROOT / "deploy" / "mosquitto" / "acl"
INSTALLED_ACL = Path("/etc/mosquitto/edgeproof/acl")
DEFAULT_PASSWD = Path("/etc/mosquitto/edgeproof/passwd")


def default_acl() -> Path:
    """The broker's installed acl_file when there is one (what the broker enforces), else the shipped one."""
    return INSTALLED_ACL if INSTALLED_ACL.is_file() else SHIPPED_ACL


def check_device_id(dev: str) -> str:
    """A broker user name for a device: its base58 ed25519 public key, nothing else."""
    try:
        ok = 32 <= len(dev) <= 44 and str(Pubkey.from_string(dev)) == dev
    except ValueError:
        ok = False
    if not ok:
        shown = dev if len(dev) <= 64 else dev[:64] + "..."
        raise BrokerCredentialsError(
            f"{shown!r} is not a device id (a base58 ed25519 public key)",
            reason="bad_device_id",
            hint="use the id `edgeproof keys show` prints on the device",
        )
    return dev


@dataclass(frozen=True)
class Issued:
    dev: str
    passwd: Upsert
    secret_file: Path
    acl: Path
    acl_rules: int
    cert: ClientCert | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device": self.dev,
            "password_file": str(self.passwd.path),
            "entry": "replaced" if self.passwd.replaced else "added",
            "users_in_file": self.passwd.entries,
            "device_secret_file": str(self.secret_file),
            "acl": str(self.acl),
            "acl_topics_checked": self.acl_rules,
        }
        if self.cert is not None:
            out["certificate"] = {
                "ca_file": str(self.cert.ca_file),
                "cert_file": str(self.cert.cert_file),
                "key_file": str(self.cert.key_file),
                "ca_created": self.cert.ca_created,
                "not_after": self.cert.not_after,
            }
        return out


def issue_credentials(
    dev: str,
    *,
    password_file: Path = DEFAULT_PASSWD,
    secret_file: Path | None = None,
    acl: Path | None = None,
    prefix: str = "edgeproof/v1",
    password: str | None = None,
    ca: Path | None = None,
    days: int = 825,
) -> Issued:
    check_device_id(dev)
    acl = default_acl() if acl is None else acl
    coverage = require_coverage(parse_acl(acl), dev, prefix)
    secret = generate_password() if password is None else check_password(password)
    secret_path = secret_file or password_file.parent / f"{dev}.password"
    if secret_path.resolve() == password_file.resolve():
        raise BrokerCredentialsError(
            f"the device secret file and the password file are the same file: {password_file}",
            reason="bad_password",
        )
    try:
        # The certificate first: a CA folder that is refused leaves the password file untouched.
        cert = issue_client_cert(ca, dev, days) if ca is not None else None
        entry = upsert(password_file, dev, secret)
        write_secret(secret_path, secret)
    except OSError as exc:
        raise BrokerCredentialsError(
            f"cannot write {exc.filename or password_file}: {exc.strerror or exc}",
            reason="not_writable",
            hint="run it as the user that owns the broker's files (sudo), or pass other paths",
        ) from None
    return Issued(dev, entry, secret_path, acl, len(coverage.needed), cert)
