"""One snapshot of the demo network, read from where each fact lives.

* the coordinator's database (read-only): messages accepted/rejected per device, heartbeats,
  challenge outcomes, the devices' ``deploy`` reports, settlements;
* each daemon's ``status.json``: the model and version it runs, whether it is on trial;
* the ledger: each owner's token balance (its associated token account for the reward mint).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solders.pubkey import Pubkey

from agent.chain.client import ChainClient
from agent.chain.spl import associated_token_address
from agent.coordinator.config import StorageSection
from agent.coordinator.read_store import open_read_store
from agent.demo.network import DemoDevice
from agent.device.status import read_status
from agent.errors import EdgeproofError


@dataclass
class DeviceView:
    name: str
    dev: str
    owner: str
    model: str = ""
    version: str = ""
    trial: bool = False
    running: bool = False
    heartbeats: int = 0
    accepted: int = 0
    rejected: int = 0
    challenges: Counter[str] = field(default_factory=Counter)
    #: Outcomes of the challenges issued in the epoch the demo settles (``Observer.epoch``).
    epoch_challenges: Counter[str] = field(default_factory=Counter)
    deploys: list[tuple[str, int]] = field(default_factory=list)  # (state, manifest version) in order
    balance: int | None = None

    def committed(self, min_manifest: int, version: str) -> bool:
        """The device reported ``committed`` for a manifest >= ``min_manifest`` and runs ``version``, off trial."""
        reported = any(state == "committed" and mv >= min_manifest for state, mv in self.deploys)
        return reported and self.version == version and not self.trial

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dev": self.dev,
            "owner": self.owner,
            "model": self.model,
            "version": self.version,
            "trial": self.trial,
            "heartbeats": self.heartbeats,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "challenges": dict(sorted(self.challenges.items())),
            "epoch_challenges": dict(sorted(self.epoch_challenges.items())),
            "deploys": [list(d) for d in self.deploys],
            "balance": self.balance,
        }


@dataclass
class View:
    now_ms: int
    devices: list[DeviceView]
    epoch_ms: int
    stage: str = ""
    balances_known: bool = False

    @property
    def epoch(self) -> int:
        return self.now_ms // self.epoch_ms

    @property
    def epoch_left_s(self) -> float:
        return ((self.epoch + 1) * self.epoch_ms - self.now_ms) / 1000


def _deploy_body(raw: Any) -> tuple[str, int] | None:
    try:
        data = json.loads(bytes(raw))
        body = data["body"]
        return str(body["state"]), int(body["manifest_version"])
    except (ValueError, KeyError, TypeError):
        return None


class Observer:
    """Reads the network; every source may be absent early on (nothing is known yet, not an error)."""

    def __init__(self, devices: list[DemoDevice], database: Path, epoch_ms: int) -> None:
        self.devices = devices
        self.epoch_ms = epoch_ms
        self.database = database
        self.chain: ChainClient | None = None
        self.mint: Pubkey | None = None
        #: The epoch the demo settles, once chosen.
        self.epoch: int | None = None

    def attach_ledger(self, rpc: str, mint: str) -> None:
        self.chain = ChainClient(rpc, timeout_s=5.0, retries=1)
        self.mint = Pubkey.from_string(mint)

    def close(self) -> None:
        if self.chain is not None:
            self.chain.close()
            self.chain = None

    def balance(self, owner: str) -> int | None:
        if self.chain is None or self.mint is None:
            return None
        amount = self.chain.token_amount(associated_token_address(Pubkey.from_string(owner), self.mint))
        return amount or 0

    def view(self, now_ms: int, *, stage: str = "") -> View:
        views = {d.dev: DeviceView(d.name, d.dev, d.owner) for d in self.devices}
        for device in self.devices:
            self._read_status(device, views[device.dev])
        if self.database.is_file():
            self._read_database(views)
        known = False
        if self.chain is not None:
            try:
                for v in views.values():
                    v.balance = self.balance(v.owner)
                known = True
            except EdgeproofError:
                known = False  # the ledger is busy or gone: show the last line without balances
        return View(now_ms, list(views.values()), self.epoch_ms, stage, known)

    @staticmethod
    def _read_status(device: DemoDevice, view: DeviceView) -> None:
        try:
            status = read_status(device.state_dir) or {}
        except EdgeproofError:
            return
        model = status.get("model") or {}
        view.model = str(model.get("id", ""))
        view.version = str(model.get("version", ""))
        view.trial = bool(model.get("trial", False))
        view.running = bool(status.get("running", False))

    def _read_database(self, views: dict[str, DeviceView]) -> None:
        try:
            store = open_read_store(StorageSection(sqlite_path=str(self.database)))
        except EdgeproofError:
            return  # not created or not migrated yet
        try:
            with store.transaction():
                rows = store.rows(
                    "SELECT dev, kind, accepted, COUNT(*) FROM messages GROUP BY dev, kind, accepted"
                )
                challenge_rows = store.rows(
                    "SELECT dev, outcome, COUNT(*) FROM challenges GROUP BY dev, outcome"
                )
                start = (self.epoch or 0) * self.epoch_ms
                epoch_rows = store.rows(
                    "SELECT dev, outcome, COUNT(*) FROM challenges WHERE issued_ms >= ? AND issued_ms < ? "
                    "GROUP BY dev, outcome",
                    (start, start + self.epoch_ms),
                )
                deploy_rows = store.rows(
                    "SELECT dev, raw FROM messages WHERE kind = 'deploy' AND accepted = 1 ORDER BY id"
                )
        finally:
            store.close()
        for dev, kind, accepted, count in rows:
            view = views.get(str(dev))
            if view is None:
                continue
            if int(accepted):
                view.accepted += int(count)
                if kind == "heartbeat":
                    view.heartbeats += int(count)
            else:
                view.rejected += int(count)
        for dev, outcome, count in challenge_rows:
            if str(dev) in views:
                views[str(dev)].challenges[str(outcome or "open")] += int(count)
        for dev, outcome, count in epoch_rows if self.epoch is not None else []:
            if str(dev) in views:
                views[str(dev)].epoch_challenges[str(outcome or "open")] += int(count)
        for dev, raw in deploy_rows:
            body = _deploy_body(raw)
            if body is not None and str(dev) in views:
                views[str(dev)].deploys.append(body)
