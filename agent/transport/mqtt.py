"""A thin paho-mqtt 2.x client (MQTT v5) that drains the durable outbox.

Threads
-------
* paho's network thread (``loop_start``).  Its callbacks only record state and put events on
  queues: no disk I/O, no user code, no lock that the other threads hold while calling paho.
* the publisher thread: reads the outbox in ``id`` order, publishes at most ``max_inflight``
  rows at a time, deletes a row only when its PUBACK reports success, parks a row the broker
  refuses (reason code >= 0x80, e.g. "Not authorized" by an ACL) so it is never re-sent in a
  loop, and on every (re)connect starts over from the oldest unacknowledged row.
* the inbound thread: runs the subscription handlers ``(topic, payload) -> None``; a handler
  that raises is logged and counted, and never reaches the network thread.

Ordering across reconnects
--------------------------
paho keeps its own in-memory copy of unacknowledged messages and re-sends it on reconnect; we
drop that copy in ``on_connect`` (``Client.drop_out_messages``) and re-send from the outbox
instead, so the outbox is the single source of truth and the broker sees rows in order after
every reconnect (possibly again: QoS 1 is at-least-once; subscribers deduplicate by
``(dev, seq)``).

Reconnect
---------
paho's own reconnect loop is used, with the delay set before each attempt from
:class:`~agent.transport.backoff.Backoff` (capped exponential, jittered): paho's built-in
delay has no jitter.

Session
-------
``clean_start=False`` and a Session Expiry Interval: the broker keeps our subscriptions and the
QoS 1 messages addressed to us (challenges, verdicts, vouchers) while we are away.  We also
re-subscribe on every connect (retain handling 1: retained messages only for a subscription the
broker did not have), which covers a broker that lost its sessions.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.errors import ConfigError, TransportError
from agent.transport.backoff import Backoff
from agent.transport.outbox import Outbox, OutboxRow, TxnStep
from agent.transport.settings import MqttSettings

log = logging.getLogger(__name__)

InboundHandler = Callable[[str, bytes], None]

# Fixed header + topic length + packet id + properties length: a safe overestimate.
_PUBLISH_OVERHEAD = 16


@dataclass(frozen=True, slots=True)
class TransportStatus:
    connected: bool
    host: str
    port: int
    client_id: str
    published: int
    acked: int
    rejected: int
    reconnects: int
    inflight: int
    inbound: int
    inbound_errors: int
    inbound_dropped: int
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "host": self.host,
            "port": self.port,
            "client_id": self.client_id,
            "published": self.published,
            "acked": self.acked,
            "rejected": self.rejected,
            "reconnects": self.reconnects,
            "inflight": self.inflight,
            "inbound": self.inbound,
            "inbound_errors": self.inbound_errors,
            "inbound_dropped": self.inbound_dropped,
            "last_error": self.last_error,
        }


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls is None:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"mqtt.tls.ca_file {tls.ca_file} cannot be loaded: {exc}",
            hint="point tls.ca_file at the PEM certificate of the CA that signed the broker certificate",
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"mqtt.tls client certificate {tls.cert_file} / key {tls.key_file} cannot be loaded: {exc}",
                hint="check both files exist, are PEM, and that the key matches the certificate",
            ) from exc
    # The chain is always verified; "insecure" only skips the host name check.
    context.check_hostname = not tls.insecure
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def tls_failure(settings: MqttSettings, exc: ssl.SSLError) -> TransportError:
    """The error for a failed TLS handshake: retrying cannot fix it, the config must change."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransportError(
            f"TLS verification of the broker {where} failed: certificate verify failed: "
            f"{exc.verify_message or exc}",
            hint="set mqtt.tls.ca_file to the CA that signed the broker certificate and make mqtt.host "
            "a name or IP address listed in that certificate",
        )
    return TransportError(
        f"TLS handshake with the broker {where} failed: {exc}",
        hint="check that the broker port speaks TLS and that the client certificate (if any) is valid",
    )


