"""The simulation script: fleet size, compressed time, and what each group of devices does.

A script is TOML or JSON (by the file's suffix) and is validated strictly, like every
config of the project (:mod:`agent.validation`): unknown keys are refused with the file,
the line and the nearest valid key.  Slot indexes count from the first slot of the run
(0 = the first slot of the first simulated epoch) and ranges are inclusive::

    seed = 7
    devices = 50
    slot_ms = 2000                # must equal the coordinator's [beacons] slot_ms
    epoch_slots = 8               # epoch_ms / slot_ms of the coordinator's [epochs]
    epochs = 1
    challenge_deadline_ms = 3000  # the coordinator's [challenges] deadline_ms

    [[groups]]
    name = "outage"
    devices = [0, 4]              # device indexes 0..4
    outages = [[2, 3]]            # no heartbeat, no proof, challenges unanswered
    challenges = "honest"         # honest | wrong_model | ignore

Devices in no group are honest and never down.  :func:`default_script` is the built-in
script, scaled to any fleet size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from agent.errors import ConfigError
from agent.validation import Strict, parse_mapping, read_toml

MAX_DEVICES = 100_000
#: How a device answers a challenge.
Behaviour = Literal["honest", "wrong_model", "ignore"]
BEHAVIOURS: tuple[Behaviour, ...] = ("honest", "wrong_model", "ignore")

Index = Annotated[int, Field(ge=0, le=10_000_000)]
Range = Annotated[list[Index], Field(min_length=2, max_length=2)]
Ident = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


def _ordered(what: str, pair: list[int] | list[float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{what} [{pair[0]}, {pair[1]}] must not go down")


class Group(Strict):
    """Devices ``devices[0]..devices[1]`` and what they do."""

    name: Ident
    devices: Range
    #: Slot ranges in which the devices are down: no heartbeat, no proof, no answer.
    outages: list[Range] = Field(default_factory=list)
    #: How the devices answer challenges issued while they are up.
    challenges: Behaviour = "honest"
    #: Slot ranges in which the devices' proof claims one inference over the profile's bound.
    overclaim: list[Range] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ranges(self) -> Group:
        _ordered("devices", self.devices)
        for pair in (*self.outages, *self.overclaim):
            _ordered("slot range", pair)
        return self


class Script(Strict):
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 1
    devices: Annotated[int, Field(ge=1, le=MAX_DEVICES)] = 1000
    #: MQTT connections the devices are spread over (a real fleet has one per device).
    connections: Annotated[int, Field(ge=1, le=1000)] = 20
    slot_ms: Annotated[int, Field(ge=1000, le=3_600_000)] = 5000
    epoch_slots: Annotated[int, Field(ge=1, le=100_000)] = 12
    epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    #: The coordinator's challenge deadline: a challenge was issued at ``deadline_ms - this``.
    challenge_deadline_ms: Annotated[int, Field(ge=1000, le=3_600_000)] = 30_000
    #: Firmware profile the devices are enrolled with (its throughput bound applies).
    profile: Ident = "rpi4"
    #: Distinct owner wallets, assigned round-robin.
    owners: Annotated[int, Field(ge=1, le=MAX_DEVICES)] = 10
    #: Where in its slot a device sends its heartbeat, then its proof (fractions of the slot,
    #: spread evenly over the fleet).  Well inside the slot, so the coordinator stamps it there.
    heartbeat_at: Annotated[list[Fraction], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [0.10, 0.45]
    )
    proof_at: Annotated[list[Fraction], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [0.50, 0.80]
    )
    #: A device sends a proof every this many slots (staggered over the fleet); heartbeats every slot.
    proof_every: Annotated[int, Field(ge=1, le=1000)] = 1
    #: Inferences per proof, drawn per device and slot from this range (under the bound).
    inferences: Annotated[
        list[Annotated[int, Field(ge=0, le=2**32 - 1)]], Field(min_length=2, max_length=2)
    ] = Field(default_factory=lambda: [10, 40])
    groups: list[Group] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Script:
        _ordered("heartbeat_at", self.heartbeat_at)
        _ordered("proof_at", self.proof_at)
        _ordered("inferences", self.inferences)
        if self.heartbeat_at[1] >= self.proof_at[0]:
            raise ValueError(
                f"heartbeat_at {self.heartbeat_at} must end before proof_at {self.proof_at} begins"
            )
        names: set[str] = set()
        owner: dict[int, str] = {}
        for group in self.groups:
            if group.name in names:
                raise ValueError(f"group name {group.name!r} is used twice")
            names.add(group.name)
            first, last = group.devices
            if last >= self.devices:
                raise ValueError(
                    f"group {group.name!r} names device {last} but the fleet has {self.devices} "
                    f"(indexes 0..{self.devices - 1})"
                )
            for index in range(first, last + 1):
                if index in owner:
                    raise ValueError(f"device {index} is in group {owner[index]!r} and {group.name!r}")
                owner[index] = group.name
            for pair in (*group.outages, *group.overclaim):
                if pair[1] >= self.total_slots:
                    raise ValueError(
                        f"group {group.name!r} names slot {pair[1]} but the run has {self.total_slots} "
                        f"slots (0..{self.total_slots - 1})"
                    )
        return self

    @property
    def total_slots(self) -> int:
        return self.epochs * self.epoch_slots

    @property
    def links(self) -> int:
        """Connections actually used (never more than devices)."""
        return min(self.connections, self.devices)

    @property
    def epoch_ms(self) -> int:
        return self.epoch_slots * self.slot_ms

    def group_of(self, index: int) -> Group | None:
        for group in self.groups:
            if group.devices[0] <= index <= group.devices[1]:
                return group
        return None


def load_script(path: Path) -> Script:
    """Read a script file (``.toml`` or ``.json``); ConfigError names the file, line and key."""
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data, text = read_toml(path)
    elif suffix == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: file not found") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a script must be a JSON object, got {type(data).__name__}")
        text = ""  # line numbers are located in TOML sources only
    else:
        raise ConfigError(f"{path}: a script is a .toml or .json file (got {suffix or 'no suffix'!r})")
    return parse_mapping(Script, data, origin=str(path), source=text or None)


def script_from(data: dict[str, Any], origin: str = "script") -> Script:
    """Validate an in-memory mapping (the built-in default with overrides)."""
    return parse_mapping(Script, data, origin=origin)


def default_script(**overrides: Any) -> Script:
    """The built-in script, scaled to ``devices``: outages, overclaims and all three behaviours.

    Groups (each about a tenth or a twentieth of the fleet; empty ones are left out): a
    short outage, a long outage, one slot over the throughput bound, answers naming the
    wrong model, challenges ignored, and a flaky group down twice that also ignores
    challenges.  The rest is honest and always up.
    """
    base: dict[str, Any] = {"devices": 1000, "epochs": 1, "epoch_slots": 12, **overrides}
    devices = int(base["devices"])
    slots = int(base["epochs"]) * int(base["epoch_slots"])
    last = slots - 1
    plan: list[tuple[str, int, dict[str, Any]]] = [
        ("outage-short", 10, {"outages": [[min(2, last), min(3, last)]]}),
        ("outage-long", 10, {"outages": [[slots // 2, min(last, slots // 2 + max(1, slots // 4))]]}),
        ("overclaim", 20, {"overclaim": [[min(1, last), min(1, last)]]}),
        ("wrong-model", 20, {"challenges": "wrong_model"}),
        ("silent", 20, {"challenges": "ignore"}),
        ("flaky", 20, {"outages": [[min(1, last), min(1, last)], [last, last]], "challenges": "ignore"}),
    ]
    groups: list[dict[str, Any]] = []
    start = 0
    for name, divisor, what in plan:
        size = devices // divisor
        if size == 0:
            continue
        groups.append({"name": name, "devices": [start, start + size - 1], **what})
        start += size
    base.setdefault("groups", groups)
    return script_from(base, origin="the built-in script")
