"""Allocation: integer shares by weight, minimum uptime, cap, floor rounding; the policy's validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.coordinator.audit import DeviceEpoch, EpochReport
from agent.errors import ConfigError
from agent.rewards.allocate import allocate
from agent.rewards.policy import RewardPolicy, load_policy_file, policy_hash
from agent.rewards.settlement import settle_report


def device(
    dev: str, up: int, counted: int, inferences: int = 0, challenges: dict[str, int] | None = None
) -> DeviceEpoch:
    return DeviceEpoch(
        dev=dev,
        owner=f"owner-{dev}",
        profile="rpi4",
        up_slots=up,
        counted_slots=counted,
        excluded_slots=10 - counted,
        uptime=up / counted if counted else None,
        heartbeats_accepted=up,
        proofs_accepted=1 if inferences else 0,
        inferences_accepted=inferences,
        rejections={},
        challenges=challenges or {},
        pass_rate=None,
        slots="",
    )


def report(*devices: DeviceEpoch) -> EpochReport:
    return EpochReport(3, 1000, 10_000, 30_000, 40_000, 10, 0, tuple(sorted(devices, key=lambda d: d.dev)))


def policy(**changes: object) -> RewardPolicy:
    base: dict[str, object] = {
        "pool_per_epoch": 1_000,
        "uptime_weight_bp": 10_000,
        "work_weight_bp": 0,
        "challenge_weight_bp": 0,
        "min_uptime_bp": 5_000,
    }
    return RewardPolicy(**{**base, **changes})  # type: ignore[arg-type]


def amounts(rep: EpochReport, pol: RewardPolicy) -> dict[str, int]:
    return {a.dev: a.amount for a in allocate(rep, pol)}


def test_the_minimum_uptime_is_inclusive_and_below_it_a_device_gets_zero_with_its_reason() -> None:
    rep = report(device("a", 5, 10), device("b", 4, 10), device("c", 0, 0))
    got = {a.dev: a for a in allocate(rep, policy())}
    assert (got["a"].amount, got["a"].eligible, got["a"].reason, got["a"].uptime_bp) == (
        1_000,
        True,
        None,
        5_000,
    )
    assert (got["b"].amount, got["b"].reason, got["b"].uptime_bp) == (0, "below_min_uptime", 4_000)
    assert (got["c"].amount, got["c"].reason, got["c"].uptime_bp) == (0, "no_counted_slots", 0)


def test_weights_split_each_part_by_its_own_measure() -> None:
    rep = report(
        device("a", 10, 10, inferences=300, challenges={"passed": 1, "challenge_failed": 1}),
        device("b", 5, 10, inferences=100, challenges={"passed": 2}),
    )
    pol = policy(
        pool_per_epoch=12_000, uptime_weight_bp=5_000, work_weight_bp=2_500, challenge_weight_bp=2_500
    )
    # uptime 6000 by 10:5 -> 4000/2000; work 3000 by 300:100 -> 2250/750; challenges 3000 by 5000:10000 bp.
    assert amounts(rep, pol) == {"a": 4_000 + 2_250 + 1_000, "b": 2_000 + 750 + 2_000}
    got = {a.dev: a.pass_bp for a in allocate(rep, pol)}
    assert got == {"a": 5_000, "b": 10_000}


def test_amounts_are_floored_and_the_remainder_stays_in_the_pool() -> None:
    rep = report(device("a", 1, 1), device("b", 1, 1), device("c", 1, 1))
    got = amounts(rep, policy(pool_per_epoch=100))
    assert got == {"a": 33, "b": 33, "c": 33} and sum(got.values()) == 99
    settled = settle_report(rep, policy(pool_per_epoch=100), {})
    assert (settled.total, settled.pool, settled.as_json()["unallocated"]) == (99, 100, 1)


def test_the_cap_cuts_a_share_and_the_excess_is_not_redistributed() -> None:
    rep = report(device("a", 9, 10), device("b", 1, 2))
    # exact shares of 1000 by 9:1 up slots: 900 and 100; the cap of 600 cuts a only.
    got = {a.dev: a for a in allocate(rep, policy(device_cap=600))}
    assert (got["a"].amount, got["a"].capped, got["b"].amount, got["b"].capped) == (600, True, 100, False)


def test_unscored_challenges_get_the_policy_pass_rate_and_unknown_model_is_not_scored() -> None:
    rep = report(
        device("a", 1, 1, challenges={"unknown_model": 2, "open": 1}),
        device("b", 1, 1, challenges={"passed": 1}),
    )
    pol = policy(uptime_weight_bp=0, challenge_weight_bp=10_000)
    assert amounts(rep, pol) == {"a": 0, "b": 1_000}
    assert amounts(rep, pol.model_copy(update={"unscored_pass_bp": 10_000})) == {"a": 500, "b": 500}


def test_a_measure_nobody_has_stays_in_the_pool_zero_pool_and_no_devices() -> None:
    rep = report(device("a", 2, 2), device("b", 2, 2))
    assert amounts(rep, policy(uptime_weight_bp=5_000, work_weight_bp=5_000)) == {"a": 250, "b": 250}
    assert amounts(rep, policy(pool_per_epoch=0)) == {"a": 0, "b": 0}
    assert allocate(report(), policy()) == ()
    empty = settle_report(report(), policy(), {})
    assert (empty.total, empty.leaves, empty.root) == (
        0,
        (),
        "2fa2682fdd73cf16c0a1a896a2380c14b4dc0ade3db105abd0dcb045314ba4ca",
    )


def test_cumulative_adds_the_previous_total_and_the_result_is_deterministic() -> None:
    rep = report(device("b", 1, 1), device("a", 3, 3))
    first = settle_report(rep, policy(), {"a": 10, "z": 99})
    again = settle_report(report(device("a", 3, 3), device("b", 1, 1)), policy(), {"z": 99, "a": 10})
    assert first == again
    assert [(leaf.dev, leaf.amount, leaf.cumulative) for leaf in first.leaves] == [
        ("a", 750, 760),
        ("b", 250, 250),
    ]


def test_the_policy_refuses_bad_weights_unknown_keys_and_floats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must be 10000 \(is 9000\)"):
        policy(uptime_weight_bp=9_000)
    file = tmp_path / "coordinator.toml"
    file.write_text(
        "[storage]\nsqlite_path = 'x'\n[rewards]\npool_per_epoch = 5\npool_per_epok = 6\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as unknown:
        load_policy_file(file)
    assert str(unknown.value).splitlines()[0] == (
        f"{file}:5: rewards.pool_per_epok: unknown key 'pool_per_epok'; did you mean 'pool_per_epoch'?"
    )
    file.write_text("[rewards]\npool_per_epoch = 5.5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rewards\.pool_per_epoch"):
        load_policy_file(file)
    file.write_text("[rewards]\npool_per_epoch = 5\n", encoding="utf-8")
    loaded = load_policy_file(file)
    assert loaded.pool_per_epoch == 5 and loaded.device_cap is None
    assert policy_hash(loaded) == policy_hash(RewardPolicy(pool_per_epoch=5)) != policy_hash(RewardPolicy())
