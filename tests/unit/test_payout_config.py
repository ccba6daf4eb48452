"""``[payout]`` in the coordinator config and the desk's settings read from it (and a bootstrap file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from solders.keypair import Keypair

from agent.chain import spl
from agent.coordinator.config import PayoutSection, load_coordinator_config
from agent.errors import ConfigError
from agent.rewards.desk import desk_settings

TREASURY = Keypair.from_seed(bytes([90]) * 32)
MINT = str(Keypair.from_seed(bytes([91]) * 32).pubkey())


def test_settings_come_from_the_bootstrap_file_and_the_vault_defaults_to_the_treasury_ata(
    tmp_path: Path,
) -> None:
    state = tmp_path / "b.json"
    state.write_text(json.dumps({"treasury": str(TREASURY.pubkey()), "mint": MINT, "decimals": 6}), "utf-8")
    s = desk_settings(PayoutSection(rpc_url="http://127.0.0.1:1", bootstrap=str(state)), TREASURY)
    assert (str(s.mint), s.decimals, s.breaker_cap) == (MINT, 6, None)
    assert s.vault == spl.associated_token_address(TREASURY.pubkey(), s.mint)
    override = desk_settings(PayoutSection(bootstrap=str(state), decimals=2, breaker_cap=5), TREASURY)
    assert (override.decimals, override.breaker_cap, override.breaker_window_ms) == (2, 5, 3_600_000)


@pytest.mark.parametrize(
    ("section", "doc", "message"),
    [
        ({}, None, "[payout] needs the reward mint: set mint or bootstrap"),
        ({"mint": "not-a-key"}, None, "[payout] mint 'not-a-key' is not a base58 public key"),
        ({"mint": MINT}, None, "[payout] needs the mint's decimals: set decimals or bootstrap"),
        (
            {"mint": MINT, "decimals": 6, "memo_program": "x"},
            None,
            "[payout] memo_program 'x' is not a base58",
        ),
        ({}, {"treasury": MINT, "mint": MINT, "decimals": 6}, "is for treasury " + MINT),
        ({}, [1, 2], "is not a JSON object"),
    ],
)
def test_incomplete_or_foreign_settings_are_refused_by_name(
    tmp_path: Path, section: dict[str, object], doc: object, message: str
) -> None:
    if doc is not None:
        state = tmp_path / "b.json"
        state.write_text(json.dumps(doc), "utf-8")
        section = {**section, "bootstrap": str(state)}
    with pytest.raises(ConfigError) as info:
        desk_settings(PayoutSection.model_validate(section), TREASURY)
    assert message in info.value.message


def test_payout_keys_are_checked_and_paths_resolve_against_the_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[payout]\nrpc_url = "http://127.0.0.1:8899"\nbootstrap = "b.json"\n', encoding="utf-8")
    loaded = load_coordinator_config(config)
    assert loaded.payout.bootstrap == str(tmp_path / "b.json") and loaded.payout.reconcile_s == 5.0
    config.write_text("[payout]\nbreaker_capp = 5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_coordinator_config(config)
    assert "payout.breaker_capp: unknown key 'breaker_capp'; did you mean 'breaker_cap'?" in str(info.value)
    config.write_text("[payout]\nbreaker_cap = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="breaker_cap"):
        load_coordinator_config(config)
