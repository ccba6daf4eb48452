"""The doctor's checks that look past the device: the coordinator's beacon (signer and clock), the
reward wallet and RPC endpoint, and what the detected platform (Jetson, Termux) needs.

Each check returns ``(status, detail, hint)``; :mod:`agent.device.doctor` runs them in order.
The beacon is the retained one the broker holds (read in the broker check's own connection,
:func:`agent.transport.probe.probe_broker`); its envelope is verified like the daemon verifies
it, so a forged, foreign or malformed beacon is named by the same reason the daemon would log.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from solders.pubkey import Pubkey

from agent.config import AgentConfig, RewardSettings
from agent.errors import EdgeproofError, ProtocolError
from agent.profiles import Profile
from agent.protocol.envelope import Envelope, verify_envelope
from agent.protocol.messages import Beacon

Status = Literal["ok", "warn", "fail", "skip"]
Outcome = tuple[Status, str, str]

NTP_HINT = "sync the clock with NTP: timedatectl set-ntp true (timedatectl status then shows 'System clock synchronized: yes')"
#: An offset above this is worth a warning; above [beacons] tolerance_s it is a failure.
CLOCK_WARN_MS = 2_000
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
NVPMODEL_STATUS = "var/lib/nvpmodel/status"
#: Android's shared storage (FUSE): SQLite's locking and fsync are not dependable there.
SHARED_STORAGE = ("/sdcard", "/storage/", "/mnt/sdcard")


def beacon(payload: bytes | None, pin: str, topic: str) -> tuple[Outcome, Envelope | None]:
    """The retained beacon: present, a valid signed beacon, and signed by the pinned coordinator."""
    if payload is None:
        return (
            "warn",
            f"no retained beacon on {topic}",
            "is the coordinator running and publishing beacons to this broker (same topic_prefix)?",
        ), None
    try:
        env = verify_envelope(payload)
        if env.kind != "beacon":
            raise ProtocolError(f"a {env.kind} envelope, not a beacon", reason="wrong_kind")
    except ProtocolError as exc:
        return (
            "fail",
            f"the retained message on {topic} is refused ({exc.reason}): {exc.message}",
            "someone with write access to the beacon topic published it: check the broker's ACL",
        ), None
    body = env.body
    assert isinstance(body, Beacon)
    if not pin:
        return (
            "warn",
            f"beacon slot {body.slot} is signed by {env.dev}; no coordinator is pinned",
            f"if {env.dev} is your coordinator, set coordinator.pubkey to it",
        ), env
    if env.dev != pin:
        return (
            "fail",
            f"beacon slot {body.slot} is signed by {env.dev}, not by the pinned coordinator {pin}: "
            "the daemon refuses it (untrusted_coordinator)",
            "compare coordinator.pubkey with `edgeproof keys show --key <its coordinator key>` on the coordinator",
        ), env
    return ("ok", f"beacon slot {body.slot} is signed by the pinned coordinator {pin}", ""), env


def clock(env: Envelope, received_at_ms: int, tolerance_s: float) -> Outcome:
    """The device clock against the beacon's slot start: it must lie within [start, start + slot]."""
    body = env.body
    assert isinstance(body, Beacon)
    lag = received_at_ms - body.time_ms
    tolerance_ms = int(tolerance_s * 1000)
    if lag < 0:
        off = -lag
        detail = f"the device clock is {off / 1000:.1f} s behind the coordinator's (beacon slot {body.slot})"
        if off > tolerance_ms:
            return (
                "fail",
                f"{detail}; beyond beacons.tolerance_s {tolerance_s:g}: beacons are refused (beacon_from_future)",
                NTP_HINT,
            )
        return ("warn", detail, NTP_HINT) if off > CLOCK_WARN_MS else ("ok", detail, "")
    beyond = lag - body.slot_ms
    if beyond > CLOCK_WARN_MS:
        detail = (
            f"beacon slot {body.slot} started {lag / 1000:.1f} s ago, longer than its {body.slot_ms / 1000:g} s "
            f"slot: the device clock is {beyond / 1000:.1f} s ahead of the coordinator's, or the coordinator "
            "stopped publishing beacons"
        )
        hint = f"{NTP_HINT}; otherwise check that the coordinator runs"
        return ("fail" if beyond > tolerance_ms else "warn"), detail, hint
    return (
        "ok",
        f"within {CLOCK_WARN_MS / 1000:g} s of the coordinator's clock (beacon slot {body.slot} started "
        f"{lag / 1000:.1f} s ago, {body.slot_ms / 1000:g} s slots)",
        "",
    )


def wallet(cfg: AgentConfig, dev: str | None) -> Outcome:
    address = cfg.device.owner_wallet
    if not address:
        return (
            "warn",
            "no owner wallet: this device's rewards cannot be claimed",
            "set device.owner_wallet to the Solana address that should receive rewards",
        )
    key = Pubkey.from_string(address)  # the config already refused anything else
    if not key.is_on_curve():
        return (
            "warn",
            f"{address} is off the ed25519 curve (a program-derived address): no private key exists for it",
            "fine for a program you control (e.g. a multisig vault); otherwise set device.owner_wallet to "
            "a wallet's address (solana-keygen pubkey)",
        )
    if address == dev:
        return (
            "warn",
            f"rewards go to the device's own key {address}",
            "use a wallet kept off the device: a lost or stolen device would take its rewards with it",
        )
    return "ok", f"rewards go to {address}", ""