class MqttTransport:
    """Publishes the outbox to the broker and dispatches inbound messages.  Thread-safe."""

    def __init__(
        self,
        settings: MqttSettings,
        outbox: Outbox,
        *,
        client_id: str,
        rng: random.Random | None = None,
        inbound_queue_size: int = 1000,
        poll_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.client_id = settings.client_id or client_id
        if not self.client_id:
            raise ConfigError("MQTT client id is empty", hint="set mqtt.client_id or give the device id")
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, rng)
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._inbound: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=inbound_queue_size)
        self._subscriptions: dict[str, tuple[int, InboundHandler]] = {}
        self._connected = threading.Event()
        self._refused = threading.Event()
        self._link_up = False
        self._link_gen = 0
        self._ready = False
        self._stopping = False
        self._started = False
        self._max_packet: int | None = None
        self._last_error: str | None = None
        self._connects = 0
        self._published = 0
        self._acked = 0
        self._rejected = 0
        self._inflight_count = 0
        self._inbound_count = 0
        self._inbound_errors = 0
        self._inbound_dropped = 0
        self._publisher: threading.Thread | None = None
        self._dispatcher: threading.Thread | None = None

        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        # We limit in-flight messages ourselves; paho must never hold messages back in its queue.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.connect_timeout = settings.connect_timeout_s
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.resolve_password())
        context = tls_context(settings)
        if context is not None:
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.suppress_exceptions = True
        self._client = client
        outbox.add_listener(self.wake)

    # ------------------------------------------------------------------ configuration

    def topic(self, *parts: str) -> str:
        """``topic_prefix/part/part``, e.g. ``topic("dev", dev_id, "proof")``."""
        return "/".join((self.settings.topic_prefix, *parts))

    def set_will(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = True) -> None:
        """The last will (e.g. a signed ``status: offline`` envelope); call before :meth:`start`."""
        if self._started:
            raise TransportError("the last will must be set before the transport starts")
        try:
            self._client.will_set(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:
            raise TransportError(f"invalid last will on topic {topic!r}: {exc}") from exc

    def subscribe(self, topic_filter: str, handler: InboundHandler, *, qos: int = 1) -> None:
        """Call ``handler(topic, payload)`` (on the inbound thread) for messages matching the filter."""
        with self._lock:
            self._subscriptions[topic_filter] = (qos, handler)
            up = self._link_up
        if up:
            self._client.subscribe(topic_filter, options=SubscribeOptions(qos=qos, retainHandling=1))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect and start the threads.

        Raises :class:`TransportError` for a TLS verification failure (wrong CA, wrong host name):
        retrying cannot fix those.  A broker that is down or unreachable is not an error: the
        transport keeps retrying in the background and the outbox keeps everything meanwhile.
        """
        if self._started:
            raise TransportError("transport already started")
        s = self.settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry_s
        try:
            self._client.connect(s.host, s.port, s.keepalive_s, clean_start=False, properties=props)
        except ssl.SSLError as exc:
            self._close_socket()
            raise tls_failure(s, exc) from exc
        except (OSError, ValueError) as exc:
            message = f"cannot connect to broker {s.host}:{s.port}: {exc}"
            with self._lock:
                self._last_error = message
            delay = self._backoff.next()
            log.warning(
                "broker not reachable, retrying in the background",
                extra={"host": s.host, "port": s.port, "error": str(exc), "retry_s": round(delay, 2)},
            )
            self._set_reconnect_delay(delay)
            self._client.connect_async(s.host, s.port, s.keepalive_s, clean_start=False, properties=props)
        self._started = True
        self._publisher = threading.Thread(target=self._publisher_main, name="mqtt-publisher", daemon=True)
        self._dispatcher = threading.Thread(target=self._dispatcher_main, name="mqtt-inbound", daemon=True)
        self._publisher.start()
        self._dispatcher.start()
        if self._client.loop_start() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError("paho network loop could not be started")

    def _close_socket(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def wait_connected(self, timeout: float) -> None:
        """Block until connected; TransportError if the broker refuses us or on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self._connected.is_set():
                return
            if self._refused.is_set():
                with self._lock:
                    error = self._last_error
                raise TransportError(
                    error or "the broker refused the connection",
                    hint="check mqtt.username and mqtt.password(_file); with the production ACL the user "
                    "name must be the device id",
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with self._lock:
                    error = self._last_error
                s = self.settings
                raise TransportError(
                    f"not connected to broker {s.host}:{s.port} after {timeout:g}s"
                    + (f" (last error: {error})" if error else ""),
                    hint="check that the broker runs and mqtt.host/mqtt.port point at it",
                )
            self._connected.wait(min(remaining, 0.05))

    def enqueue(
        self,
        topic: str,
        payload: bytes,
        *,
        kind: str,
        qos: int = 1,
        retain: bool = False,
        priority: int | None = None,
        seq: int | None = None,
        in_transaction: TxnStep | None = None,
    ) -> int | None:
        """Queue durably (see :meth:`Outbox.put`) and wake the publisher."""
        if not topic or "+" in topic or "#" in topic:
            raise TransportError(f"cannot publish on topic {topic!r}: it is empty or has a wildcard")
        return self.outbox.put(
            topic,
            payload,
            qos=qos,
            retain=retain,
            kind=kind,
            priority=priority,
            seq=seq,
            in_transaction=in_transaction,
        )

    def wake(self) -> None:
        self._events.put(("wake",))

    def flush(self, timeout: float) -> bool:
        """Wait until every queued message is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        self.wake()
        while time.monotonic() < deadline:
            if len(self.outbox) == 0:
                return True
            time.sleep(0.02)
        return len(self.outbox) == 0

    def stop(self, *, timeout: float = 5.0, send_will: bool = False) -> None:
        """Disconnect cleanly and stop the threads.  Unacknowledged rows stay in the outbox.

        ``send_will=True`` asks the broker to publish the last will anyway (MQTT v5 reason code
        0x04), e.g. for a deliberate shutdown that should show the device offline.
        """
        if not self._started:
            return
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._ready = False
        self._events.put(("stop",))
        if self._publisher is not None:
            self._publisher.join(timeout)
        self._inbound_put(None, force=True)
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
        self._client.drop_out_messages()
        if self._connected.is_set():
            reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message") if send_will else None
            self._client.disconnect(reasoncode=reason)
        self._client.loop_stop()
        self._connected.clear()
        self.outbox.remove_listener(self.wake)

    def __enter__(self) -> MqttTransport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ status

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def last_error(self) -> str | None:
        with self._lock:
            return self._last_error

    def status(self) -> TransportStatus:
        with self._lock:
            return TransportStatus(
                connected=self._connected.is_set(),
                host=self.settings.host,
                port=self.settings.port,
                client_id=self.client_id,
                published=self._published,
                acked=self._acked,
                rejected=self._rejected,
                reconnects=max(0, self._connects - 1),
                inflight=self._inflight_count,
                inbound=self._inbound_count,
                inbound_errors=self._inbound_errors,
                inbound_dropped=self._inbound_dropped,
                last_error=self._last_error,
            )

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _set_reconnect_delay(self, delay: float) -> None:
        # paho's annotation says int, but the delay is used as seconds in float arithmetic.
        setter: Any = self._client.reconnect_delay_set
        setter(delay, delay)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        s = self.settings
        if reason_code.is_failure:
            message = f"broker {s.host}:{s.port} refused the connection: {reason_code} (user {s.username!r})"
            with self._lock:
                self._last_error = message
            self._refused.set()
            log.error(
                "broker refused the connection",
                extra={"host": s.host, "port": s.port, "reason": str(reason_code), "user": s.username},
            )
            return
        with self._lock:
            self._link_up = True
            self._link_gen += 1
            generation = self._link_gen
            self._ready = False
            self._connects += 1
            self._last_error = None
            # Re-send from the outbox, in order, rather than from paho's in-memory copy.
            client.drop_out_messages()
            subscriptions = [
                (f, SubscribeOptions(qos=q, retainHandling=1)) for f, (q, _) in self._subscriptions.items()
            ]
            self._max_packet = (
                getattr(properties, "MaximumPacketSize", None) if properties is not None else None
            )
        self._refused.clear()
        self._backoff.reset()
        self._connected.set()
        if subscriptions:
            client.subscribe(subscriptions)
        self._events.put(("connected", generation))
        log.info(
            "connected to broker",
            extra={
                "host": s.host,
                "port": s.port,
                "client_id": self.client_id,
                "session_present": flags.session_present,
                "generation": generation,
            },
        )

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        s = self.settings
        delay = self._backoff.next()
        self._set_reconnect_delay(delay)
        with self._lock:
            if self._last_error is None:
                self._last_error = f"cannot connect to broker {s.host}:{s.port}"
        log.warning(
            "connect attempt failed", extra={"host": s.host, "port": s.port, "retry_s": round(delay, 2)}
        )

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            was_up = self._link_up
            self._link_up = False
            self._ready = False
            stopping = self._stopping
            if was_up and not stopping:
                self._last_error = f"connection lost: {reason_code}"
        self._connected.clear()
        self._events.put(("disconnected",))
        if stopping:
            return
        delay = self._backoff.next()
        self._set_reconnect_delay(delay)
        log.warning(
            "disconnected from broker",
            extra={
                "host": self.settings.host,
                "port": self.settings.port,
                "reason": str(reason_code),
                "from_server": flags.is_disconnect_packet_from_server,
                "retry_s": round(delay, 2),
            },
        )

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Called with paho's message lock held: only hand the event over.
        self._events.put(("ack", mid, bool(reason_code.is_failure), str(reason_code)))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("inbound message with a non-UTF-8 topic ignored")
            return
        self._inbound_put((topic, bytes(message.payload)))

    def _inbound_put(self, item: tuple[str, bytes] | None, *, force: bool = False) -> None:
        try:
            if force:
                self._inbound.put(item, timeout=1.0)
            else:
                self._inbound.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._inbound_dropped += 1
            log.warning(
                "inbound queue full, message dropped",
                extra={"topic": item[0] if item else None, "queue_size": self._inbound.maxsize},
            )

    # ------------------------------------------------------------------ inbound thread

    def _dispatcher_main(self) -> None:
        while True:
            item = self._inbound.get()
            if item is None:
                return
            topic, payload = item
            with self._lock:
                self._inbound_count += 1
                handlers = [
                    h for f, (_, h) in self._subscriptions.items() if paho.topic_matches_sub(f, topic)
                ]
            for handler in handlers:
                try:
                    handler(topic, payload)
                except Exception:
                    with self._lock:
                        self._inbound_errors += 1
                    log.exception(
                        "inbound handler failed; message dropped, client keeps running",
                        extra={
                            "topic": topic,
                            "size": len(payload),
                            "handler": getattr(handler, "__name__", "?"),
                        },
                    )

    # ------------------------------------------------------------------ publisher thread

    def _publisher_main(self) -> None:
        inflight: dict[int, OutboxRow] = {}
        after_id = 0
        # Acks (and broker refusals) not yet recorded in the outbox: kept across cycles so a
        # storage error (e.g. a full disk) delays their deletion instead of losing it.
        acked: list[int] = []
        rejected: list[tuple[OutboxRow, str]] = []
        while True:
            events: list[tuple[Any, ...]] = []
            with contextlib.suppress(queue.Empty):
                events.append(self._events.get(timeout=self._poll_s))
            while True:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            stop = False
            for event in events:
                kind = event[0]
                if kind == "ack":
                    row = inflight.pop(event[1], None)
                    if row is None:
                        continue
                    if event[2]:
                        rejected.append((row, event[3]))
                    else:
                        acked.append(row.id)
                elif kind == "connected":
                    inflight.clear()
                    after_id = 0
                    with self._lock:
                        if self._link_up and self._link_gen == event[1] and not self._stopping:
                            self._ready = True
                elif kind == "stop":
                    stop = True
            try:
                self._settle(acked, rejected)
                if stop:
                    return
                after_id = self._fill(inflight, after_id)
            except Exception:
                if stop:
                    log.exception("publisher stopping with unrecorded acks", extra={"acks": len(acked)})
                    return
                # Storage trouble must not kill the publisher; rows stay queued and are retried.
                log.exception("publisher cycle failed; retrying", extra={"inflight": len(inflight)})
                time.sleep(min(self._poll_s, 1.0))
            with self._lock:
                self._inflight_count = len(inflight)

    def _settle(self, acked: list[int], rejected: list[tuple[OutboxRow, str]]) -> None:
        """Record acks and refusals in the outbox; the lists are emptied as they are recorded."""
        if acked:
            self.outbox.ack_many(acked)
            with self._lock:
                self._acked += len(acked)
            acked.clear()
        while rejected:
            row, reason = rejected[0]
            self.outbox.park(row.id, reason)
            rejected.pop(0)
            with self._lock:
                self._rejected += 1
            log.error(
                "broker refused a message; parked, will not be re-sent",
                extra={"topic": row.topic, "kind": row.kind, "reason": reason, "row_id": row.id},
            )

    def _park(self, row: OutboxRow, reason: str) -> None:
        self.outbox.park(row.id, reason)
        with self._lock:
            self._rejected += 1
        log.error(
            "message cannot be published; parked",
            extra={"topic": row.topic, "kind": row.kind, "reason": reason, "row_id": row.id},
        )

    def _fill(self, inflight: dict[int, OutboxRow], after_id: int) -> int:
        room = self.settings.max_inflight - len(inflight)
        with self._lock:
            ready = self._ready
            max_packet = self._max_packet
        if room <= 0 or not ready:
            return after_id
        rows = self.outbox.pending(after_id=after_id, limit=room)
        sent: list[int] = []
        for row in rows:
            if max_packet is not None and row.size + _PUBLISH_OVERHEAD > max_packet:
                self._park(row, f"larger than the broker's maximum packet size {max_packet}")
                after_id = row.id
                continue
            try:
                with self._lock:
                    if not self._ready:
                        break
                    info = self._client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            except ValueError as exc:
                self._park(row, f"invalid: {exc}")
                after_id = row.id
                continue
            inflight[info.mid] = row
            after_id = row.id
            sent.append(row.id)
        if sent:
            self.outbox.mark_attempt(sent)
            with self._lock:
                self._published += len(sent)
        return after_id
