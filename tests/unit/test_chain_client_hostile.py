"""The chain client against a hostile JSON-RPC endpoint on loopback: each misbehaviour becomes one
ChainError with a named reason (never an untranslated solders or httpx exception, never a hang)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.chain.client import MAX_ANSWER_BYTES, ChainClient
from agent.errors import ChainError, ChainUnavailableError
from tests.support.hostile_rpc import HostileRpc


@pytest.fixture
def hostile() -> Iterator[HostileRpc]:
    server = HostileRpc("garbage", stall_s=5.0, oversized_bytes=MAX_ANSWER_BYTES + 65536).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("mode", "reason", "error"),
    [
        ("garbage", "rpc_error", ChainError),
        ("oversized", "rpc_oversized", ChainError),
        ("oversized_unsized", "rpc_oversized", ChainError),
        ("stall", "rpc_unreachable", ChainUnavailableError),
    ],
)
def test_each_hostile_answer_is_one_named_chain_error(
    hostile: HostileRpc, mode: str, reason: str, error: type[ChainError]
) -> None:
    hostile.mode = mode
    with (
        ChainClient(hostile.url, timeout_s=0.3, retries=1, backoff_s=0.05) as client,
        pytest.raises(ChainError) as info,
    ):
        client.block_height()
    assert type(info.value) is error
    assert info.value.reason == reason
    assert info.value.exit_code == 15
    # A stall is retried (with backoff) once before it is called unreachable; the others are not.
    assert hostile.hits[mode] == (2 if mode == "stall" else 1)