def rpc(rewards: RewardSettings) -> Outcome:
    """``getHealth`` and the reward mint through the same client the claims use."""
    from agent.chain.client import ChainClient

    url = rewards.rpc_url
    if not url:
        return "skip", "not checked: rewards.rpc_url is not set (the agent does not claim)", ""
    hint = "check rewards.rpc_url, that the RPC node runs and that this device can reach it"
    try:
        with ChainClient(url, timeout_s=rewards.rpc_timeout_s, retries=0) as client:
            if not client.healthy():
                return "fail", f"{url} did not answer getHealth with ok", hint
            slot = client.slot()
            mint = client.account(Pubkey.from_string(rewards.mint))
    except EdgeproofError as exc:
        return "fail", f"{url}: {exc.message}", exc.hint or hint
    if mint is None:
        return (
            "fail",
            f"{url} is healthy (slot {slot}) but has no account for the reward mint {rewards.mint}",
            "another cluster? rewards.rpc_url and rewards.mint must name the coordinator's cluster and mint",
        )
    return "ok", f"{url}: getHealth ok, slot {slot}; reward mint {rewards.mint} found", ""


def platform(
    profile: Profile, cfg: AgentConfig, env: Mapping[str, str] | None = None, root: Path = Path("/")
) -> Outcome:
    """What the platform's deploy/ recipe sets up: GPU providers and engine cache, wake lock and storage."""
    environ = os.environ if env is None else env
    if profile.id.startswith("jetson"):
        return _jetson(profile, cfg, root)
    if profile.id == "android-termux":
        return _termux(cfg, environ)
    return "ok", f"{profile.id}: nothing platform-specific to check", ""


def power_mode(root: Path) -> str | None:
    """The nvpmodel power mode id (``/var/lib/nvpmodel/status`` holds ``pmode:0000``), if any."""
    try:
        text = (root / NVPMODEL_STATUS).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for field in text.split():
        if field.startswith("pmode:") and field[6:].isdigit():
            return str(int(field[6:]))
    return None


def _jetson(profile: Profile, cfg: AgentConfig, root: Path) -> Outcome:
    try:
        import onnxruntime

        available = list(onnxruntime.get_available_providers())
    except ImportError:
        return (
            "fail",
            "onnxruntime is not installed",
            "install NVIDIA's onnxruntime-gpu wheel (deploy/jetson/README.md)",
        )
    mode = power_mode(root)
    power = (
        f"; power mode {mode} (nvpmodel)" if mode is not None else "; power mode unknown (no nvpmodel status)"
    )
    wanted = [
        p for p in (cfg.inference.onnx_providers or profile.inference.onnx_providers) if p in GPU_PROVIDERS
    ]
    missing = [p for p in wanted if p not in available]
    if missing:
        return (
            "warn",
            f"onnxruntime offers {', '.join(available)}: no {', '.join(missing)} (a CPU build), so inference "
            f"runs on the CPU{power}",
            "install NVIDIA's onnxruntime-gpu for this JetPack (deploy/jetson/README.md)",
        )
    gpu = ", ".join(p for p in available if p in GPU_PROVIDERS) or "none (CPU providers configured)"
    if "TensorrtExecutionProvider" not in wanted:
        return "ok", f"GPU providers: {gpu}{power}", ""
    cache = cfg.inference.tensorrt_cache
    if not cache:
        return (
            "warn",
            f"GPU providers: {gpu}; no TensorRT engine cache, so every start rebuilds the engine (minutes){power}",
            'set [inference] tensorrt_cache = "/var/lib/edgeproof/tensorrt" and install the drop-in '
            "deploy/jetson/edgeproof-jetson.conf",
        )
    if not (os.path.isdir(cache) and os.access(cache, os.W_OK)):
        return (
            "fail",
            f"inference.tensorrt_cache {cache} is not a folder this user can write: TensorRT cannot keep its engine",
            "the drop-in deploy/jetson/edgeproof-jetson.conf creates it (StateDirectory=edgeproof/tensorrt); "
            "run doctor as the agent's user",
        )
    return "ok", f"GPU providers: {gpu}; TensorRT engine cache {cache}{power}", ""


def _termux(cfg: AgentConfig, environ: Mapping[str, str]) -> Outcome:
    state = str(Path(cfg.device.state_dir))
    if state.startswith(SHARED_STORAGE):
        return (
            "fail",
            f"device.state_dir {state} is on Android's shared storage: SQLite cannot rely on its locks and fsync",
            "keep the state under $HOME (e.g. ~/.local/state/edgeproof), as deploy/termux/install.sh does",
        )
    path = environ.get("PATH", "")
    if shutil.which("termux-wake-lock", path=path) is None:
        return (
            "warn",
            "termux-wake-lock is not on PATH: Android may suspend the CPU with the screen off",
            "pkg install termux-tools; the run script takes the wake lock (deploy/termux/run)",
        )
    prefix = environ.get("PREFIX", "")
    run = Path(prefix) / "var/service/edgeproof/run"
    if not prefix or not os.access(run, os.X_OK):
        return (
            "warn",
            f"no runit service at {run}: nothing restarts the agent",
            "run deploy/termux/install.sh (termux-services), then sv-enable edgeproof",
        )
    return "ok", f"state in {state}; termux-wake-lock found; service {run}", ""
