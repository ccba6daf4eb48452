"""The demo's rollout: EfficientNet 1.1.0 to the two classifier devices, in two stages.

The operator serves the release (``fleet serve``) and publishes stage 0 (``fleet publish``),
which reaches exactly one device.  Stage 1 (100%) is published by the rollout controller
(``fleet rollout run``) once stage 0 committed, when this build has it; otherwise by a second
``fleet publish``.  A stage is done when each device it adds reported ``committed`` for a
manifest of that stage and runs 1.1.0 off trial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.demo import network
from agent.demo.network import DemoDevice
from agent.demo.processes import agent_argv
from agent.errors import EdgeproofError

if TYPE_CHECKING:
    from agent.demo.run import Demo

STAGE_WAIT_S = 120.0


def first_stage(
    devices: list[DemoDevice], channel: str, model_id: str, version: str
) -> tuple[str, list[DemoDevice]]:
    """Stages (percent) whose first stage reaches exactly the device with the lowest rollout bucket."""
    from agent.protocol.rollout import rollout_bucket

    buckets = sorted((rollout_bucket(d.dev, channel, model_id, version), d.name) for d in devices)
    low = buckets[0][0]
    first_bp = min(low + 1, 9_999)
    if len(buckets) > 1 and buckets[1][0] < first_bp:
        raise EdgeproofError("two demo devices share a rollout bucket; no stage can reach just one")
    reached = [d for d in devices if d.name == buckets[0][1]]
    return f"{first_bp / 100:g},100", reached


def _publish(demo: Demo, card: str, model: str, stages: str, stage: int, config: str) -> int:
    layout = demo.layout
    published = demo.sup.run(
        "fleet-publish",
        [
            "fleet",
            "publish",
            "--card",
            card,
            "--file",
            model,
            "--url",
            demo.release_url,
            "--channel",
            network.CHANNEL,
            "--targets",
            f"tag:{network.ROLLOUT_TAG}",
            "--stages",
            stages,
            "--stage",
            str(stage),
            "--expires",
            "1h",
            "--key",
            str(layout.operator_key),
            "--state",
            str(layout.operator_state),
            "--config",
            config,
            "--json",
        ],
    )
    return int(published["manifest"]["version"])


def _wait_committed(demo: Demo, reached: list[DemoDevice], min_version: int) -> list[str]:
    names = {d.name for d in reached}
    view = demo.wait(
        f"{', '.join(sorted(names))} to commit {network.NEW_VERSION} (manifest version >= {min_version})",
        lambda v: all(d.committed(min_version, network.NEW_VERSION) for d in v.devices if d.name in names),
        STAGE_WAIT_S,
    )
    return [d.name for d in view.devices if d.version == network.NEW_VERSION and not d.trial]


def run_rollout(demo: Demo) -> None:
    layout = demo.layout
    targeted = [d for d in demo.devices if network.ROLLOUT_TAG in d.tags]
    with demo.steps.step("fleet serve") as note:
        card, model = network.write_release(layout, targeted[0].card)
        serve = demo.sup.spawn(
            "fleet-serve",
            agent_argv("fleet", "serve", str(layout.release), "--port", "0", "--json"),
            stdout_pipe=True,
        )
        demo.release_url = str(demo.sup.ready_line(serve, 60)["url"])
        note["detail"] = demo.release_url
    stages, first = first_stage(targeted, network.CHANNEL, targeted[0].model_id, network.NEW_VERSION)
    later = [d for d in targeted if d not in first]
    demo.result.rollout = {
        "model": targeted[0].model_id,
        "version": network.NEW_VERSION,
        "stages": stages,
        "stage_devices": [[d.name for d in first], [d.name for d in targeted]],
        "committed": [],
        "controller": True,
    }
    percents = stages.split(",")
    # Before stage 0: deploy reports are not retained, the controller must see them live.
    with demo.steps.step("start the rollout controller") as note:
        child = demo.sup.spawn(
            "fleet-rollout",
            agent_argv(
                "--log-level",
                "info",
                "fleet",
                "rollout",
                "run",
                "--coordinator-config",
                str(layout.coordinator_config),
                "--channel",
                network.CHANNEL,
                "--key",
                str(layout.operator_key),
                "--state",
                str(layout.operator_state),
                "--stage-timeout",
                "2m",
                "--exit-when-settled",
                "--json",
            ),
            stdout_pipe=True,
        )
        ready = demo.sup.ready_line(child, 60)
        note["detail"] = f"{ready.get('controller', '?')} on channel {ready.get('channel', '?')}"
    with demo.steps.step("fleet publish stage 0") as note:
        version = _publish(demo, str(card), str(model), stages, 0, str(targeted[0].config))
        demo.stage = f"{network.NEW_VERSION} stage 0 ({percents[0]}%)"
        committed = _wait_committed(demo, first, version)
        demo.result.rollout["committed"] = committed
        demo.stage += " committed"
        note["detail"] = f"manifest version {version}; committed on {', '.join(committed)}"
    with demo.steps.step("fleet rollout run: stage 1") as note:
        demo.stage = f"{network.NEW_VERSION} stage 1 ({percents[1]}%, controller)"
        committed = _wait_committed(demo, later, version + 1)
        status = demo.sup.run(
            "fleet-status",
            [
                "fleet",
                "status",
                "--coordinator-config",
                str(layout.coordinator_config),
                "--channel",
                network.CHANNEL,
                "--json",
            ],
        )
        demo.result.rollout.update(committed=committed, status=status)
        demo.stage += " committed"
        note["detail"] = f"the controller published stage 1; committed on {', '.join(committed)}"
