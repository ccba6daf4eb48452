"""The demo's end: the frozen dashboard numbers as a short HTML page, and the final printout.

The page holds the coordinator dashboard's own document (:func:`agent.coordinator.summary.summary`)
computed at the last millisecond of the settled epoch, so its uptime and pass rates are the
numbers the settlement used; next to them the settlement, each owner's ledger balance, the
rollout and every step.  Values sit in ``data-field`` cells of ``data-dev`` rows (and ``id``
elements with ``data-value``) so a browser test reads them back.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands.audit import print_report_table
from agent.commands.output import print_table
from agent.coordinator.config import StorageSection
from agent.coordinator.read_store import open_read_store
from agent.coordinator.summary import summary
from agent.demo.network import Layout, Timing

if TYPE_CHECKING:
    from agent.demo.run import Result


def frozen_summary(layout: Layout, epoch: int, timing: Timing) -> dict[str, Any]:
    store = open_read_store(StorageSection(sqlite_path=str(layout.database)))
    try:
        with store.transaction():
            return summary(
                store,
                now_ms=(epoch + 1) * timing.epoch_ms - 1,
                slot_ms=timing.slot_ms,
                epoch_ms=timing.epoch_ms,
                online_window_ms=10_000,
            )
    finally:
        store.close()


def _cell(name: str, value: Any) -> str:
    text = "-" if value is None else str(value)
    return f'<td data-field="{name}">{html.escape(text)}</td>'


def _percent(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.0%}"


def amounts(result: Result) -> dict[str, int]:
    """dev -> settled amount of the demo's epoch."""
    settlement = result.settlement or {}
    return {str(d["dev"]): int(d["amount"]) for d in settlement.get("devices", [])}


def render(result: Result, doc: dict[str, Any]) -> str:
    settled = amounts(result)
    names = {d["dev"]: d for d in result.devices}
    rows = []
    for d in sorted(doc["devices"], key=lambda d: str(names.get(d["dev"], {}).get("name", d["dev"]))):
        mine = names.get(d["dev"], {})
        rows.append(
            f'<tr data-dev="{html.escape(d["dev"])}">'
            + _cell("name", mine.get("name"))
            + _cell("dev", d["dev"])
            + _cell("owner", d["owner"])
            + _cell("uptime", f"{d['up_slots']}/{d['counted_slots']} ({_percent(d['uptime'])})")
            + _cell("heartbeats", d["heartbeats_accepted"])
            + _cell("proofs", d["proofs_accepted"])
            + _cell("challenges", f"{d['challenges_passed']}/{d['challenges_scored']}")
            + _cell("rejections", d["rejections"])
            + _cell("version", mine.get("version"))
            + _cell("settled", settled.get(d["dev"]))
            + _cell("balance", mine.get("balance"))
            + "</tr>"
        )
    steps = "".join(
        f'<tr data-step="{html.escape(s.name)}">{_cell("status", s.status)}{_cell("step", s.name)}'
        f"{_cell('seconds', f'{s.seconds:.1f}')}{_cell('detail', s.detail)}</tr>"
        for s in result.steps.done
    )
    reasons = (
        "".join(
            f'<tr data-reason="{html.escape(r["reason"])}">{_cell("reason", r["reason"])}'
            f"{_cell('epoch', r['epoch'])}{_cell('total', r['total'])}</tr>"
            for r in doc["rejections"]
        )
        or '<tr><td colspan="3">none</td></tr>'
    )
    settlement = result.settlement or {}
    rollout = result.rollout
    epoch = doc["epoch"]
    ok = all(s.status != "failed" for s in result.steps.done)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeproof demo: epoch {epoch["epoch"]}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left;font-size:small}}</style></head>
<body data-epoch="{epoch["epoch"]}" data-ok="{str(ok).lower()}">
<h1>edgeproof demo: the whole network on one machine</h1>
<p>The coordinator dashboard's numbers for epoch <span id="epoch" data-value="{epoch["epoch"]}">{epoch["epoch"]}</span>
({epoch["start_ms"]}..{epoch["end_ms"]} ms, coordinator up {epoch["coordinator_up_slots"]} slots), frozen at its
last millisecond: <span id="registered" data-value="{doc["devices_registered"]}">{doc["devices_registered"]}</span>
devices registered, <span id="accepted" data-value="{doc["messages"]["accepted"]}">{doc["messages"]["accepted"]}</span>
messages accepted, {doc["messages"]["rejected"]} rejected; challenges passed
<span id="passed" data-value="{doc["challenges"]["passed"]}">{doc["challenges"]["passed"]}</span> of
{doc["challenges"]["scored"]} scored.</p>
<h2>Devices</h2>
<table id="devices"><tr><th>name</th><th>device</th><th>owner</th><th>uptime</th><th>heartbeats</th><th>proofs</th>
<th>challenges</th><th>rejections</th><th>model version</th><th>settled</th><th>ledger balance</th></tr>
{"".join(rows)}</table>
<h2>Settlement</h2>
<p>Root <code id="root" data-value="{html.escape(str(settlement.get("root", "")))}">{html.escape(str(settlement.get("root", "")))}</code>,
pool {settlement.get("pool", "-")}, allocated <span id="allocated" data-value="{settlement.get("total", "")}">{settlement.get("total", "-")}</span>,
reward mint <code>{html.escape(str(result.bootstrap.get("mint", "")))}</code>.</p>
<h2>Rollout</h2>
<p id="rollout" data-value="{html.escape(json.dumps(rollout.get("committed", [])))}">{html.escape(str(rollout.get("model", "")))}
{html.escape(str(rollout.get("version", "")))}, stages {html.escape(str(rollout.get("stages", "")))}%: committed on
{html.escape(", ".join(rollout.get("committed", [])) or "none")}.</p>
<h2>Rejections</h2>
<table id="rejections"><tr><th>reason</th><th>this epoch</th><th>all time</th></tr>{reasons}</table>
<h2>Uptime</h2>
<img id="plot" src="uptime.png" alt="uptime per device per slot">
<h2>Steps</h2>
<table id="steps"><tr><th>status</th><th>step</th><th>seconds</th><th>detail</th></tr>{steps}</table>
</body></html>
"""


def write_report(result: Result, layout: Layout, timing: Timing) -> Path:
    assert result.epoch is not None
    doc = frozen_summary(layout, result.epoch, timing)
    (layout.out / "summary.json").write_text(
        json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    path = layout.out / "report.html"
    path.write_text(render(result, doc), encoding="utf-8")
    return path


def print_final(result: Result) -> None:
    """Steps, the uptime audit, and each owner's settled amount and ledger balance."""
    print_table(
        "demo steps",
        ["status", "step", "seconds", "detail"],
        [(s.status, s.name, f"{s.seconds:.1f}", s.detail) for s in result.steps.done],
    )
    if result.audit is not None:
        print_report_table(result.audit)
    if result.devices:
        settled = amounts(result)
        print_table(
            "owners' token balances on the ledger (base units)",
            ["device", "owner", "settled", "balance"],
            [(d["name"], d["owner"], settled.get(d["dev"], "-"), d["balance"]) for d in result.devices],
        )
    if result.report is not None:
        print(f"report: {result.report}  plot: {result.plot}  logs: {result.out / 'logs'}")
