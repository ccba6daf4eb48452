"""The reward policy: the coordinator config's ``[rewards]`` table, and its hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from agent.coordinator.config import RewardsSection
from agent.validation import parse_mapping, read_toml

#: The policy model (defined beside the other coordinator config sections).
RewardPolicy = RewardsSection

BASIS = 10_000


def policy_hash(policy: RewardPolicy) -> str:
    """SHA-256 hex of the policy as canonical JSON (sorted keys, no spaces; a missing cap is null)."""
    text = json.dumps(policy.model_dump(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"edgeproof/v1:reward-policy:" + text.encode()).hexdigest()


def load_policy_file(path: Path | str) -> RewardPolicy:
    """The ``[rewards]`` table of a TOML file (a coordinator config or a file with only that table).

    Other tables are ignored; unknown keys inside ``[rewards]`` are refused (ConfigError).
    """
    file = Path(path)
    data, text = read_toml(file)
    table = data.get("rewards", {})
    return parse_mapping(RewardPolicy, table, origin=str(file), source=text, prefix=("rewards",))
