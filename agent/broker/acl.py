"""Mosquitto ``acl_file`` parsing, and what it grants one device.

The format (mosquitto.conf(5), ``acl_file``): ``user NAME`` starts a user's block; ``topic
[read|write|readwrite|deny] TOPIC`` lines apply to the user of the block they are in (before any
``user`` line: to anonymous clients only); ``pattern [ACCESS] TOPIC`` lines apply to every client
wherever they stand, with ``%u`` replaced by the user name and ``%c`` by the client id (the same
here: the shipped conf sets ``use_username_as_clientid``).  A missing access means readwrite;
``deny`` wins over any grant.

:func:`device_coverage` answers the two questions ``edgeproof broker credentials`` asks: does the
ACL grant the device everything its protocol role needs (write its outbound channels, read its
inbound ones, the beacon and the fleet manifests), and does it grant nothing more (its own
inbound channels are not writable, another device's topics are neither readable nor writable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.errors import BrokerCredentialsError
from agent.protocol.kinds import COORDINATOR_PUBLISHES, DEVICE_PUBLISHES

Access = Literal["read", "write", "readwrite", "deny"]
_ACCESS: tuple[Access, ...] = ("read", "write", "readwrite", "deny")
MAX_ACL_BYTES = 4 * 1024 * 1024
#: A valid device id that no real device has (the system program's address), for "another device".
OTHER_DEVICE = "11111111111111111111111111111111"


@dataclass(frozen=True)
class Rule:
    access: Access
    topic: str
    line: int


@dataclass
class Acl:
    path: Path
    patterns: list[Rule] = field(default_factory=list)
    users: dict[str, list[Rule]] = field(default_factory=dict)
    anonymous: list[Rule] = field(default_factory=list)

    def rules_for(self, user: str) -> list[Rule]:
        """The rules that apply to ``user``: every pattern (``%u``/``%c`` filled) and its own topics."""
        filled = [
            Rule(r.access, r.topic.replace("%u", user).replace("%c", user), r.line) for r in self.patterns
        ]
        return filled + self.users.get(user, [])

    def allows(self, user: str, access: Literal["read", "write"], topic: str) -> bool:
        rules = self.rules_for(user)
        if any(r.access == "deny" and _covers(r.topic, topic) for r in rules):
            return False
        return any(r.access in (access, "readwrite") and _covers(r.topic, topic) for r in rules)


def _covers(rule: str, wanted: str) -> bool:
    """True if every topic ``wanted`` (a topic or filter) can name is matched by the ACL filter ``rule``."""
    r_parts, w_parts = rule.split("/"), wanted.split("/")
    for i, part in enumerate(r_parts):
        if part == "#":
            return i == len(r_parts) - 1
        if i >= len(w_parts):
            return False
        if part == "+":
            if w_parts[i] == "#":
                return False
            continue
        if part != w_parts[i]:
            return False
    return len(r_parts) == len(w_parts)


def parse_acl(path: Path) -> Acl:
    """Read an acl_file; a line Mosquitto would not understand is refused with its number."""
    try:
        size = path.stat().st_size
        if size > MAX_ACL_BYTES:
            raise BrokerCredentialsError(
                f"{path} is {size} bytes, more than {MAX_ACL_BYTES}", reason="acl_malformed"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerCredentialsError(
            f"the ACL {path} cannot be read: {exc}",
            reason="acl_malformed",
            hint="pass --acl with the broker's acl_file (deploy/mosquitto/acl)",
        ) from None
    acl = Acl(path)
    user: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "user":
            if not rest:
                raise BrokerCredentialsError(
                    f"{path}:{number}: 'user' without a name", reason="acl_malformed"
                )
            user = rest
            acl.users.setdefault(user, [])
            continue
        if word not in ("topic", "pattern"):
            raise BrokerCredentialsError(
                f"{path}:{number}: unknown ACL line {word!r} (expected user, topic or pattern)",
                reason="acl_malformed",
            )
        access_word, _, topic = rest.partition(" ")
        if access_word in _ACCESS and topic.strip():
            rule = Rule(access_word, topic.strip(), number)
        elif rest and access_word not in _ACCESS:
            rule = Rule("readwrite", rest, number)
        else:
            raise BrokerCredentialsError(f"{path}:{number}: '{word}' without a topic", reason="acl_malformed")
        if word == "pattern":
            acl.patterns.append(rule)
        elif user is None:
            acl.anonymous.append(rule)
        else:
            acl.users[user].append(rule)
    return acl


@dataclass(frozen=True)
class Coverage:
    """What the ACL grants a device: ``missing`` and ``excess`` are empty when it is exactly right."""

    needed: list[tuple[str, str]]  # (access, topic) the device's role needs
    missing: list[tuple[str, str]]
    excess: list[tuple[str, str]]  # (access, topic) it must not have but has

    @property
    def ok(self) -> bool:
        return not self.missing and not self.excess


def device_needs(dev: str, prefix: str) -> list[tuple[str, str]]:
    need = [("write", f"{prefix}/dev/{dev}/{c}") for c in sorted(DEVICE_PUBLISHES)]
    need += [("read", f"{prefix}/dev/{dev}/{c}") for c in sorted(COORDINATOR_PUBLISHES)]
    need += [("read", f"{prefix}/beacon"), ("read", f"{prefix}/fleet/manifest/#")]
    return need


def device_forbidden(dev: str, prefix: str) -> list[tuple[str, str]]:
    """Its own inbound channels for writing; every channel of another device either way."""
    forbid = [("write", f"{prefix}/dev/{dev}/{c}") for c in sorted(COORDINATOR_PUBLISHES)]
    channels = sorted({*DEVICE_PUBLISHES, *COORDINATOR_PUBLISHES})
    forbid += [(a, f"{prefix}/dev/{OTHER_DEVICE}/{c}") for c in channels for a in ("read", "write")]
    forbid += [("write", f"{prefix}/beacon"), ("write", f"{prefix}/fleet/manifest/stable")]
    return forbid


def device_coverage(acl: Acl, dev: str, prefix: str) -> Coverage:
    needed = device_needs(dev, prefix)
    missing = [(a, t) for a, t in needed if not acl.allows(dev, a, t)]  # type: ignore[arg-type]
    excess = [(a, t) for a, t in device_forbidden(dev, prefix) if acl.allows(dev, a, t)]  # type: ignore[arg-type]
    return Coverage(needed=needed, missing=missing, excess=excess)


def require_coverage(acl: Acl, dev: str, prefix: str) -> Coverage:
    """The coverage, or BrokerCredentialsError naming the first gap (acl_not_covered / acl_too_broad)."""
    coverage = device_coverage(acl, dev, prefix)
    if coverage.missing:
        access, topic = coverage.missing[0]
        more = f" and {len(coverage.missing) - 1} more" if len(coverage.missing) > 1 else ""
        raise BrokerCredentialsError(
            f"the ACL {acl.path} does not let {dev} {access} {topic}{more}",
            reason="acl_not_covered",
            hint="use the shipped deploy/mosquitto/acl (pattern lines with %u cover every device)",
        )
    if coverage.excess:
        access, topic = coverage.excess[0]
        more = f" and {len(coverage.excess) - 1} more" if len(coverage.excess) > 1 else ""
        raise BrokerCredentialsError(
            f"the ACL {acl.path} lets {dev} {access} {topic}{more}, which only the coordinator may",
            reason="acl_too_broad",
            hint="never grant a device edgeproof/v1/dev/%u/# or another device's topics (deploy/mosquitto/acl)",
        )
    return coverage
