"""The one catalogue of reason names.

Every refusal anywhere in edgeproof -- an inbound message the device or the
coordinator will not accept, a challenge it will not answer, a release it will
not install -- carries one of these names, so counters, logs, verdicts, deploy
messages and docs all speak the same words.  ``docs/protocol.md`` (section
"Reasons") lists the same table; ``tests/unit/test_protocol_reasons.py`` checks
that every reason literal in ``agent/`` is catalogued here and documented there.

A reason is a lower-case identifier (the ``Ident`` schema type), so it fits in a
``verdict`` or ``deploy`` body as is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    name: str
    #: ``message`` (one inbound envelope), ``challenge``, ``deploy`` (a release), ``local`` (state, config),
    #: ``chain`` (a Solana RPC call or transaction), ``rewards`` (an epoch's settlement),
    #: ``http`` (a request to the coordinator's dashboard), ``claim`` (a reward claim or voucher)
    scope: str
    meaning: str


_TABLE: tuple[Reason, ...] = (
    # --- one inbound message: bytes, envelope, signature, schema ---------------------------
    Reason("oversized", "message", "raw bytes or the canonical envelope exceed the kind's size bound"),
    Reason(
        "malformed", "message", "not strict JSON, wrong envelope keys or types, non-canonical keys, bad topic"
    ),
    Reason("unknown_kind", "message", "the envelope's kind is not one this protocol version knows"),
    Reason("wrong_kind", "message", "the kind does not belong on the topic it arrived on"),
    Reason("schema", "message", "the body does not match the kind's schema (unknown keys, bounds, types)"),
    Reason("bad_signature", "message", "the ed25519 signature does not verify for the envelope's signer"),
    Reason(
        "wrong_origin", "message", "the signer's role (device, coordinator, operator) may not send this kind"
    ),
    Reason("topic", "message", "the topic names another device than the envelope"),
    Reason("unknown_device", "message", "the signer is not the expected device or not a registered one"),
    Reason("wrong_device", "message", "a coordinator message is addressed to another device"),
    Reason(
        "unpinned_coordinator",
        "message",
        "no coordinator key is pinned, so no coordinator message is trusted",
    ),
    Reason(
        "untrusted_coordinator", "message", "a coordinator kind signed by a key other than the pinned one"
    ),
    # --- one signer's chain -----------------------------------------------------------------
    Reason(
        "replay",
        "message",
        "a seq at or below the highest already seen from this signer, or a nonce already answered",
    ),
    Reason("fork", "message", "same seq with another hash, or prev does not match the predecessor"),
    Reason("chain_gap", "message", "seqs are missing between two envelopes of one signer"),
    Reason("duplicate", "message", "the same envelope again (QoS 1 redelivery); harmless, not counted twice"),
    # --- beacons and challenges at the device ----------------------------------------------
    Reason(
        "beacon_from_future",
        "message",
        "a beacon's slot or time is implausibly far ahead of the device clock",
    ),
    Reason("deadline_too_far", "challenge", "a challenge deadline further ahead than the configured horizon"),
    Reason("rate_limited", "challenge", "more challenges than the token bucket allows"),
    Reason("busy", "challenge", "the challenge queue is full"),
    Reason("expired", "challenge", "the deadline (challenge) or expiry (manifest) has passed"),
    Reason("wrong_model", "challenge", "the challenge names a model that is not the active one"),
    # --- fleet manifests ---------------------------------------------------------------------
    Reason("untrusted_operator", "message", "a manifest signed by a key the device does not trust"),
    Reason("untrusted_signer", "message", "a manifest co-signed by a key the device does not trust (k-of-n)"),
    Reason(
        "duplicate_signer",
        "message",
        "a key signs a manifest twice (as its signer and a co-signer, or in two co-signatures)",
    ),
    Reason(
        "bad_cosignature",
        "message",
        "a co-signature does not verify over the manifest envelope's signed bytes",
    ),
    Reason(
        "below_threshold",
        "message",
        "a manifest carries fewer distinct trusted signatures than the device's threshold k",
    ),
    Reason("too_many_signatures", "message", "a manifest carries more co-signatures than the bound (7)"),
    Reason("wrong_channel", "message", "a manifest for another channel than the topic it arrived on"),
    Reason("stale_version", "message", "a manifest version below the one accepted on its channel"),
    Reason(
        "wrong_profile",
        "message",
        "a manifest whose tags and device ids name this device but whose profiles do not include its own",
    ),
    Reason(
        "downgrade",
        "message",
        "a manifest whose model is older than the one the device runs, without rollback: true",
    ),
    Reason("no_space", "deploy", "not enough free disk for the release"),
    # --- a release: download, verify, smoke test, trial -------------------------------------
    Reason("bad_url", "deploy", "an artifact URL or redirect that is not allowed"),
    Reason("unreachable", "deploy", "the artifact server cannot be reached"),
    Reason("cancelled", "deploy", "the download was stopped (shutdown)"),
    Reason("too_long", "deploy", "the server sent more bytes than the manifest declares"),
    Reason("hash_mismatch", "deploy", "the downloaded bytes do not hash to the manifest's sha256"),
    Reason("io_error", "deploy", "the release could not be written to disk"),
    Reason("install_failed", "deploy", "the release folder could not be installed"),
    Reason(
        "card_mismatch",
        "deploy",
        "the card's id, version, file or sha256 is not the manifest's model_id, model_version, model "
        "or model artifact sha256",
    ),
    Reason("bad_release", "deploy", "the release folder is incomplete or inconsistent"),
    Reason("load_failed", "deploy", "the release's card or model cannot be loaded"),
    Reason("output_shape", "deploy", "the model's outputs do not have the shapes its card lists"),
    Reason("not_finite", "deploy", "the model produced NaN or infinite outputs"),
    Reason("too_slow", "deploy", "the smoke-test latency is over the profile's budget"),
    Reason("inference_failed", "deploy", "the model raised during the smoke test or the trial"),
    Reason("not_installed", "deploy", "the named release is not installed"),
    Reason("not_active", "deploy", "the named release is not the active one"),
    Reason(
        "failed", "deploy", "the release failed for a reason outside the named ones (the message says why)"
    ),
    Reason(
        "internal_error",
        "deploy",
        "the updater hit a bug while preparing the release (logged with its traceback)",
    ),
    Reason("crashed_in_trial", "deploy", "the agent restarted while the release was on trial: rolled back"),
    Reason("unusable", "deploy", "the active release cannot be loaded at start: rolled back"),
    Reason("trial_failed", "deploy", "the model raised during its trial: rolled back"),
    Reason("thermal", "local", "the thermal policy lowered the inference rate"),
    # --- the daemon's local control socket (also uses ``oversized`` and ``malformed``) -----
    Reason("peer_refused", "local", "a control-socket peer whose uid is neither root nor the daemon's"),
    Reason("too_many_connections", "local", "every control-socket connection slot is in use"),
    Reason("idle_timeout", "local", "no complete control request within the read timeout"),
    Reason(
        "bad_request",
        "local",
        "a control request that is not an object with an integer id, or has unknown keys",
    ),
    Reason("unknown_op", "local", "a control request names an op the daemon does not offer"),
    Reason("unavailable", "local", "the daemon's main loop did not take the op in time, or it is stopping"),
    Reason("op_failed", "local", "a control op raised an unexpected error"),
    Reason(
        "unreadable_state",
        "local",
        "the device's state file is garbage, truncated, not SQLite or fails its integrity check (exit code 12)",
    ),
    Reason(
        "not_requeued",
        "local",
        "a salvaged envelope did not fit the outbox bound when state recover re-queued it",
    ),
    Reason(
        "too_slow_download",
        "deploy",
        "an artifact did not arrive within its deadline (declared length at the minimum rate, or the floor)",
    ),
    Reason(
        "version_reused",
        "message",
        "a manifest with the version already accepted on its channel but other content",
    ),
    Reason(
        "superseded", "deploy", "a newer manifest on the channel replaced the release before it was ready"
    ),
    # --- one inbound message at the coordinator (its own checks after check_inbound) ---------
    Reason(
        "stale_beacon",
        "message",
        "a heartbeat quotes a beacon more than the allowed number of slots older than the newest one",
    ),
    Reason(
        "unknown_beacon", "message", "a heartbeat quotes a beacon slot or nonce the coordinator never issued"
    ),
    Reason(
        "clock_skew",
        "message",
        "the envelope's ts is further ahead of the coordinator's ingest time than the configured bound",
    ),
    Reason(
        "implausible_throughput",
        "message",
        "a proof claims more inferences in its window than the device's firmware profile allows",
    ),
    Reason(
        "window_overlap", "message", "a proof's window overlaps a window already accepted from this device"
    ),
    Reason(
        "ingest_failed",
        "message",
        "the coordinator failed to judge the message (a bug, logged); recorded, never counted",
    ),
    # --- challenges scored by the coordinator (reference execution) -------------------------
    Reason(
        "unknown_challenge",
        "challenge",
        "an answer to a challenge nonce the coordinator never issued to this device",
    ),
    Reason(
        "challenge_failed",
        "challenge",
        "the answer's sketch is outside the model's tolerance of the coordinator's reference run",
    ),
    Reason(
        "challenge_late",
        "challenge",
        "the answer arrived after the challenge's deadline (a failed challenge)",
    ),
    Reason(
        "challenge_missed",
        "challenge",
        "no answer arrived by the challenge's deadline (a failed challenge)",
    ),
    Reason(
        "unknown_model",
        "challenge",
        "the coordinator does not have the challenged model: not scored, not a failure",
    ),
    Reason(
        "reference_failed",
        "challenge",
        "the coordinator could not run its reference copy of the model: not scored",
    ),
    # --- Solana RPC and transactions (agent/chain) -------------------------------------------
    Reason("rpc_unreachable", "chain", "the RPC endpoint could not be reached, timed out or kept failing"),
    Reason("rpc_error", "chain", "the RPC node answered with an error that is not about a transaction"),
    Reason("rpc_oversized", "chain", "the RPC node's answer is over 4 MiB: not read further, not parsed"),
    Reason("simulation_failed", "chain", "preflight simulation refused the transaction (err and logs kept)"),
    Reason("blockhash_not_found", "chain", "the transaction's blockhash is unknown to the node or expired"),
    Reason("already_processed", "chain", "this exact transaction (its signature) was already processed"),
    Reason("signature_failure", "chain", "a transaction signature does not verify"),
    Reason("transaction_failed", "chain", "the transaction landed but failed: fee charged, no other effect"),
    Reason(
        "blockhash_expired",
        "chain",
        "the transaction did not land before its blockhash's last valid block height; it never will",
    ),
    Reason(
        "not_confirmed", "chain", "no confirmation within the timeout while the blockhash was still valid"
    ),
    Reason("airdrop_refused", "chain", "the cluster gave no airdrop and the payer is short of SOL"),
    Reason(
        "state_mismatch",
        "chain",
        "an account on chain (mint, vault) differs from what the bootstrap state file describes",
    ),
    # --- reward settlement (agent/rewards; edgeproof rewards settle|replay|proof) ------------
    Reason("no_counted_slots", "rewards", "the device had no counted slot in the epoch: it earns nothing"),
    Reason(
        "below_min_uptime", "rewards", "the device's uptime was below the policy's min_uptime_bp: it earns 0"
    ),
    Reason(
        "epoch_not_final",
        "rewards",
        "the epoch has not ended, or a challenge issued in it has no final outcome yet: not settled",
    ),
    Reason(
        "settlement_order",
        "rewards",
        "epochs are settled in order without gaps: this one is not the next after the last settled",
    ),
    Reason(
        "settlement_conflict",
        "rewards",
        "the epoch is settled and recomputing it gives another root: the stored one stands",
    ),
    Reason("not_settled", "rewards", "the epoch has no settlement record"),
    Reason("not_in_settlement", "rewards", "the device has no leaf in the epoch's settlement"),
    # --- reward claims at the device: the voucher checks before signing (agent/device/voucher_check.py;
    # --- also malformed, blockhash_expired, replay, duplicate, busy) -----------------------------
    Reason(
        "wrong_program", "claim", "a voucher instruction runs a program other than ATA, SPL Token, the memo"
    ),
    Reason(
        "extra_instruction",
        "claim",
        "a voucher is not exactly CreateIdempotent, TransferChecked, memo (in order, those opcodes)",
    ),
    Reason("wrong_mint", "claim", "a voucher names another mint than the device's [rewards] mint"),
    Reason("wrong_decimals", "claim", "a voucher's decimals are not the device's [rewards] decimals"),
    Reason(
        "wrong_destination", "claim", "the tokens would not go to the ATA of the device's own owner_wallet"
    ),
    Reason(
        "amount_too_high",
        "claim",
        "the transfer is not the voucher's amount, or exceeds cumulative - paid, the claim or the own record",
    ),
    Reason("zero_amount", "claim", "a voucher that moves no tokens: nothing to sign"),
    Reason("extra_writable", "claim", "a writable account other than the fee payer, the vault and the ATA"),
    Reason("fee_payer_is_device", "claim", "the voucher's transaction would make the device pay the fees"),
    Reason(
        "bad_memo", "claim", "the memo is not edgeproof:claim:<id> signed by this device, or other signers"
    ),
    Reason("bad_proof", "claim", "the voucher's leaf and proof do not give its epoch's reward_root"),
    Reason("unknown_epoch", "claim", "the voucher's epoch is not the newest verified reward_root's"),
    Reason("unknown_claim", "claim", "the voucher answers no outstanding claim of this device"),
    Reason(
        "voucher_conflict",
        "claim",
        "another transaction was already signed for this claim id (never two per claim)",
    ),
    Reason(
        "voucher_mismatch",
        "claim",
        "the voucher's fields disagree with its transaction (blockhash, fee payer signature, authority)",
    ),
    Reason("stale_root", "message", "a reward_root older than the newest epoch the device keeps"),
    Reason("root_conflict", "message", "a reward_root for the kept epoch with another root"),
    Reason(
        "claims_disabled",
        "claim",
        "the device does not claim: [rewards] rpc_url or device.owner_wallet unset",
    ),
    Reason("claim_not_found", "claim", "no claim with that id on this device"),
    Reason("claim_pending", "claim", "the claim was not final when rewards claim --wait gave up"),
    Reason("not_stored", "claim", "the claim could not be stored in the outbox; nothing was sent"),
    # --- claims and vouchers, coordinator side (agent/rewards/desk.py) ---------------------
    Reason(
        "owner_mismatch",
        "claim",
        "the claim's owner is not the device's registered owner (its leaf's owner)",
    ),
    Reason(
        "nothing_claimable",
        "claim",
        "the device's cumulative earned total minus what was paid is zero (or it has no settled leaf)",
    ),
    Reason(
        "payout_paused",
        "claim",
        "the payout circuit breaker is open: no voucher is issued until its window has passed",
    ),
    Reason(
        "voucher_outstanding", "claim", "the device already has a voucher whose transaction may still land"
    ),
    Reason(
        "payout_unavailable", "claim", "the payout desk could not read the chain (RPC) to answer the claim"
    ),
    Reason("claim_id_reused", "claim", "a claim id that another device already used"),
    Reason("unknown_voucher", "claim", "a receipt for a claim id that has no voucher for this device"),
    Reason("receipt_mismatch", "claim", "a receipt naming another transaction signature than its voucher's"),
    # --- the fleet operator's own commands (edgeproof fleet ...; also card_mismatch,
    # --- stale_version and version_reused, judged on the operator's state file) ------------
    Reason("key_exists", "local", "an operator key file already exists; it is never overwritten"),
    Reason(
        "operator_state",
        "local",
        "the operator's state file belongs to another key or is not one fleet publish wrote",
    ),
    Reason(
        "signing_file",
        "local",
        "a manifest signing file (fleet publish --out, fleet sign) that is not one fleet publish wrote, "
        "or that cannot be read or written",
    ),
    # --- edgeproof broker credentials (a device's broker login) ------------------------------
    Reason("bad_device_id", "local", "a broker user name that is not a base58 ed25519 public key"),
    Reason(
        "bad_password", "local", "a broker password that is empty, over 256 bytes or has control characters"
    ),
    Reason("acl_malformed", "local", "an acl_file line that is not a user, topic or pattern line"),
    Reason("acl_not_covered", "local", "the ACL does not grant a device one of its own topics"),
    Reason(
        "acl_too_broad",
        "local",
        "the ACL lets a device write its inbound channels, the beacon or manifests, or touch another device",
    ),
    Reason("passwd_malformed", "local", "a password file line that is not user:hash"),
    Reason(
        "ca_unusable",
        "local",
        "the CA folder is incomplete, its key is readable by others, or openssl failed",
    ),
    Reason("not_writable", "local", "the password, secret or certificate file cannot be written"),
    # --- the rollout controller (edgeproof fleet rollout run|status|halt|resume) -----------
    Reason(
        "halted",
        "deploy",
        "the rollout controller halted the release's rollout before this device had it active",
    ),
    Reason(
        "timed_out",
        "deploy",
        "a device of a rollout stage neither committed nor failed within the stage timeout (a failure)",
    ),
    Reason(
        "controller_running",
        "local",
        "another rollout controller holds the operator state file (one controller per operator key)",
    ),
    Reason(
        "offline",
        "deploy",
        "timed_out, for a device whose newest status (its last will) said offline: still a failure",
    ),
    Reason(
        "not_in_stage",
        "message",
        "a deploy report from a device the rollout's stages so far do not include (not targeted, bucket above)",
    ),
    Reason("unknown_rollout", "message", "a deploy report about a release no rollout on the channel tracks"),
    Reason(
        "flooded", "message", "more reports from one device than the rollout controller's per-device rate"
    ),
    Reason("no_rollout", "local", "no rollout is recorded for the channel (fleet status, halt, resume)"),
    Reason("not_halted", "local", "fleet resume on a rollout that is not halted"),
    Reason("already_halted", "local", "fleet halt on a rollout that is halted or finished already"),
    # --- fleet serve (artifact HTTP server; also unknown_path, method_not_allowed) -----------
    Reason("path_traversal", "http", "a request path that leaves the served folder (.., symlink, absolute)"),
    Reason("bad_range", "http", "a Range header that is malformed or outside the file (answered 416)"),
    # --- the coordinator's dashboard and /metrics (HTTP; also uses ``oversized``) ------------
    Reason("unknown_path", "http", "a request for a path the dashboard does not serve"),
    Reason("method_not_allowed", "http", "a request with a method other than GET or HEAD"),
    Reason(
        "untrusted_host",
        "http",
        "a Host header that is not the listen address or a loopback name (DNS rebinding)",
    ),
    Reason("storage_unavailable", "http", "the database could not be read to answer the request"),
)

#: name -> Reason
REASONS: dict[str, Reason] = {r.name: r for r in _TABLE}
#: Reasons of the ``http_<status>`` family (an artifact server's HTTP status) are catalogued as a pattern.
HTTP_REASON_PREFIX = "http_"


def is_reason(name: str) -> bool:
    """True for a catalogued reason (or an ``http_<status>`` download failure)."""
    if name.startswith(HTTP_REASON_PREFIX):
        return name[len(HTTP_REASON_PREFIX) :].isdigit()
    return name in REASONS
