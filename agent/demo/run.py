"""The demo's steps, in order: the network up, a rollout, a challenge round, a settlement, claims.

Every role acts through its own command (``chain localnet``, ``chain bootstrap``, ``coordinator
run``/``enroll``, ``run``, ``fleet keys init``/``serve``/``publish``, ``rewards settle``, ``audit
uptime``), as a child process of this one; the demo only writes their config files, waits for
what each step must produce (read back from the coordinator's database, the daemons' status
files and the ledger), and stops every child it started, also on failure and on Ctrl-C.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.demo import network
from agent.demo.live import LiveTable
from agent.demo.network import DemoDevice, Layout
from agent.demo.observe import Observer, View
from agent.demo.processes import Child, Supervisor, agent_argv
from agent.demo.steps import Steps
from agent.errors import EdgeproofError
from agent.localnet.clip import make_clip

#: What `rewards settle` says while an epoch is not final (epoch_not_final): worth a retry.
NOT_FINAL = ("cannot be settled yet", "have no final outcome yet")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Result:
    out: Path
    steps: Steps
    epoch: int | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    settlement: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    rollout: dict[str, Any] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    plot: Path | None = None
    stopped: list[dict[str, Any]] = field(default_factory=list)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "ok": all(s.status != "failed" for s in self.steps.done),
            "steps": self.steps.as_json(),
            "epoch": self.epoch,
            "devices": self.devices,
            "settlement": self.settlement,
            "audit": self.audit,
            "rollout": self.rollout,
            "mint": self.bootstrap.get("mint"),
            "report": str(self.report) if self.report else None,
            "plot": str(self.plot) if self.plot else None,
            "stopped": self.stopped,
            "claims": self.claims,
        }


class Demo:
    def __init__(self, out: Path, live: LiveTable, timing: network.Timing) -> None:
        self.layout = Layout(out)
        self.timing = timing
        self.live = live
        self.steps = Steps(on_change=live.step_changed)
        self.result = Result(out, self.steps)
        self.sup = Supervisor(self.layout.logs, cwd=out)
        self.devices = self.layout.devices()
        self.observer = Observer(self.devices, self.layout.database, timing.epoch_ms)
        self.max_epoch_wait_s = 2.5 * timing.epoch_ms / 1000
        self.stage = ""
        self.coordinator: Child | None = None
        self.daemons: dict[str, Child] = {}
        self.release_url = ""

    # ------------------------------------------------------------------ helpers

    def tick(self) -> View:
        """A fresh view, shown; a child that died fails the current step, naming it."""
        for child in self.sup.dead():
            if child.name.startswith(("coordinator", "agent-", "localnet", "fleet-serve")):
                raise EdgeproofError(
                    f"{child.name} (pid {child.pid}) exited with {child.process.returncode}: {child.tail(3)}",
                    hint=f"see {child.log_path}",
                )
        view = self.observer.view(now_ms(), stage=self.stage)
        self.live.show(view)
        return view

    def wait(self, what: str, predicate: Any, timeout_s: float, every_s: float = 1.0) -> View:
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.tick()
            if predicate(view):
                return view
            if time.monotonic() > deadline:
                raise EdgeproofError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(every_s)

    # ------------------------------------------------------------------ the steps

    def run(self) -> Result:
        try:
            self._network()
            self._rollout()
            self._challenges()
            self._settle()
            self._claims()
            self._audit()
        finally:
            self._stop()
        return self.result

    def _network(self) -> None:
        layout = self.layout
        with self.steps.step("generate clips") as note:
            self.devices[0].clip.parent.mkdir(parents=True, exist_ok=True)
            frames = [make_clip(d.clip, seconds_per_photo=1.0 + 0.5 * i) for i, d in enumerate(self.devices)]
            note["detail"] = f"{len(frames)} clips, {sum(frames)} frames"
        with self.steps.step("start mosquitto") as note:
            broker = self.sup.start_broker(layout.out / "broker")
            note["detail"] = f"{broker.host}:{broker.port}"
        self.broker_port = broker.port
        with self.steps.step("start the ledger (chain localnet)") as note:
            ledger = self.sup.spawn(
                "localnet",
                agent_argv("--log-level", "info", "chain", "localnet", "--port", "0"),
                stdout_pipe=True,
            )
            self.rpc = str(self.sup.ready_line(ledger, 60)["rpc"])
            note["detail"] = self.rpc
        coordinator = network.write_coordinator(layout, broker.port, self.timing, self.rpc)
        with self.steps.step("chain bootstrap") as note:
            self.result.bootstrap = self.sup.run(
                "chain-bootstrap",
                [
                    "chain",
                    "bootstrap",
                    "--rpc",
                    self.rpc,
                    "--key",
                    str(layout.coordinator_key),
                    "--state",
                    str(layout.bootstrap_state),
                    "--json",
                ],
            )
            self.observer.attach_ledger(self.rpc, str(self.result.bootstrap["mint"]))
            note["detail"] = (
                f"mint {self.result.bootstrap['mint']}, vault {self.result.bootstrap['vault_balance']}"
            )
        with self.steps.step("start the coordinator") as note:
            self.coordinator = self.sup.spawn(
                "coordinator",
                agent_argv(
                    "--log-level", "info", "coordinator", "run", "--config", str(layout.coordinator_config)
                ),
            )
            text = self.sup.wait_for_log(self.coordinator, "mqtt_subscribed", 90)
            note["detail"] = f"{coordinator.pubkey()} {_listening(text)}"
        with self.steps.step("enroll three devices") as note:
            groups: dict[tuple[str, ...], list[DemoDevice]] = {}
            for d in self.devices:
                groups.setdefault(d.tags, []).append(d)
            self.profile = _profile()
            for tags, members in groups.items():
                path = network.write_bindings(
                    layout.coordinator / f"bindings-{tags[0]}.jsonl", members, now_ms()
                )
                self.sup.run(
                    "coordinator-enroll",
                    [
                        "coordinator",
                        "enroll",
                        "--from",
                        str(path),
                        "--profile",
                        self.profile,
                        "--tags",
                        ",".join(tags),
                        "--config",
                        str(layout.coordinator_config),
                        "--json",
                    ],
                )
            note["detail"] = f"{len(self.devices)} devices, profile {self.profile}"
        with self.steps.step("fleet keys init") as note:
            layout.fleet.mkdir(parents=True, exist_ok=True)
            self.operator = str(
                self.sup.run(
                    "fleet-keys", ["fleet", "keys", "init", "--key", str(layout.operator_key), "--json"]
                )["operator"]
            )
            note["detail"] = f"operator {self.operator}"
        with self.steps.step("start three agents") as note:
            for d in self.devices:
                config = network.write_device(
                    d,
                    broker_port=broker.port,
                    coordinator=str(coordinator.pubkey()),
                    operator=self.operator,
                    profile=self.profile,
                    timing=self.timing,
                    rpc=self.rpc,
                    mint=str(self.result.bootstrap["mint"]),
                )
                self.daemons[d.name] = self.sup.spawn(
                    f"agent-{d.name}",
                    agent_argv("--log-level", "info", "--log-format", "json", "run", "--config", str(config)),
                )
            view = self.wait(
                "an accepted heartbeat from every device",
                lambda v: all(d.heartbeats > 0 for d in v.devices),
                120,
            )
            epoch = view.epoch if view.epoch_left_s >= self.timing.min_epoch_left_s else view.epoch + 1
            self.result.epoch = epoch
            self.observer.epoch = epoch
            self.live.note = f"settles epoch {epoch}"
            note["detail"] = f"every device heartbeating; epoch {epoch} will be settled"

    def _rollout(self) -> None:
        from agent.demo.rollout import run_rollout

        run_rollout(self)

    def _challenges(self) -> None:
        epoch = self.result.epoch
        assert epoch is not None
        with self.steps.step("challenge round") as note:
            left_s = ((epoch + 1) * self.timing.epoch_ms - now_ms()) / 1000
            view = self.wait(
                f"a passed challenge issued in epoch {epoch} for every device",
                lambda v: all(d.epoch_challenges.get("passed", 0) for d in v.devices),
                max(left_s, 0.0) + 30,
            )
            note["detail"] = f"epoch {epoch}: " + ", ".join(
                f"{d.name} " + " ".join(f"{k} {n}" for k, n in sorted(d.epoch_challenges.items()))
                for d in view.devices
            )

    def _settle(self) -> None:
        epoch = self.result.epoch
        assert epoch is not None
        with self.steps.step(f"rewards settle --epoch {epoch}") as note:
            end_ms = (epoch + 1) * self.timing.epoch_ms
            deadline = time.monotonic() + self.max_epoch_wait_s
            while now_ms() < end_ms:
                if time.monotonic() > deadline:
                    raise EdgeproofError(f"epoch {epoch} did not end within {self.max_epoch_wait_s:g} s")
                self.tick()
                time.sleep(1.0)
            last: EdgeproofError | None = None
            for _ in range(30):
                try:
                    self.result.settlement = self.sup.run(
                        "rewards-settle",
                        [
                            "rewards",
                            "settle",
                            "--epoch",
                            str(epoch),
                            "--config",
                            str(self.layout.coordinator_config),
                            "--json",
                        ],
                    )
                    break
                except EdgeproofError as exc:
                    if not any(text in exc.message for text in NOT_FINAL):
                        raise
                    last = exc  # epoch_not_final while the last challenges are scored
                    self.tick()
                    time.sleep(1.0)
            else:
                raise last or EdgeproofError("settle failed")
            note["detail"] = (
                f"root {self.result.settlement['root'][:16]}..., {self.result.settlement['total']} allocated"
            )

    def _claims(self) -> None:
        """One claim per device (``edgeproof rewards claim`` asks its daemon), then the balances."""
        settled = {str(d["dev"]): int(d["amount"]) for d in (self.result.settlement or {}).get("devices", [])}
        with self.steps.step("claim (one per device)") as note:
            for d in self.devices:
                self.result.claims[d.name] = self.sup.run(
                    f"rewards-claim-{d.name}",
                    ["rewards", "claim", "--config", str(d.config), "--wait", "60", "--json"],
                    timeout_s=90,
                )
            self.wait(
                "each owner's ledger balance to equal its settled amount",
                lambda v: all(d.balance == settled.get(d.dev, 0) for d in v.devices),
                90,
            )
            note["detail"] = ", ".join(f"{d.name}: {settled.get(d.dev, 0)}" for d in self.devices)

    def _audit(self) -> None:
        epoch = self.result.epoch
        plot = self.layout.out / "uptime.png"
        with self.steps.step("audit uptime") as note:
            self.result.audit = self.sup.run(
                "audit-uptime",
                [
                    "audit",
                    "uptime",
                    "--config",
                    str(self.layout.coordinator_config),
                    "--epoch",
                    str(epoch),
                    "--plot",
                    str(plot),
                    "--json",
                ],
            )
            self.result.plot = plot
            note["detail"] = f"plot {plot}"
        view = self.tick()
        self.result.devices = [d.as_json() for d in view.devices]
        with self.steps.step("write the report") as note:
            from agent.demo.report import write_report

            self.result.report = write_report(self.result, self.layout, self.timing)
            note["detail"] = str(self.result.report)

    def _stop(self) -> None:
        self.live.finish()
        self.observer.close()

        def record(child: Child, code: int | None) -> None:
            self.result.stopped.append({"name": child.name, "pid": child.pid, "exit_code": code})

        self.sup.stop_all(on_stop=record)


def _profile() -> str:
    from agent.inference.runtime import resolve_profile

    return resolve_profile("auto").id


def _listening(log_text: str) -> str:
    for line in log_text.splitlines():
        if "http_listening" in line and "url=" in line:
            return "dashboard " + line.split("url=", 1)[1].strip().strip('"')
    return ""
