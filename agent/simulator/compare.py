"""Ground truth against the coordinator's uptime audit, field by field (pure).

``reports`` are audit reports as JSON (``edgeproof audit uptime --epoch E --json``, i.e.
``agent.coordinator.audit.report_json``): ``{"epoch": E, "devices": [{"dev": ..., ...}]}``.
Every simulated device must be in every simulated epoch's report with exactly the truth's
values, and the report must hold no device the simulator does not know.
"""

from __future__ import annotations

from typing import Any

#: The audit fields the truth states (everything a device's credit depends on).
FIELDS = (
    "owner",
    "profile",
    "up_slots",
    "counted_slots",
    "slots",
    "heartbeats_accepted",
    "proofs_accepted",
    "inferences_accepted",
    "rejections",
    "challenges",
    "pass_rate",
)


def _expected(device: dict[str, Any], epoch: dict[str, Any]) -> dict[str, Any]:
    return {"owner": device["owner"], "profile": device["profile"], **epoch}


def compare(truth: dict[str, Any], reports: list[dict[str, Any]]) -> list[str]:
    """Every difference, one line each (``[]`` when the audit equals the truth exactly)."""
    problems: list[str] = []
    by_epoch = {int(r["epoch"]): r for r in reports}
    for epoch in truth["epochs"]:
        report = by_epoch.get(int(epoch))
        if report is None:
            problems.append(f"epoch {epoch}: no audit report")
            continue
        audited = {d["dev"]: d for d in report["devices"]}
        known = set()
        for device in truth["devices"]:
            dev = device["dev"]
            known.add(dev)
            row = audited.get(dev)
            if row is None:
                problems.append(f"epoch {epoch}: device {dev} (#{device['index']}) is not in the audit")
                continue
            expected = _expected(device, device["epochs"][str(epoch)])
            for name in FIELDS:
                if row.get(name) != expected[name]:
                    problems.append(
                        f"epoch {epoch}: device #{device['index']} {dev[:8]} ({device['group']}) "
                        f"{name}: audit {row.get(name)!r}, truth {expected[name]!r}"
                    )
        for dev in sorted(set(audited) - known):
            problems.append(f"epoch {epoch}: the audit lists device {dev}, which the simulator did not run")
    return problems
