"""`edgeproof doctor`: is this device ready to earn?  One check per part, each ok/warn/fail/skip.

Every check uses the real part: the config is loaded and validated, the key file is read with
its mode checked, the model is hashed against its card and run once on a synthetic frame by the
backend the daemon would pick, the source yields a frame, the state folder takes a file, the
broker answers an MQTT CONNECT with the configured TLS and credentials and hands over the
coordinator's retained beacon (its signer checked against the pin, its slot time against this
clock), the thermal sensor is read, the reward wallet and the RPC endpoint are checked, and what
the platform's recipe needs is there (:mod:`agent.device.doctor_checks`).  A failed check names what is wrong and how to fix it; later checks that need its result
are skipped rather than failing again for the same cause.

Nothing here disturbs a running daemon.  The broker ties every client id to its user name
(deploy/mosquitto, ADR 0015), so a probe with the device's credentials would replace the
daemon's session: while the daemon runs, the broker check asks the daemon itself over its
control socket instead.  A camera the daemon holds is not opened, and the outbox database is not
touched (``edgeproof status`` reads it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.config import SOURCE_NONE, AgentConfig, load_config
from agent.device import doctor_checks
from agent.device.coordinator_pin import PIN_HINT, UNPINNED_NOTICE
from agent.device.doctor_checks import Status
from agent.device.health import HealthProbe
from agent.device.status import pid_alive, read_status
from agent.errors import EdgeproofError
from agent.identity import device_id, load_keypair
from agent.profiles import Profile
from agent.protocol.envelope import Envelope
from agent.protocol.topics import Topics

#: The checks, in the order they run.
CHECKS = (
    "config",
    "daemon",
    "key",
    "wallet",
    "profile",
    "platform",
    "model",
    "thermal",
    "source",
    "storage",
    "broker",
    "beacon",
    "clock",
    "coordinator",
    "rpc",
)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, name: str, status: Status, detail: str, hint: str = "") -> None:
        self.checks.append(Check(name, status, detail, hint))

    def attempt(self, name: str, check: Callable[[], tuple[Status, str, str]]) -> bool:
        """Run one check; an EdgeproofError is its failure (message and hint).  True if not failed."""
        try:
            status, detail, hint = check()
        except EdgeproofError as exc:
            self.add(name, "fail", exc.message, exc.hint or "")
            return False
        self.add(name, status, detail, hint)
        return status != "fail"

    def skip(self, name: str, because: str) -> None:
        self.add(name, "skip", f"not checked: {because}")

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "checks": [c.as_dict() for c in self.checks]}


@dataclass
class _Found:
    """What earlier checks learned, for the later ones."""

    config: AgentConfig | None = None
    dev: str | None = None
    profile: Profile | None = None
    daemon_pid: int | None = None
    probed: bool = False  # the broker check connected itself (and read the retained beacon)
    beacon_wire: bytes | None = None
    beacon_at_ms: int = 0
    beacon: Envelope | None = None


def diagnose(config_path: str | None, *, root: Path = Path("/"), broker_timeout_s: float = 5.0) -> Report:
    report = Report()
    found = _Found()

    def config() -> tuple[Status, str, str]:
        found.config = load_config(config_path)
        return "ok", f"{config_path or 'embedded defaults'} is valid", ""

    if not report.attempt("config", config) or found.config is None:
        for name in CHECKS[1:]:
            report.skip(name, "the config is not valid")
        return report
    cfg = found.config
    state_dir = Path(cfg.device.state_dir)

    def daemon() -> tuple[Status, str, str]:
        status = read_status(state_dir)
        if status is None:
            return (
                "warn",
                f"not running: no status file in {state_dir}",
                "start it: systemctl start edgeproof",
            )
        pid = int(status.get("pid", 0))
        if status.get("running") and pid_alive(pid):
            found.daemon_pid = pid
            chain = status.get("chain", {})
            connected = status.get("transport", {}).get("connected")
            return (
                "ok",
                f"running, pid {pid}; chain seq {chain.get('seq')}, last acked {chain.get('last_acked_seq')}; "
                f"broker {'connected' if connected else 'not connected'}",
                "",
            )
        return (
            "warn",
            f"not running (last status written by pid {pid})",
            "start it: systemctl start edgeproof",
        )

    def key() -> tuple[Status, str, str]:
        found.dev = device_id(load_keypair(cfg.device.key))
        return "ok", f"device id {found.dev}", ""

    def profile() -> tuple[Status, str, str]:
        from agent.inference.runtime import resolve_profile

        found.profile = resolve_profile(cfg.device.profile, root)
        how = "detected" if cfg.device.profile == "auto" else "configured"
        return "ok", f"{found.profile.id} ({how})", ""

    def model() -> tuple[Status, str, str]:
        from agent.inference.pipeline import Pipeline
        from agent.inference.runtime import backend_settings
        from agent.inference.sources import synthetic_frame

        assert found.profile is not None
        inf = cfg.inference
        settings = backend_settings(
            found.profile,
            threads=inf.threads,
            onnx_providers=inf.onnx_providers or None,
            litert_delegates=inf.litert_delegates or None,
            spin_wait=inf.max_fps == 0,
            tensorrt_cache=inf.tensorrt_cache,
        )
        pipeline = Pipeline.open(inf.model, settings, inf.backend or None)
        info = pipeline.describe()
        pipeline.step(synthetic_frame(640, 480, 0, 0))  # warm-up: first runs allocate
        step = pipeline.step(synthetic_frame(640, 480, 0, 1))
        skipped = f"; skipped {', '.join(info['providers_skipped'])}" if info["providers_skipped"] else ""
        return (
            "ok",
            f"{info['model']} {info['model_version']} (sha256 {info['model_sha256'][:12]}... verified) on "
            f"{info['backend']} {info['provider']}, {info['threads']} threads{skipped}; "
            f"one inference {step.latency_us / 1000:.1f} ms",
            "",
        )

    def source() -> tuple[Status, str, str]:
        from agent.inference.sources import open_source

        spec = cfg.inference.source
        if spec == SOURCE_NONE:
            return "ok", "none: heartbeats-only mode (no frames, no proofs)", ""
        if found.daemon_pid is not None and not spec.startswith("synthetic"):
            return "skip", f"{spec} is in use by the running daemon (pid {found.daemon_pid})", ""
        opened = open_source(spec, loop=cfg.inference.loop, max_reopen_attempts=0)
        try:
            frame = opened.read()
        finally:
            opened.close()
        if frame is None:
            return (
                "fail",
                f"{opened.description} opened but gave no frame",
                "check the camera, stream or files",
            )
        height, width = frame.shape[:2]
        return "ok", f"{opened.description}: a {width}x{height} frame", ""

    def storage() -> tuple[Status, str, str]:
        # Nothing is created: a missing state folder is made by the daemon, as its own user.
        folder = state_dir
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
                pass
        except OSError as exc:
            return (
                "fail",
                f"{folder} is not writable by this user: {exc.strerror or exc}",
                "run doctor as the user the agent runs as (sudo -u edgeproof ...); give it the state folder",
            )
        free = shutil.disk_usage(folder).free
        bound = cfg.outbox.max_bytes
        where = f"{state_dir} writable" if folder == state_dir else f"{state_dir} can be created in {folder}"
        detail = f"{where}; {free / 1e6:,.0f} MB free, outbox bound {bound / 1e6:,.0f} MB"
        if free < bound:
            return (
                "warn",
                detail,
                "a long outage could fill the disk before the outbox bound: lower outbox.max_bytes",
            )
        return "ok", detail, ""

    def broker() -> tuple[Status, str, str]:
        from agent.transport.probe import probe_broker

        assert found.dev is not None
        if found.daemon_pid is not None:
            outcome, seen = _broker_through_daemon(state_dir)
            if seen is not None:  # the beacon as the daemon received it, and when (its clock)
                found.probed = True
                found.beacon_wire, found.beacon_at_ms = seen
            return outcome
        client_id = f"edgeproof-doctor-{found.dev[:8]}-{os.getpid()}"
        beacon_topic = Topics(cfg.mqtt.topic_prefix).beacon()
        result = probe_broker(cfg.mqtt, client_id, timeout_s=broker_timeout_s, retained=beacon_topic)
        found.probed = True
        found.beacon_wire, found.beacon_at_ms = result.retained, result.retained_at_ms
        if cfg.mqtt.tls is None and cfg.mqtt.host not in ("127.0.0.1", "localhost", "::1"):
            return (
                "warn",
                result.describe(),
                "the connection is not encrypted: add an [mqtt.tls] table with ca_file (deploy/mosquitto)",
            )
        return "ok", result.describe(), ""

    def thermal() -> tuple[Status, str, str]:
        assert found.profile is not None
        policy = found.profile.thermal
        reading = HealthProbe(root, policy.zone_glob, policy.ignore_zone_types).read()
        if reading.temp_mc is None:
            return (
                "warn",
                f"no temperature sensor matches {policy.zone_glob}",
                "the thermal policy cannot lower the rate on this board; check the profile's zone_glob",
            )
        temp = reading.temp_mc / 1000
        detail = f"{temp:.1f} °C; throttle at {policy.throttle_c} °C, pause at {policy.critical_c} °C"
        if reading.throttled or temp >= policy.throttle_c:
            return "warn", detail + ("; the SoC reports throttling" if reading.throttled else ""), ""
        return "ok", detail, ""

    def coordinator() -> tuple[Status, str, str]:
        if not cfg.coordinator.pubkey:
            return "fail", UNPINNED_NOTICE + " (no beacon is quoted, no challenge answered)", PIN_HINT
        return (
            "ok",
            f"only {cfg.coordinator.pubkey} is trusted for beacons, challenges, verdicts and vouchers",
            "",
        )

    def beacon() -> tuple[Status, str, str]:
        topic = Topics(cfg.mqtt.topic_prefix).beacon()
        outcome, found.beacon = doctor_checks.beacon(found.beacon_wire, cfg.coordinator.pubkey, topic)
        return outcome

    report.attempt("daemon", daemon)
    key_ok = report.attempt("key", key)
    report.attempt("wallet", lambda: doctor_checks.wallet(cfg, found.dev))
    profile_ok = report.attempt("profile", profile)
    if profile_ok:
        detected = found.profile
        assert detected is not None
        report.attempt("platform", lambda: doctor_checks.platform(detected, cfg, root=root))
        report.attempt("model", model)
        report.attempt("thermal", thermal)
    else:
        report.skip("platform", "no firmware profile")
        report.skip("model", "no firmware profile")
        report.skip("thermal", "no firmware profile")
    report.attempt("source", source)
    report.attempt("storage", storage)
    if key_ok:
        broker_ok = report.attempt("broker", broker)
    else:
        broker_ok = False
        report.skip("broker", "no device key (the broker user is the device id)")
    if found.probed and broker_ok:
        report.attempt("beacon", beacon)
    elif found.daemon_pid is not None:
        report.skip("beacon", "the running daemon has received no beacon yet (asked over its control socket)")
    else:
        report.skip("beacon", "no broker connection")
    if found.beacon is not None:
        env = found.beacon
        report.attempt("clock", lambda: doctor_checks.clock(env, found.beacon_at_ms, cfg.beacons.tolerance_s))
    else:
        report.skip("clock", "no verified beacon to compare with")
    report.attempt("coordinator", coordinator)
    report.attempt("rpc", lambda: doctor_checks.rpc(cfg.rewards))
    return report


def _broker_through_daemon(state_dir: Path) -> tuple[tuple[Status, str, str], tuple[bytes, int] | None]:
    """The running daemon's own connection, over its control socket (never a second session),
    and the newest beacon payload it received with the time it did (None: none yet)."""
    from agent.device.control_client import ControlClient, socket_path

    try:
        live = ControlClient(socket_path(state_dir)).call("status")
    except EdgeproofError as exc:
        return (
            "warn",
            f"the daemon runs but did not answer on its control socket: {exc.message}",
            "a broker probe with the device's credentials would replace its session; "
            "stop the service to probe the broker: systemctl stop edgeproof",
        ), None
    seen = live.get("beacon_seen")
    beacon = None
    if (
        isinstance(seen, dict)
        and isinstance(seen.get("payload"), str)
        and isinstance(seen.get("received_ms"), int)
    ):
        beacon = (seen["payload"].encode("utf-8"), seen["received_ms"])
    transport = live.get("transport", {})
    where = f"{transport.get('host')}:{transport.get('port')}"
    if transport.get("connected"):
        return (
            "ok",
            f"the running daemon is connected to {where} (asked over its control socket)",
            "",
        ), beacon
    error = transport.get("last_error") or "no error reported"
    return (
        "fail",
        f"the running daemon is not connected to {where}: {error}",
        "check the broker address, credentials and TLS in [mqtt]; journalctl -u edgeproof",
    ), beacon
