"""MQTT topics: builders, a parser, QoS/retain per topic, and subscription filters.

Layout under a configurable prefix (default ``edgeproof/v1``)::

    {prefix}/beacon                       coordinator -> all      QoS 1, retained
    {prefix}/dev/{dev}/hb                 device -> coordinator   QoS 1
    {prefix}/dev/{dev}/proof              device -> coordinator   QoS 1
    {prefix}/dev/{dev}/challenge          coordinator -> device   QoS 1
    {prefix}/dev/{dev}/response           device -> coordinator   QoS 1
    {prefix}/dev/{dev}/verdict            coordinator -> device   QoS 1
    {prefix}/dev/{dev}/claim              device -> coordinator   QoS 1
    {prefix}/dev/{dev}/voucher            coordinator -> device   QoS 1
    {prefix}/dev/{dev}/receipt            device -> coordinator   QoS 1
    {prefix}/dev/{dev}/status             device (last will)      QoS 1, retained
    {prefix}/dev/{dev}/deploy             device -> operator      QoS 1
    {prefix}/fleet/manifest/{channel}     operator -> devices     QoS 1, retained

``{dev}`` is the device's base58 public key.  On device topics the envelope's
``dev`` is the device for device-signed kinds; for coordinator-signed kinds it
is the coordinator and the body's ``device`` names the device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import ProtocolError
from agent.protocol.kinds import (
    CHANNEL_KIND,
    COORDINATOR_PUBLISHES,
    DEVICE_PUBLISHES,
    KIND_CHANNEL,
    RETAINED_CHANNELS,
    SPECS,
)

DEFAULT_PREFIX = "edgeproof/v1"

# The channel <-> kind mapping, who publishes which channel and what is retained all come
# from the one kind table (agent/protocol/kinds.py).
__all__ = [
    "CHANNEL_KIND",
    "COORDINATOR_PUBLISHES",
    "DEFAULT_PREFIX",
    "DEVICE_PUBLISHES",
    "KIND_CHANNEL",
    "RETAINED_CHANNELS",
    "TopicInfo",
    "Topics",
    "topic_matches",
]
QOS = 1

_B58 = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")
_CHANNEL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class TopicInfo:
    """A parsed topic: ``scope`` is ``beacon``, ``device``, ``manifest`` or ``rewards``."""

    scope: str
    dev: str | None = None
    channel: str | None = None

    @property
    def kind(self) -> str | None:
        """The envelope kind carried on this topic."""
        if self.scope == "beacon":
            return "beacon"
        if self.scope == "manifest":
            return "manifest"
        if self.scope == "rewards":
            return "reward_root"
        if self.scope == "device" and self.channel is not None:
            return CHANNEL_KIND[self.channel]
        return None

    @property
    def qos(self) -> int:
        return QOS

    @property
    def retain(self) -> bool:
        kind = self.kind
        return kind is not None and SPECS[kind].retained


def _check_prefix(prefix: str) -> str:
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "+#\0"):
        raise ProtocolError(
            f"topic prefix {prefix!r} must be non-empty, without leading/trailing '/' or wildcards",
            reason="malformed",
        )
    return prefix


def _check_dev(dev: str) -> str:
    if not _B58.match(dev):
        raise ProtocolError(f"device id {dev!r} is not a base58 public key", reason="malformed")
    return dev


class Topics:
    """Topic names under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = _check_prefix(prefix)
        self._parts = len(self.prefix.split("/"))

    # builders
    def beacon(self) -> str:
        return f"{self.prefix}/beacon"

    def device(self, dev: str, channel: str) -> str:
        if channel not in CHANNEL_KIND:
            raise ProtocolError(f"unknown device topic channel {channel!r}", reason="malformed")
        return f"{self.prefix}/dev/{_check_dev(dev)}/{channel}"

    def for_kind(self, kind: str, dev: str) -> str:
        """The topic an envelope of ``kind`` about device ``dev`` is published on."""
        if kind == "beacon":
            return self.beacon()
        if kind == "reward_root":
            return self.reward_root()
        if kind not in KIND_CHANNEL:
            raise ProtocolError(f"unknown kind {kind!r}", reason="unknown_kind")
        return self.device(dev, KIND_CHANNEL[kind])

    def reward_root(self) -> str:
        """The retained slot of the newest epoch settlement root: ``{prefix}/rewards/root``."""
        return f"{self.prefix}/rewards/root"

    def manifest(self, channel: str) -> str:
        if not _CHANNEL.match(channel):
            raise ProtocolError(
                f"manifest channel {channel!r} must be a lower-case identifier", reason="malformed"
            )
        return f"{self.prefix}/fleet/manifest/{channel}"

    def hb(self, dev: str) -> str:
        return self.device(dev, "hb")

    def proof(self, dev: str) -> str:
        return self.device(dev, "proof")

    def status(self, dev: str) -> str:
        return self.device(dev, "status")

    # filters
    def device_filter(self, dev: str) -> str:
        """Every topic of one device: ``{prefix}/dev/{dev}/#``."""
        return f"{self.prefix}/dev/{_check_dev(dev)}/#"

    def channel_filter(self, channel: str) -> str:
        """One channel of every device: ``{prefix}/dev/+/{channel}``."""
        if channel not in CHANNEL_KIND:
            raise ProtocolError(f"unknown device topic channel {channel!r}", reason="malformed")
        return f"{self.prefix}/dev/+/{channel}"

    def all_filter(self) -> str:
        return f"{self.prefix}/#"

    def device_subscriptions(
        self, dev: str, manifest_channels: tuple[str, ...] = ()
    ) -> list[tuple[str, int]]:
        """What a device subscribes to: beacon, its inbound channels, its manifest channels."""
        subs = [(self.beacon(), QOS)]
        subs += [(self.device(dev, c), QOS) for c in COORDINATOR_PUBLISHES]
        subs += [(self.manifest(c), QOS) for c in manifest_channels]
        return subs

    def coordinator_subscriptions(self, shared_group: str | None = None) -> list[tuple[str, int]]:
        """What a coordinator subscribes to; with ``shared_group``, MQTT v5 shared subscriptions."""
        filters = [self.channel_filter(c) for c in DEVICE_PUBLISHES]
        if shared_group:
            if not _CHANNEL.match(shared_group):
                raise ProtocolError(
                    f"shared group {shared_group!r} must be an identifier", reason="malformed"
                )
            filters = [f"$share/{shared_group}/{f}" for f in filters]
        return [(f, QOS) for f in filters]

    # parser
    def parse(self, topic: str) -> TopicInfo:
        """Parse a topic under this prefix; ProtocolError(reason="malformed") otherwise."""
        if not topic.startswith(self.prefix + "/"):
            raise ProtocolError(f"topic {topic!r} is not under {self.prefix!r}", reason="malformed")
        rest = topic[len(self.prefix) + 1 :].split("/")
        if rest == ["beacon"]:
            return TopicInfo("beacon")
        if rest == ["rewards", "root"]:
            return TopicInfo("rewards")
        if len(rest) == 3 and rest[0] == "dev" and _B58.match(rest[1]) and rest[2] in CHANNEL_KIND:
            return TopicInfo("device", dev=rest[1], channel=rest[2])
        if len(rest) == 3 and rest[:2] == ["fleet", "manifest"] and _CHANNEL.match(rest[2]):
            return TopicInfo("manifest", channel=rest[2])
        raise ProtocolError(f"unknown topic {topic!r}", reason="malformed")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest; ``$share/group/`` stripped)."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    if topic.startswith("$") and f_parts[0] in ("+", "#"):
        return False
    for i, part in enumerate(f_parts):
        if part == "#":
            return i == len(f_parts) - 1
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)
