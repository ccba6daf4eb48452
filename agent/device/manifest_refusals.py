"""Tell the operator when this device refuses a manifest meant for it (issue 9, defect 4).

A refused manifest whose envelope still parses and whose body fits the manifest schema, and
whose targets name this device, is reported as a signed ``deploy`` message with state
``rejected`` and the refusal's reason (``expired``, ``stale_version``, ``version_reused``,
``untrusted_operator``, ``bad_signature``, ...), so ``edgeproof fleet status`` can show it.
Whatever arrives, the number of reports stays bounded:

* one report per ``(channel, manifest version, reason)``: a re-delivered or replayed refusal is
  never reported twice; the last :data:`REMEMBERED` keys are kept in the device state store, so
  a restart (which judges the stored manifest again) does not report it again either;
* at most :data:`BURST` reports, then one per :data:`REFILL_S` seconds (a token bucket): a
  hostile broker inventing a new version for each of 10,000 forged manifests gets ``BURST``
  reports and a few more per hour, never a flood.

Every refusal is still counted by reason in ``rejected_inbound``; what was not reported is
counted as ``refusal_reports_repeated`` / ``refusal_reports_rate_limited`` in the daemon's
counters (``refusal_reports_sent`` for the reports).  A refusal of a payload that names no
readable manifest (``malformed``, ``oversized``, ``schema``) or one that does not target this
device is not reported: there is nothing to name, or it is not this device's business.

Reports of ``bad_signature`` and ``untrusted_operator`` describe content nobody trusted signed:
they say "this was published on my channel", not "the operator's release failed" (ADR 0026).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from agent.device.manifests import DeviceFacts, targets_device
from agent.device.state_store import StateStore
from agent.errors import EdgeproofError, ProtocolError
from agent.protocol.envelope import parse_envelope, validate_body
from agent.protocol.messages import Deploy, Manifest

log = logging.getLogger(__name__)

BURST = 8
REFILL_S = 60.0
REMEMBERED = 64
#: The state store record holding the last reported keys (a JSON list of [channel, version, reason]).
RECORD = "deploy.rejected_reported"

Key = tuple[str, int, str]


def refused_manifest(payload: bytes) -> Manifest | None:
    """The manifest a refused payload carries (envelope parses, body fits the schema), else None.

    The signature is not checked: the caller already refused the payload, this only reads it.
    """
    try:
        parsed = parse_envelope(payload)
        if parsed.kind != "manifest":
            return None
        body = validate_body(parsed.kind, parsed.raw["body"])
    except (ProtocolError, KeyError):
        return None
    return body if isinstance(body, Manifest) else None


def rejected_body(manifest: Manifest, reason: str) -> Deploy:
    return Deploy(
        channel=manifest.channel,
        manifest_version=manifest.version,
        model_id=manifest.model_id,
        model_sha256=manifest.model_sha256,
        state="rejected",
        reason=reason,
    )


class RefusalReports:
    """Decides which refusals become ``rejected`` reports; ``consider`` returns the outcome."""

    def __init__(
        self,
        state: StateStore,
        report: Callable[[Deploy], None],
        facts: DeviceFacts,
        *,
        now_s: float,
        burst: int = BURST,
        refill_s: float = REFILL_S,
    ) -> None:
        self.state, self.report, self.facts = state, report, facts
        self.burst, self.refill_s = burst, refill_s
        self._tokens = float(burst)
        self._at = now_s
        self._lock = threading.Lock()
        self._sent: OrderedDict[Key, None] = OrderedDict((k, None) for k in self._load())

    def _load(self) -> list[Key]:
        try:
            raw = self.state.record(RECORD)
            items = json.loads(raw) if isinstance(raw, str) else []
        except (EdgeproofError, ValueError):
            return []
        keys: list[Key] = []
        for item in items if isinstance(items, list) else []:
            if (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and isinstance(item[1], int)
                and isinstance(item[2], str)
            ):
                keys.append((item[0], item[1], item[2]))
        return keys[-REMEMBERED:]

    def consider(self, payload: bytes, reason: str, now_s: float) -> str:
        """Report the refusal of ``payload`` if it should be; returns ``sent``, ``repeated``,
        ``rate_limited``, ``not_targeted`` or ``unreadable``."""
        manifest = refused_manifest(payload)
        if manifest is None:
            return "unreadable"
        if not targets_device(manifest, self.facts):
            return "not_targeted"
        key = (manifest.channel, manifest.version, reason)
        with self._lock:
            if key in self._sent:
                return "repeated"
            self._tokens = min(float(self.burst), self._tokens + (now_s - self._at) / self.refill_s)
            self._at = now_s
            if self._tokens < 1.0:
                return "rate_limited"
            self._tokens -= 1.0
            self._sent[key] = None
            while len(self._sent) > REMEMBERED:
                self._sent.popitem(last=False)
            remembered = json.dumps([list(k) for k in self._sent])
        try:
            self.state.set_record(RECORD, remembered)
        except EdgeproofError as exc:
            log.warning("reported refusal not stored", extra={"error": exc.message})
        self.report(rejected_body(manifest, reason))
        return "sent"
