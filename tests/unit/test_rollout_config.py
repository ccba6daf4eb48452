"""``[rollout]`` in the coordinator config: the controller `coordinator run` starts on a thread."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.coordinator.config import load_coordinator_config
from agent.errors import ConfigError


def test_no_section_means_no_controller_and_paths_resolve_against_the_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("", encoding="utf-8")
    assert load_coordinator_config(config).rollout.channel == ""
    config.write_text('[rollout]\nchannel = "stable"\nkey = "ops/op.json"\nstate = "ops/s.json"\n', "utf-8")
    section = load_coordinator_config(config).rollout
    assert (section.key, section.state) == (str(tmp_path / "ops/op.json"), str(tmp_path / "ops/s.json"))
    assert (section.stage_timeout_s, section.tick_s, section.abort_failure_rate) == (1800, 1.0, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[rollout]\nchannel = "stable"\n',
            "c.toml:1: rollout: channel 'stable' needs key and state (the operator key that signs)",
        ),
        (
            '[rollout]\nchannel = "stable"\nkey = "k.json"\n',
            "c.toml:1: rollout: channel 'stable' needs state (the operator key that signs)",
        ),
        (
            '[rollout]\nchanel = "stable"\n',
            "c.toml:2: rollout.chanel: unknown key 'chanel'; did you mean 'channel'?",
        ),
        (
            '[rollout]\nchannel = "Stable!"\nkey = "k"\nstate = "s"\n',
            "c.toml:2: rollout.channel: String should match",
        ),
        (
            "[rollout]\nabort_failure_rate = 0.0\n",
            "c.toml:2: rollout.abort_failure_rate: Input should be greater than 0",
        ),
        (
            "[rollout]\nstage_timeout_s = 0\n",
            "c.toml:2: rollout.stage_timeout_s: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_wrong_section_is_refused_by_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_coordinator_config(config)
    assert message in str(info.value), str(info.value)
