"""``edgeproof chain bootstrap``: create or adopt the reward mint, the treasury and its vault.

The treasury is the coordinator's key: fee payer, mint authority and owner of the vault (its
associated token account for the mint). The state file records the addresses; the mint's own
keypair (needed only to create the mint account) is kept next to it, mode 0600. Every step
first looks at the chain, so a second run (or a run after a crash half-way) changes nothing that
is already there and reports ``adopted``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from agent.chain import snapshot, spl
from agent.chain.client import ChainClient
from agent.chain.encoding import mint_state, token_account
from agent.chain.programs import MINT_LEN, TOKEN_ACCOUNT_LEN
from agent.errors import ChainError, ConfigError, CorruptStateError
from agent.identity import load_keypair, write_keypair

STATE_FORMAT = "edgeproof-bootstrap"
STATE_VERSION = 1
#: Lamports kept for fees on top of the two rent-exempt accounts.
FEE_MARGIN = 10_000_000


@dataclass
class BootstrapResult:
    outcome: str  # "created" (something was sent) or "adopted" (nothing changed)
    rpc: str
    treasury: str
    mint: str
    vault: str
    decimals: int
    supply: int
    vault_balance: int
    treasury_lamports: int
    state: str
    actions: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def mint_key_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.stem + ".mint-key.json")


def _load_state(state_path: Path, treasury: Pubkey) -> dict[str, Any] | None:
    doc = snapshot.load(state_path, what="bootstrap state")
    if doc is None:
        return None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or doc.get("version") != STATE_VERSION:
        raise CorruptStateError(f"{state_path}: not an edgeproof bootstrap state file")
    try:
        recorded = Pubkey.from_string(str(doc["treasury"]))
        Pubkey.from_string(str(doc["mint"]))
        int(doc["decimals"])
    except (KeyError, ValueError) as exc:
        raise CorruptStateError(f"{state_path}: unreadable bootstrap state: {exc}") from None
    if recorded != treasury:
        raise ChainError(
            f"{state_path} belongs to treasury {recorded}, not to the key given ({treasury})",
            reason="state_mismatch",
            hint="pass the treasury's own key or another --state file",
        )
    return doc


def _mint_keypair(state_path: Path, mint: Pubkey) -> Keypair | None:
    path = mint_key_path(state_path)
    if not path.exists():
        return None
    keypair = load_keypair(path)
    if keypair.pubkey() != mint:
        raise ChainError(
            f"{path} is the key of {keypair.pubkey()}, not of mint {mint}", reason="state_mismatch"
        )
    return keypair


def _discover_mint(client: ChainClient, treasury: Pubkey) -> Pubkey | None:
    """A mint already set up for this treasury: its ATA holds it and the treasury is its authority."""
    found = []
    for key in client.owned_token_accounts(treasury):
        token = token_account(client.account(key))
        if token is None or spl.associated_token_address(treasury, token.mint) != key:
            continue
        mint = mint_state(client.account(token.mint))
        if mint is not None and mint.mint_authority == treasury:
            found.append(token.mint)
    if len(found) > 1:
        raise ChainError(
            f"treasury {treasury} is the authority of {len(found)} mints with vaults; which one is meant?",
            reason="state_mismatch",
            hint="pass the --state file written when the reward mint was created",
        )
    return found[0] if found else None


def _fund(
    client: ChainClient, treasury: Pubkey, need: int, airdrop_lamports: int, actions: list[str]
) -> None:
    have = client.balance(treasury)
    if have >= need:
        return
    try:
        signature = client.airdrop(treasury, max(airdrop_lamports, need - have))
        latest = client.latest_blockhash()
        client.confirm(signature, latest.last_valid_block_height)
    except ChainError as exc:
        raise ChainError(
            f"treasury {treasury} holds {have} lamports, needs {need}, and the airdrop failed: {exc.message}",
            reason="airdrop_refused",
            hint="fund the treasury from a wallet (mainnet has no airdrop)",
        ) from None
    actions.append("airdrop")


def bootstrap(
    client: ChainClient,
    treasury: Keypair,
    *,
    state_path: Path,
    decimals: int = 6,
    supply: int,
    airdrop_lamports: int = 10_000_000_000,
) -> BootstrapResult:
    if not 0 <= decimals <= 9:
        raise ConfigError(f"--decimals must be 0..9, got {decimals}")
    if not 0 < supply < 2**64:
        raise ConfigError(f"--supply must be 1..2**64-1 base units, got {supply}")
    if airdrop_lamports < 0:
        raise ConfigError("the airdrop amount must not be negative")
    owner = treasury.pubkey()
    actions: list[str] = []
    signatures: list[str] = []
    state = _load_state(state_path, owner)
    mint_key: Keypair | None = None
    if state is not None:
        mint = Pubkey.from_string(str(state["mint"]))
        decimals = int(state["decimals"])
        mint_key = _mint_keypair(state_path, mint)
    else:
        discovered = _discover_mint(client, owner)
        if discovered is not None:
            mint = discovered
        else:
            mint_key = Keypair()
            write_keypair(mint_key_path(state_path), mint_key)
            mint = mint_key.pubkey()
        _save_state(state_path, owner, mint, decimals)
        actions.append("state")
    vault = spl.associated_token_address(owner, mint)

    existing = mint_state(client.account(mint))
    if existing is not None:
        if existing.mint_authority != owner:
            raise ChainError(
                f"mint {mint} has another authority ({existing.mint_authority})", reason="state_mismatch"
            )
        if existing.decimals != decimals:
            raise ChainError(
                f"mint {mint} has {existing.decimals} decimals, the state file says {decimals}",
                reason="state_mismatch",
            )
    elif client.account(mint) is not None:
        raise ChainError(f"account {mint} exists and is not a token mint", reason="state_mismatch")

    instructions = []
    signers = [treasury]
    need = FEE_MARGIN
    if existing is None:
        if mint_key is None:
            raise ChainError(
                f"mint {mint} is not on chain and its key file {mint_key_path(state_path)} is missing",
                reason="state_mismatch",
                hint="restore the mint key file, or move the state file away to create a new mint",
            )
        rent = client.rent_exempt_minimum(MINT_LEN)
        need += rent
        instructions += spl.create_mint(
            payer=owner, mint=mint, authority=owner, decimals=decimals, rent_lamports=rent
        )
        signers.append(mint_key)
        actions.append("mint")
    vault_account = client.account(vault)
    if token_account(vault_account) is None:
        need += client.rent_exempt_minimum(TOKEN_ACCOUNT_LEN)
        instructions.append(spl.create_ata_idempotent(payer=owner, owner=owner, mint=mint))
        actions.append("vault")
    if existing is None or existing.supply == 0:
        instructions.append(
            spl.mint_to(mint=mint, destination=vault, authority=owner, amount=supply, decimals=decimals)
        )
        actions.append("supply")
    if instructions:
        _fund(client, owner, need, airdrop_lamports, actions)
        signatures.append(str(client.send_and_confirm(instructions, signers)))

    final = mint_state(client.account(mint))
    if final is None:
        raise ChainError(f"mint {mint} is not on chain after bootstrap", reason="state_mismatch")
    return BootstrapResult(
        outcome="created" if signatures or "airdrop" in actions else "adopted",
        rpc=client.url,
        treasury=str(owner),
        mint=str(mint),
        vault=str(vault),
        decimals=final.decimals,
        supply=final.supply,
        vault_balance=client.token_amount(vault) or 0,
        treasury_lamports=client.balance(owner),
        state=str(state_path),
        actions=actions,
        signatures=signatures,
    )


def _save_state(state_path: Path, treasury: Pubkey, mint: Pubkey, decimals: int) -> None:
    doc = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "treasury": str(treasury),
        "mint": str(mint),
        "vault": str(spl.associated_token_address(treasury, mint)),
        "decimals": decimals,
    }
    snapshot.save(state_path, doc, what="bootstrap state")
