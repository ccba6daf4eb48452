"""Validated settings for the MQTT client (``[mqtt]``) and the outbox (``[outbox]``).

Paths are strings (TOML has no path type); relative paths are resolved by the
caller (the config module) against the config file's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.errors import ConfigError
from agent.validation import Strict

OverflowPolicy = Literal["drop_oldest_heartbeats", "drop_oldest", "refuse_new"]


class TlsSettings(Strict):
    """TLS towards the broker.  The broker certificate is always verified against ``ca_file``.

    ``insecure = true`` only skips the *hostname* check (the chain is still verified); use it
    for a broker reached by an address its certificate does not name, never in production.
    """

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together (client certificate)")
        return self


class MqttSettings(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    # MQTT client id; None means "use the device id" (the daemon fills it in).
    client_id: str | None = None
    # Broker user name; with the production ACL it must equal the device id.
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    password_file: str | None = None
    tls: TlsSettings | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=65535)] = 30
    topic_prefix: str = "edgeproof/v1"
    # Persistent session: the broker keeps our subscriptions and queued QoS 1 messages this long.
    session_expiry_s: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = 86_400
    reconnect_min_s: Annotated[float, Field(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0)] = 60.0
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = 20
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0

    @model_validator(mode="after")
    def _check(self) -> MqttSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either mqtt.password or mqtt.password_file, not both")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) must not exceed reconnect_max_s ({self.reconnect_max_s})"
            )
        prefix = self.topic_prefix
        if not prefix or prefix.startswith("/") or prefix.endswith("/") or "+" in prefix or "#" in prefix:
            raise ValueError(
                f"topic_prefix {prefix!r} must be non-empty, without wildcards and without a leading or "
                "trailing '/'"
            )
        return self

    def resolve_password(self) -> str | None:
        """The password, read from ``password_file`` if that is how it is configured."""
        if self.password_file is None:
            return self.password
        path = Path(self.password_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"mqtt.password_file {path} cannot be read: {exc}",
                hint="create the file (one line, the broker password) readable by the agent's user",
            ) from exc
        password = text.rstrip("\r\n")
        if not password:
            raise ConfigError(f"mqtt.password_file {path} is empty", hint="write the broker password into it")
        return password


class OutboxSettings(Strict):
    path: str = "outbox.sqlite3"
    # Bound on the bytes of queued messages (payload + topic); the overflow policy applies beyond it.
    max_bytes: Annotated[int, Field(ge=4096)] = 64 * 1024 * 1024
    overflow: OverflowPolicy = "drop_oldest_heartbeats"
    # FULL: every commit (and so every queued envelope) is fsynced, surviving power loss.
    # NORMAL: survives a crash of the agent (kill -9) but may lose the last commits on power loss.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # Messages the broker refused (e.g. ACL) are parked; only the newest this many are kept.
    max_parked: Annotated[int, Field(ge=0)] = 1000
