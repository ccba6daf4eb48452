"""The project's one exception family.

Every error a user can cause (bad config, missing model, unreadable source,
runtime not installed, ...) is an :class:`EdgeproofError`.  Libraries raise
them; only :mod:`agent.cli` turns them into a message and an exit code.
"""

from __future__ import annotations


class EdgeproofError(Exception):
    """Base class: a problem the user can understand and usually fix."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class ConfigError(EdgeproofError):
    """A config, profile or model card file is invalid."""

    exit_code = 2


class KeyFileError(EdgeproofError):
    """A key file is missing, malformed or has unsafe permissions."""

    exit_code = 3


class ModelError(EdgeproofError):
    """A model file is missing, corrupt, or does not match its card."""

    exit_code = 4


class BackendUnavailableError(EdgeproofError):
    """An inference backend or execution provider cannot be used here."""

    exit_code = 5


class SourceError(EdgeproofError):
    """An input source (camera, file, URL, folder) cannot be read."""

    exit_code = 6


class QuantizationRefusedError(EdgeproofError):
    """A quantized model did not meet its accuracy bar and was not written."""

    exit_code = 7


class ProtocolError(EdgeproofError):
    """A message is malformed, oversized, wrongly signed or out of chain."""

    exit_code = 8

    def __init__(self, message: str, *, reason: str = "malformed", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class TransportError(EdgeproofError):
    """The broker cannot be reached or refused us."""

    exit_code = 9


class StorageError(EdgeproofError):
    """Local state (outbox, database) cannot be written or read."""

    exit_code = 10


class CorruptStateError(StorageError):
    """Local state (outbox, state store) is unreadable: garbage, truncated or not ours.

    Its own exit code, listed in the systemd unit's ``RestartPreventExitStatus``, so the
    service stops instead of restarting every few seconds; ``edgeproof state recover``
    salvages what it can.
    """

    exit_code = 12


class DeployError(EdgeproofError):
    """A model release could not be downloaded, checked, smoke-tested or activated.

    ``reason`` is the named reason a device reports in its ``deploy`` message (an identifier,
    e.g. ``hash_mismatch``, ``too_long``, ``unreachable``, ``output_shape``, ``too_slow``).
    """

    exit_code = 11

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class ChainError(EdgeproofError):
    """A Solana RPC call or transaction failed: transport, the node's error, or the transaction's.

    Translated once, in :mod:`agent.chain.client`, from solana-py's and httpx's exceptions.
    ``reason`` is a catalogued name (``rpc_unreachable``, ``simulation_failed``, ``blockhash_expired``,
    ...); ``err`` is the transaction error in the RPC's JSON shape when there is one, ``logs`` the
    program logs a simulation returned.
    """

    exit_code = 15

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        hint: str | None = None,
        err: object = None,
        logs: list[str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.err = err
        self.logs = logs or []


class ChainUnavailableError(ChainError):
    """The RPC endpoint could not be reached (or kept failing) after every retry."""


class BlockhashExpiredError(ChainError):
    """A transaction's blockhash expired before it landed: it never will; build a new one."""


class SettlementError(EdgeproofError):
    """An epoch cannot be settled (or was settled with another result): nothing was written.

    ``reason`` is a catalogued name: ``epoch_not_final``, ``settlement_order``,
    ``settlement_conflict``, ``not_settled``, ``not_in_settlement``.
    """

    exit_code = 16

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class RefusedError(EdgeproofError):
    """A command refused a request for a catalogued ``reason`` (agent/protocol/reasons.py); the
    message reads ``refused (reason): ...``.  Subclasses declare their own exit code."""

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason

    def __str__(self) -> str:
        return f"refused ({self.reason}): {super().__str__()}"


class FleetError(RefusedError):
    """An operator command (``edgeproof fleet ...``) refused: ``reason`` is a catalogued name.

    E.g. ``key_exists`` (an operator key is never overwritten), ``card_mismatch`` (the card's
    ``file``/``sha256`` are not the model artifact's), ``stale_version`` / ``version_reused``
    (the operator's own record of the channel).
    """

    exit_code = 17


class BrokerCredentialsError(RefusedError):
    """``edgeproof broker credentials`` refused: ``reason`` is a catalogued name.

    E.g. ``bad_device_id`` (not a base58 ed25519 public key), ``acl_not_covered`` (the ACL does not
    grant the device its own topics), ``acl_too_broad`` (it grants more), ``passwd_malformed``.
    """

    exit_code = 19


class ClaimError(RefusedError):
    """A reward claim cannot be made or was refused (``edgeproof rewards claim``, the daemon's claimer).

    ``reason`` is a catalogued name: ``claims_disabled`` (no ``[rewards]`` rpc_url/mint or no
    ``device.owner_wallet``), ``claim_not_found``, or a voucher refusal (:class:`VoucherRefused`).
    """

    exit_code = 21


class VoucherRefused(ClaimError):
    """The agent will not sign a voucher: one of its checks failed (``reason`` names which)."""
