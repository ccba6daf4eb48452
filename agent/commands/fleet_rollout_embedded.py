"""The rollout controller inside `edgeproof coordinator run`, from the config's ``[rollout]`` section.

The same controller as `edgeproof fleet rollout run` (agent/fleet/rollout_run.py) on a thread of
the coordinator process, with its own database connection and its own broker session: the
coordinator package does not import the fleet code, this command module composes the two (as
`coordinator run` composes the payout desk).  A start that fails (a key that does not load,
another controller on the same operator state, a broker that does not answer) stops
`coordinator run` with that error before it ingests anything; a failure later is logged
(``rollout_controller_failed``) and the coordinator keeps ingesting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import EdgeproofError

if TYPE_CHECKING:
    from agent.coordinator.config import CoordinatorConfig

log = logging.getLogger(__name__)

#: How long a stopping coordinator waits for the controller's last tick.
JOIN_S = 30.0


def start_embedded(config: CoordinatorConfig) -> Callable[[], None]:
    """Start ``[rollout]``'s controller; returns the function that stops it (raises if it cannot start)."""
    from agent.commands.fleet_rollout import CoordinatorRollouts, _open
    from agent.fleet.keys import load_operator_key
    from agent.fleet.mqtt_publish import BrokerSession
    from agent.fleet.rollout_run import ControllerSettings, RolloutController
    from agent.fleet.rollout_sign import controller_lock
    from agent.fleet.state import load_state
    from agent.protocol.topics import Topics

    section = config.rollout
    keypair = load_operator_key(section.key)
    operator = str(keypair.pubkey())
    load_state(Path(section.state), operator)  # it must be this key's (or not exist yet)
    settings = ControllerSettings(
        channel=section.channel,
        key=keypair,
        state=Path(section.state),
        operators=frozenset(section.operator_keys) | {operator},
        abort_failure_rate=section.abort_failure_rate,
        stage_timeout_ms=section.stage_timeout_s * 1000,
        tick_s=section.tick_s,
    )
    stop, ready = threading.Event(), threading.Event()
    failed: list[EdgeproofError] = []

    def body() -> None:
        store = None
        try:
            with controller_lock(settings.state):
                store = _open(config)
                with BrokerSession(config.mqtt) as broker:
                    topics = Topics(config.mqtt.topic_prefix)
                    controller = RolloutController(CoordinatorRollouts(store), broker, topics, settings)
                    controller.subscribe()
                    log.info("rollout_controller_started", extra={"channel": settings.channel})
                    ready.set()
                    controller.run(stop)
                    log.info(
                        "rollout_controller_stopped",
                        extra={"channel": settings.channel, "decisions": len(controller.decisions)},
                    )
        except EdgeproofError as exc:
            failed.append(exc)
            log.error(
                "rollout_controller_failed",
                extra={
                    "channel": settings.channel,
                    "reason": getattr(exc, "reason", None),
                    "error": str(exc),
                },
            )
        finally:
            if store is not None:
                store.close()
            ready.set()

    thread = threading.Thread(target=body, name="rollout-controller", daemon=True)
    thread.start()
    ready.wait()
    if failed:
        raise failed[0]

    def stopper() -> None:
        stop.set()
        thread.join(JOIN_S)

    return stopper
