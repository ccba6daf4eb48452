"""deploy/prometheus: every metric, label value and job the example alert rules use is one the
coordinator and the agent really export (scraped from their own exporters), and every rule is
complete.  Without this the examples would rot silently when a metric is renamed."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest

from agent.coordinator.metrics import CHALLENGE_OUTCOMES, CoordinatorMetrics, DatabaseGauges
from agent.device.metrics import MetricsServer, Snapshot

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SCRAPE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
_NAME = re.compile(r"\b(edgeproof_[a-z0-9_]+|up)\b(?!\s*\()")


def sample_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def coordinator_names() -> set[str]:
    metrics = CoordinatorMetrics()
    metrics.inbox(lambda: 3)
    metrics.info.info({"version": "test"})
    metrics.registry.register(DatabaseGauges(lambda: (4, 5)))
    metrics.rejections.labels(reason="bad_signature").inc()
    metrics.messages.labels(kind="heartbeat", result="accepted").inc()
    return sample_names(generate_latest(metrics.registry).decode())


def device_text() -> str:
    snap = Snapshot(
        device="7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
        model_id="efficientnet-lite0-int8",
        model_sha256="ab" * 32,
        agent_version="0",
        mode="inference",
        counters={"inferences": 5, "proof_emitted": 1},
        rejected_inbound={"bad_signature": 2},
        chain_seq=7,
        outbox={
            "depth": 1,
            "bytes": 10,
            "max_bytes": 100,
            "parked": 0,
            "drops": {"heartbeat": {"overflow": 1}},
        },
        transport={"connected": True, "reconnects": 1},
    )
    server = MetricsServer(lambda: snap, "127.0.0.1", 0)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as answer:
            return str(answer.read().decode())
    finally:
        server.stop()


def expressions() -> list[str]:
    """Each rule's expr (one line, or a folded `>` block)."""
    lines = ALERTS.read_text().splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        key, _, rest = line.strip().partition(": ")
        if line.strip() == "expr: >":
            indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
            taken = []
            for ln in lines[i + 1 :]:
                if len(ln) - len(ln.lstrip()) < indent or not ln.strip():
                    break
                taken.append(ln.strip())
            assert taken, line
            out.append(" ".join(taken))
        elif key == "expr":
            out.append(rest)
    return out


def test_every_metric_in_the_rules_is_exported() -> None:
    exported = coordinator_names() | sample_names(device_text()) | {"up"}
    used = {name for expr in expressions() for name in _NAME.findall(expr)}
    assert len(used) >= 20  # the scan itself works
    assert used - exported == set(), sorted(used - exported)


def test_label_values_and_jobs_exist() -> None:
    exprs = " ".join(expressions())
    for values in re.findall(r'outcome[=!]~?"([^"]+)"', exprs):
        assert set(values.split("|")) <= set(CHALLENGE_OUTCOMES), values
    assert 'edgeproof_device_info{mode="inference"' in exprs
    assert 'mode="inference"' in device_text()
    jobs = set(re.findall(r"job_name: (\S+)", SCRAPE.read_text()))
    assert set(re.findall(r'job="([^"]+)"', exprs)) == jobs == {"edgeproof-coordinator", "edgeproof-device"}
    assert "edgeproof-alerts.yml" in SCRAPE.read_text()


def test_every_rule_is_complete() -> None:
    text = ALERTS.read_text()
    rules = re.split(r"\n\s+- alert: ", text)[1:]
    assert len(rules) == len(expressions()) >= 20
    names = [rule.split("\n", 1)[0] for rule in rules]
    assert len(set(names)) == len(names)
    for rule in rules:
        assert re.search(r"\n\s+expr: ", rule), rule
        assert re.search(r"labels: \{severity: (page|warn)\}", rule), rule
        assert re.search(r"\n\s+summary: \"", rule), rule
    assert "\t" not in text
