"""SPL transfers confirmed per second: over the localnet's JSON-RPC vs LiteSVM in-process.

    .venv/bin/python benchmarks/localnet_rpc.py [--transfers 200] [--json]

* ``in_process``: a LiteSVM in this process; each transfer is built, signed and executed with
  ``svm.send_transaction`` (the bound: the SVM itself).
* ``rpc``: a real ``python -m agent chain localnet`` subprocess on a free loopback port and
  solana-py's client through :class:`agent.chain.client.ChainClient`; each transfer is built
  on a fresh blockhash, signed, sent with preflight (so simulated, then executed) and
  confirmed by ``getSignatureStatuses``, one after another, as a claim is.

Both run the same ``TransferChecked`` + memo between two ATAs (the memo numbers the transfer,
so no two are the same transaction). The ratio is rpc / in-process from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solders.keypair import Keypair  # noqa: E402
from solders.litesvm import LiteSVM  # noqa: E402
from solders.message import Message  # noqa: E402
from solders.pubkey import Pubkey  # noqa: E402
from solders.transaction import Transaction  # noqa: E402

from agent.chain import spl  # noqa: E402
from agent.chain.client import ChainClient  # noqa: E402
from agent.chain.programs import MINT_LEN  # noqa: E402
from tests.support.localnet import Localnet  # noqa: E402

PAYER, MINT, OTHER = (Keypair.from_seed(bytes([n]) * 32) for n in (41, 42, 43))


def _setup_instructions(rent: int) -> list[object]:
    ixs: list[object] = list(
        spl.create_mint(
            payer=PAYER.pubkey(), mint=MINT.pubkey(), authority=PAYER.pubkey(), decimals=6, rent_lamports=rent
        )
    )
    for owner in (PAYER.pubkey(), OTHER.pubkey()):
        ixs.append(spl.create_ata_idempotent(payer=PAYER.pubkey(), owner=owner, mint=MINT.pubkey()))
    ixs.append(
        spl.mint_to(
            mint=MINT.pubkey(),
            destination=_ata(PAYER.pubkey()),
            authority=PAYER.pubkey(),
            amount=10**12,
            decimals=6,
        )
    )
    return ixs


def _ata(owner: Pubkey) -> Pubkey:
    return spl.associated_token_address(owner, MINT.pubkey())


def _transfer(n: int) -> list[object]:
    return [
        spl.transfer_checked(
            source=_ata(PAYER.pubkey()),
            mint=MINT.pubkey(),
            destination=_ata(OTHER.pubkey()),
            owner=PAYER.pubkey(),
            amount=1,
            decimals=6,
        ),
        spl.memo(f"bench {n}", signers=[PAYER.pubkey()]),
    ]


def in_process(count: int) -> float:
    svm = LiteSVM()
    svm.airdrop(PAYER.pubkey(), 10**12)
    setup = Transaction(
        [PAYER, MINT],
        Message(_setup_instructions(svm.minimum_balance_for_rent_exemption(MINT_LEN)), PAYER.pubkey()),
        svm.latest_blockhash(),
    )  # type: ignore[arg-type]
    svm.send_transaction(setup)
    started = time.perf_counter()
    for n in range(count):
        tx = Transaction([PAYER], Message(_transfer(n), PAYER.pubkey()), svm.latest_blockhash())  # type: ignore[arg-type]
        result = svm.send_transaction(tx)
        assert not hasattr(result, "err"), result
    return count / (time.perf_counter() - started)


def over_rpc(count: int) -> tuple[float, int]:
    net = Localnet(slot_ms=400).start()
    try:
        with ChainClient(net.url, poll_s=0.005) as client:
            client.confirm(
                client.airdrop(PAYER.pubkey(), 100 * 10**9), client.latest_blockhash().last_valid_block_height
            )
            client.send_and_confirm(_setup_instructions(client.rent_exempt_minimum(MINT_LEN)), [PAYER, MINT])  # type: ignore[arg-type]
            started = time.perf_counter()
            for n in range(count):
                client.send_and_confirm(_transfer(n), [PAYER])  # type: ignore[arg-type]
            rate = count / (time.perf_counter() - started)
            landed = client.token_amount(_ata(OTHER.pubkey())) or 0
    finally:
        net.stop()
    return rate, landed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transfers", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    direct = in_process(args.transfers)
    rpc, landed = over_rpc(args.transfers)
    assert landed == args.transfers, f"{landed} of {args.transfers} transfers arrived"
    doc = {
        "transfers": args.transfers,
        "in_process_per_s": round(direct, 1),
        "rpc_confirmed_per_s": round(rpc, 1),
        "ratio_rpc_to_in_process": round(rpc / direct, 4),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"{args.transfers} transfers: in-process {direct:.0f}/s, over JSON-RPC (send + confirm) {rpc:.0f}/s, "
            f"ratio {rpc / direct:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
