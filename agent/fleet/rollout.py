"""The rollout controller's decisions: pure functions of a release, the enrolled devices and reports.

A rollout follows one release (channel, model id, version and sha256) through the stages of its
manifest.  Stage membership is the protocol's bucket function (agent/protocol/rollout.py): a
targeted device belongs to the first stage whose basis points exceed its bucket, and stages
are cumulative.  Each device's newest ``deploy`` report decides where it is:

* ``committed``: done;
* ``failed``, ``rolled_back``, ``rejected``: a failure with the device's reason (except
  ``halted`` and ``superseded``: the device stopped because the operator said so and starts
  again on a resume, so it is waiting);
* no terminal report within the stage timeout of the stage it entered: a failure, ``timed_out``,
  or ``offline`` when the device's newest ``status`` (its retained last will) says it is offline:
  still a failure, named so an operator sees that the device was away, not stuck.

:func:`decide` halts as soon as the failures counted since the last resume pass the abort
failure rate of the devices reached so far, advances when every device reached so far is done
or failed, and finishes after the last stage.  :func:`next_manifest` builds the manifest that
says so (a higher version, the same artifacts).  Nothing here does I/O: the runner
(agent/fleet/rollout_run.py) feeds it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agent.protocol.envelope import validate_body
from agent.protocol.messages import Deploy, Manifest, body_to_dict
from agent.protocol.rollout import matches_targets, rollout_bucket

RolloutState = Literal["running", "halted", "done"]
Action = Literal["wait", "advance", "halt", "done"]

#: Deploy states that end a device's part in a stage.
COMMITTED = "committed"
FAILED_STATES = frozenset({"failed", "rolled_back", "rejected"})
#: Failure reasons that only mean "stopped by the operator": the device starts again on a resume.
STOPPED_REASONS = frozenset({"halted", "superseded"})


@dataclass(frozen=True)
class Member:
    """An enrolled device as targeting sees it."""

    dev: str
    profile: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    """A device's newest deploy report about the rollout's release."""

    state: str
    reason: str | None
    at_ms: int
    seq: int = 0


@dataclass(frozen=True)
class Release:
    channel: str
    model_id: str
    model_version: str
    model_sha256: str

    @classmethod
    def of(cls, manifest: Manifest) -> Release:
        return cls(manifest.channel, manifest.model_id, manifest.model_version, manifest.model_sha256)

    def covers(self, deploy: Deploy) -> bool:
        """The deploy report is about this release."""
        return (deploy.channel, deploy.model_id, deploy.model_sha256) == (
            self.channel,
            self.model_id,
            self.model_sha256,
        )


@dataclass(frozen=True)
class Rollout:
    """One release's rollout as the controller records it."""

    manifest: Manifest  # the newest manifest published for it (its stage, halted or not)
    state: RolloutState
    abort_failure_rate: float
    stage_timeout_ms: int
    #: When each stage reached so far began (index = stage).
    stage_started_ms: tuple[int, ...]
    started_ms: int
    #: Failures before this time were accepted by a resume (they stay shown, not counted).
    resumed_ms: int = 0
    halt_reason: str | None = None

    @property
    def release(self) -> Release:
        return Release.of(self.manifest)

    @property
    def channel(self) -> str:
        return self.manifest.channel

    @property
    def stage(self) -> int:
        return self.manifest.stage


@dataclass(frozen=True)
class StageTally:
    """Progress of the devices that entered the rollout at one stage."""

    stage: int
    bp: int
    members: int = 0
    committed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    waiting: int = 0
    #: Failures counted towards the abort rate (after the last resume).
    counted_failures: int = 0
    #: In flight or waiting devices whose newest status says offline.
    offline: int = 0

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    @property
    def settled(self) -> bool:
        return self.in_flight == 0 and self.waiting == 0

    def as_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "percent": self.bp / 100,
            "devices": self.members,
            "committed": self.committed,
            "failed": self.failures,
            "failed_reasons": dict(sorted(self.failed.items())),
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "offline": self.offline,
        }


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str
    failure_rate: float


def entry_stage(manifest: Manifest, member: Member) -> int | None:
    """The stage at which ``member`` joins the release's rollout; None when it is not targeted."""
    if not matches_targets(manifest.targets, dev=member.dev, profile=member.profile, tags=member.tags):
        return None
    bucket = rollout_bucket(member.dev, manifest.channel, manifest.model_id, manifest.model_version)
    return next(index for index, bp in enumerate(manifest.stages) if bucket < bp)


def stage_members(manifest: Manifest, devices: Sequence[Member]) -> dict[str, int]:
    """dev -> entry stage, for the targeted devices up to the manifest's current stage."""
    found: dict[str, int] = {}
    for member in devices:
        stage = entry_stage(manifest, member)
        if stage is not None and stage <= manifest.stage:
            found[member.dev] = stage
    return found


