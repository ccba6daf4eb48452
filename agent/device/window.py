"""One work window: commitments, aggregates and latency, closed into a proof body."""

from __future__ import annotations

from collections import Counter

import numpy as np

from agent import __version__
from agent.device.commitments import CommitmentHasher, Commitments
from agent.inference.pipeline import LatencyStats
from agent.protocol.leaf import LeafHash, default_leaf_hash
from agent.protocol.messages import MAX_SUMMARY_LABELS, Health, Latency, Proof

OTHER_LABEL = "other"


class WorkWindow:
    def __init__(
        self,
        start_ms: int,
        model_id: str,
        model_sha256: str,
        hasher: CommitmentHasher,
        leaf_hash: LeafHash | None = None,
    ) -> None:
        self.start_ms = start_ms
        self.model_id = model_id
        self.model_sha256 = model_sha256
        self.hasher = hasher
        self.commitments = Commitments(leaf_hash or default_leaf_hash())
        self.latency = LatencyStats()
        self.counts: Counter[str] = Counter()
        self._inferences = 0

    @property
    def inferences(self) -> int:
        return self._inferences

    def add(self, resized: np.ndarray, outputs: list[np.ndarray], latency_us: int, labels: list[str]) -> None:
        """Record one inference; its commitments are hashed by the hasher's thread."""
        self.hasher.submit(self.commitments, resized, outputs)
        self._inferences += 1
        self.latency.add(latency_us)
        self.counts.update(labels)

    def summary(self) -> dict[str, int]:
        """Counts per label; beyond the schema's label bound the rest fold into "other"."""
        common = self.counts.most_common()
        if len(common) <= MAX_SUMMARY_LABELS:
            return {_label(k): v for k, v in common}
        head = common[: MAX_SUMMARY_LABELS - 1]
        rest = sum(v for _, v in common[MAX_SUMMARY_LABELS - 1 :])
        result = {_label(k): v for k, v in head}
        result[OTHER_LABEL] = result.get(OTHER_LABEL, 0) + rest
        return result

    def close(self, end_ms: int, health: Health) -> Proof:
        self.hasher.wait()
        if self.commitments.count != self._inferences:  # pragma: no cover - a bug, not an input
            raise RuntimeError(f"{self._inferences} inferences but {self.commitments.count} commitments")
        p = self.latency.summary()
        return Proof(
            window_start_ms=self.start_ms,
            window_end_ms=max(end_ms, self.start_ms + 1),
            model_id=self.model_id,
            model_sha256=self.model_sha256,
            inferences=self.inferences,
            leaf_hash=self.commitments.leaf_hash,
            input_root=self.commitments.inputs.root_hex(),
            output_root=self.commitments.outputs.root_hex(),
            summary=self.summary(),
            latency_us=Latency(p50=p["p50"], p95=p["p95"], p99=p["p99"]),
            health=health,
            agent_version=__version__,
        )


def _label(label: str) -> str:
    """Labels are bounded in the schema; keep them short and printable."""
    clean = "".join(ch for ch in label if ch.isprintable())[:32].strip()
    return clean or "unlabelled"
