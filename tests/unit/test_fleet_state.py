"""The operator's state file: the version only goes up per channel, seq and head follow the chain."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from solders.keypair import Keypair

from agent.errors import FleetError
from agent.fleet.state import OperatorState, load_state, save_state
from agent.protocol.chain import ChainVerifier
from agent.protocol.envelope import GENESIS_PREV, build_envelope
from tests.support.manifests import NOW, manifest_body

OPERATOR = Keypair.from_seed(bytes([21]) * 32)
OP = str(OPERATOR.pubkey())


def sign_next(state: OperatorState, channel: str, version: int) -> OperatorState:
    env = build_envelope(
        OPERATOR,
        "manifest",
        manifest_body(channel=channel, version=version),
        seq=state.seq + 1,
        prev=state.head,
        ts=NOW + state.seq,
    )
    return state.after(env, channel, version, 0.2)


def test_versions_only_go_up_per_channel_and_reuse_and_lower_are_refused_by_name() -> None:
    state = OperatorState(operator=OP)
    assert state.next_version("stable", None) == 1
    state = sign_next(state, "stable", state.next_version("stable", 5))
    assert state.highest("stable") == 5 and state.next_version("stable", None) == 6
    assert state.next_version("beta", None) == 1  # channels are independent
    with pytest.raises(FleetError) as reused:
        state.next_version("stable", 5)
    assert reused.value.reason == "version_reused"
    assert str(reused.value).startswith(
        "refused (version_reused): version 5 on channel 'stable' was already published by this operator"
    )
    with pytest.raises(FleetError) as lower:
        state.next_version("stable", 4)
    assert lower.value.reason == "stale_version"
    assert lower.value.message == "version 4 on channel 'stable' is below the highest published version 5"


def test_seq_increments_across_channels_and_the_saved_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = load_state(path, OP)  # no file yet: a fresh chain
    assert (state.seq, state.head) == (0, GENESIS_PREV)
    heads = []
    for channel, version in (("stable", 1), ("beta", 1), ("stable", 2)):
        state = sign_next(state, channel, version)
        save_state(path, state)
        heads.append(state.head)
        state = load_state(path, OP)
    assert state.seq == 3 and state.head == heads[-1]
    assert {name: r.version for name, r in state.channels.items()} == {"stable": 2, "beta": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["format"] == "edgeproof-operator-state/1"


def test_the_envelopes_form_one_hash_chain_a_verifier_accepts() -> None:
    state, tracker = OperatorState(operator=OP), ChainVerifier.from_state(0, GENESIS_PREV)
    for version in (1, 2, 3):
        env = build_envelope(
            OPERATOR, "manifest", manifest_body(version=version), seq=state.seq + 1, prev=state.head, ts=NOW
        )
        assert tracker.observe(env).link.value == "ok"
        state = state.after(env, "stable", version, 0.2)
    assert state.seq == 3


def test_an_envelope_off_the_chain_or_by_another_key_does_not_advance_the_state() -> None:
    state = sign_next(OperatorState(operator=OP), "stable", 1)
    stale = build_envelope(OPERATOR, "manifest", manifest_body(version=2), seq=1, prev=GENESIS_PREV, ts=NOW)
    with pytest.raises(FleetError) as off_chain:
        state.after(stale, "stable", 2, 0.2)
    assert off_chain.value.reason == "operator_state"
    other = Keypair.from_seed(bytes([22]) * 32)
    foreign = build_envelope(other, "manifest", manifest_body(version=2), seq=2, prev=state.head, ts=NOW)
    with pytest.raises(FleetError, match="does not continue this state's chain"):
        state.after(foreign, "stable", 2, 0.2)


def test_a_state_file_of_another_operator_or_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, sign_next(OperatorState(operator=OP), "stable", 1))
    with pytest.raises(FleetError) as foreign:
        load_state(path, "11111111111111111111111111111111")
    assert foreign.value.reason == "operator_state"
    assert (
        foreign.value.message
        == f"operator state {path} belongs to operator {OP}, not to 11111111111111111111111111111111"
    )
    path.write_text('{"format": "something-else"}')
    with pytest.raises(FleetError, match="is not a file fleet publish wrote") as garbage:
        load_state(path, OP)
    assert garbage.value.reason == "operator_state"
