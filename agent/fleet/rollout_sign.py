"""Sign and publish a rollout's next manifest with the operator key, as ``fleet publish`` does.

The manifest is the next link of the operator key's chain (seq and prev from the state file),
the state file is written before the publish (a failed publish costs a version and a seq,
never two manifests under one), and the version is above both the operator's record for the
channel and the manifest it replaces.  The controller and ``fleet halt``/``fleet resume`` may
run at once: an exclusive lock on ``STATE.lock`` keeps them from signing the same seq.

This is the 1-of-1 path (one operator key).  A team whose devices require k > 1 operator
signatures runs the controller with ``--propose DIR --threshold K``: the next manifest is signed
as the next link of the controller key's chain (its state file written first, as for a publish)
and written to ``DIR/CHANNEL-vVERSION.json`` as a signing file (agent/fleet/signing.py) instead
of being published; the co-signers add theirs (``edgeproof fleet sign``) and the controller's
operator publishes it (``edgeproof fleet publish --from``), docs/fleet.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from solders.keypair import Keypair

from agent.errors import FleetError
from agent.fleet.mqtt_publish import BrokerSession
from agent.fleet.rollout import Release, next_manifest
from agent.fleet.signing import check_threshold, load_signing_file, new_signing_file, write_signing_file
from agent.fleet.state import load_state, save_state
from agent.protocol.envelope import Envelope, build_envelope
from agent.protocol.messages import Manifest
from agent.protocol.topics import Topics


@contextlib.contextmanager
def state_lock(state_path: Path) -> Iterator[None]:
    lock_path = state_path.with_name(state_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def controller_lock(state_path: Path) -> Iterator[None]:
    """Held for a controller's life: a second controller on the same operator state is refused.

    (``state_lock`` is held only around each signature, so ``fleet halt`` still runs beside it.)
    """
    lock_path = state_path.with_name(state_path.name + ".controller.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetError(
                f"another rollout controller runs with the operator state {state_path}",
                reason="controller_running",
                hint="one controller per operator key: stop the other (fleet rollout run, or a "
                "coordinator with [rollout] channel)",
            ) from None
        yield
    finally:
        os.close(fd)


def next_version(state_path: Path, keypair: Keypair, current: Manifest) -> int:
    """Above the operator's record for the channel and above ``current``."""
    state = load_state(state_path, str(keypair.pubkey()))
    return max(state.highest(current.channel), current.version) + 1


def sign_manifest(
    state_path: Path, keypair: Keypair, manifest: Manifest, *, now_ms: int, abort_failure_rate: float
) -> Envelope:
    """The manifest as the operator chain's next link; the state file is written first."""
    operator = str(keypair.pubkey())
    state = load_state(state_path, operator)
    if manifest.version <= state.highest(manifest.channel):
        raise FleetError(
            f"version {manifest.version} on channel {manifest.channel!r} is not above this operator's "
            f"highest {state.highest(manifest.channel)}",
            reason="stale_version",
        )
    env = build_envelope(
        keypair, "manifest", manifest, seq=state.seq + 1, prev=state.head, ts=now_ms, dev=operator
    )
    save_state(state_path, state.after(env, manifest.channel, manifest.version, abort_failure_rate))
    return env


def proposed_steps(propose: Path, keypair: Keypair, current: Manifest) -> set[tuple[int, int, bool]]:
    """The steps already proposed in ``propose`` for ``current``'s release, as (the version they
    follow, stage, halted): this key's signing files of the channel above ``current``'s version.

    A controller that restarts while its proposal waits for co-signers finds it here and does not
    sign the same step again under a new version.  A file that does not load is not a proposal.
    """
    found: set[tuple[int, int, bool]] = set()
    release, signer = Release.of(current), str(keypair.pubkey())
    for path in sorted(propose.glob(f"{current.channel}-v*.json")) if propose.is_dir() else []:
        try:
            signing = load_signing_file(path)
        except FleetError:
            continue
        m = signing.manifest
        if signing.envelope.dev == signer and Release.of(m) == release and m.version > current.version:
            found.add((current.version, m.stage, bool(m.halted)))
    return found


def publish_next(
    broker: BrokerSession,
    topics: Topics,
    state_path: Path,
    keypair: Keypair,
    current: Manifest,
    *,
    stage: int | None = None,
    halted: bool = False,
    now_ms: int,
    abort_failure_rate: float,
    propose: Path | None = None,
    threshold: int = 2,
) -> Manifest:
    """Under the state lock: the next manifest of ``current`` (``stage``, ``halted``), signed and published.

    With ``propose`` the signed envelope is written to the signing file ``DIR/CHANNEL-vVERSION.json``
    (needing ``threshold`` signatures) instead of being published, for a team whose devices need
    k > 1 signatures.
    """
    with state_lock(state_path):
        manifest = next_manifest(
            current, version=next_version(state_path, keypair, current), stage=stage, halted=halted
        )
        if propose is not None:
            check_threshold(threshold)
            propose.mkdir(parents=True, exist_ok=True)
        env = sign_manifest(
            state_path, keypair, manifest, now_ms=now_ms, abort_failure_rate=abort_failure_rate
        )
        if propose is not None:
            out = propose / f"{manifest.channel}-v{manifest.version}.json"
            write_signing_file(out, new_signing_file(env, threshold), replace=False)
            return manifest
        broker.publish_retained(topics.manifest(manifest.channel), env.wire)
    return manifest
