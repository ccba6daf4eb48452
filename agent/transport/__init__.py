"""MQTT transport: settings, the durable outbox and the paho-mqtt client."""

from __future__ import annotations

from agent.transport.backoff import Backoff, backoff_delay
from agent.transport.outbox import (
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_NORMAL,
    Outbox,
    OutboxRow,
    OutboxStats,
    ParkedRow,
    kind_priority,
)
from agent.transport.settings import MqttSettings, OutboxSettings, OverflowPolicy, TlsSettings

__all__ = [
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_NORMAL",
    "Backoff",
    "MqttSettings",
    "Outbox",
    "OutboxRow",
    "OutboxSettings",
    "OutboxStats",
    "OverflowPolicy",
    "ParkedRow",
    "TlsSettings",
    "backoff_delay",
    "kind_priority",
]