def _place(report: Report | None, deadline_ms: int, now_ms: int, offline: bool) -> tuple[str, str | None]:
    """``committed``, ``failed`` (with reason), ``in_flight`` or ``waiting`` for one device."""
    if report is not None and report.state == COMMITTED:
        return "committed", None
    if report is not None and report.state in FAILED_STATES and report.reason not in STOPPED_REASONS:
        return "failed", report.reason or report.state
    if now_ms >= deadline_ms:
        return "failed", "offline" if offline else "timed_out"
    if report is None or report.state in FAILED_STATES:
        return "waiting", None
    return "in_flight", None


def tally(
    rollout: Rollout,
    devices: Sequence[Member],
    reports: Mapping[str, Report],
    *,
    now_ms: int,
    offline: Container[str] = frozenset(),
) -> list[StageTally]:
    """Per stage reached so far: its devices' progress (a timed-out device counts as failed).

    ``offline``: the devices whose newest status says offline (named ``offline``, not
    ``timed_out``, when their stage times out, and counted while they are in flight or waiting).
    """
    manifest = rollout.manifest
    counts: list[dict[str, Any]] = [
        {
            "members": 0,
            "committed": 0,
            "failed": Counter(),
            "in_flight": 0,
            "waiting": 0,
            "counted": 0,
            "offline": 0,
        }
        for _ in range(manifest.stage + 1)
    ]
    halted = rollout.state == "halted"
    for dev, stage in stage_members(manifest, devices).items():
        started = rollout.stage_started_ms[stage] if stage < len(rollout.stage_started_ms) else now_ms
        deadline = started + rollout.stage_timeout_ms
        report = reports.get(dev)
        away = dev in offline
        place, reason = _place(report, deadline if not halted else 2**62, now_ms, away)
        row = counts[stage]
        row["members"] += 1
        if place == "failed":
            row["failed"][reason] += 1
            at = report.at_ms if report is not None and reason not in ("timed_out", "offline") else deadline
            if at >= rollout.resumed_ms:
                row["counted"] += 1
        else:
            row[place] += 1
            row["offline"] += away
    return [
        StageTally(
            stage=index,
            bp=manifest.stages[index],
            members=row["members"],
            committed=row["committed"],
            failed=dict(row["failed"]),
            in_flight=row["in_flight"],
            waiting=row["waiting"],
            counted_failures=row["counted"],
            offline=row["offline"],
        )
        for index, row in enumerate(counts)
    ]


def decide(rollout: Rollout, stages: Sequence[StageTally]) -> Decision:
    """What the controller does next with a running rollout."""
    members = sum(s.members for s in stages)
    counted = sum(s.counted_failures for s in stages)
    rate = counted / members if members else 0.0
    if rollout.state != "running":
        return Decision("wait", f"rollout is {rollout.state}", rate)
    if rate > rollout.abort_failure_rate:
        reasons: Counter[str] = Counter()
        for s in stages:
            reasons.update(s.failed)
        named = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        return Decision(
            "halt",
            f"{counted} of {members} devices failed ({rate:.1%}; {named}), above the abort failure rate "
            f"{rollout.abort_failure_rate:.1%}",
            rate,
        )
    if not all(s.settled for s in stages):
        busy = sum(s.in_flight + s.waiting for s in stages)
        return Decision("wait", f"{busy} of {members} devices are not done", rate)
    if rollout.stage == len(rollout.manifest.stages) - 1:
        return Decision("done", f"every stage is done ({members} devices)", rate)
    return Decision("advance", f"stage {rollout.stage} is done ({members} devices, {rate:.1%} failed)", rate)


def next_manifest(
    current: Manifest, *, version: int, stage: int | None = None, halted: bool = False
) -> Manifest:
    """The same release under a higher ``version``: at ``stage`` (default the same), halted or not."""
    if version <= current.version:
        raise ValueError(f"version {version} must be above the current {current.version}")
    body = body_to_dict(current)
    body.pop("halted", None)
    body["version"] = version
    body["stage"] = current.stage if stage is None else stage
    if halted:
        body["halted"] = True
    model = validate_body("manifest", body)
    assert isinstance(model, Manifest)
    return model


def advanced(rollout: Rollout, manifest: Manifest, now_ms: int) -> Rollout:
    """The rollout once the next stage's manifest is published."""
    return replace(rollout, manifest=manifest, stage_started_ms=(*rollout.stage_started_ms, now_ms))


def halted(rollout: Rollout, manifest: Manifest, why: str) -> Rollout:
    return replace(rollout, manifest=manifest, state="halted", halt_reason=why)


def resumed(rollout: Rollout, manifest: Manifest, now_ms: int) -> Rollout:
    """Running again: failures so far are accepted, the current stage's timeout starts over."""
    starts = (*rollout.stage_started_ms[: manifest.stage], now_ms)
    return replace(
        rollout,
        manifest=manifest,
        state="running",
        halt_reason=None,
        resumed_ms=now_ms,
        stage_started_ms=starts,
    )


def finished(rollout: Rollout) -> Rollout:
    return replace(rollout, state="done")
