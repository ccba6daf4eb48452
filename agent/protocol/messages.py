"""Body schemas: one strict, bounded pydantic model per message kind.

Privacy guarantee (a property of these schemas, tested in
``tests/unit/test_protocol_messages.py``): no field of any message a device
sends can carry raw frames, crops, embeddings or per-frame outputs.  Every
string is short and has a restricted alphabet or a fixed format (hex digests,
base58 keys, identifiers), every list and mapping has a small maximum length,
every number is a bounded integer, there are no free-form blobs (no bytes, no
base64 fields in device messages), unknown keys are refused, and each kind has
an encoded-size bound enforced on the whole envelope (see
:data:`agent.protocol.kinds.MAX_BYTES`).  A work proof carries only
*commitments* (Merkle roots over tensor digests) and *aggregates* (counts,
latency percentiles, health).

All quantities are integers in fixed units: ms (timestamps), µs (latency),
basis points (1/100 of a percent: 0..10000), milli-°C, token base units.
Strict mode means ``true`` is not accepted where an integer is expected and
``1`` is not accepted where a boolean is expected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator
from solders.pubkey import Pubkey
from solders.signature import Signature

from agent.validation import Strict

# --- field types ---------------------------------------------------------------------------------

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
#: Largest integer exactly representable in an IEEE double (JavaScript safe integer).
SAFE_MAX = 2**53 - 1

Hex64 = Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
Hex32 = Annotated[str, StringConstraints(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]
#: Lower-case identifier: model ids, reasons, channels, profiles.
Ident = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Version = Annotated[
    str, StringConstraints(min_length=1, max_length=32, pattern=r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")
]
#: A class label in a summary: 1..32 characters, no control characters.
Label = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[^\x00-\x1f\x7f]{1,32}$")]
Ms = Annotated[int, Field(ge=0, le=SAFE_MAX)]
U32 = Annotated[int, Field(ge=0, le=U32_MAX)]
U64 = Annotated[int, Field(ge=0, le=U64_MAX)]
BasisPoints = Annotated[int, Field(ge=0, le=10_000)]
#: A sketch component: |v| <= 2**53 - 1.
SketchInt = Annotated[int, Field(ge=-SAFE_MAX, le=SAFE_MAX)]


def _check_pubkey(value: str) -> str:
    try:
        key = Pubkey.from_string(value)
    except ValueError as exc:
        raise ValueError(f"not a base58 public key: {exc}") from exc
    if str(key) != value:
        raise ValueError("public key is not in canonical base58 form")
    return value


def _check_signature(value: str) -> str:
    try:
        sig = Signature.from_string(value)
    except ValueError as exc:
        raise ValueError(f"not a base58 signature: {exc}") from exc
    if str(sig) != value:
        raise ValueError("signature is not in canonical base58 form")
    return value


#: A base58 ed25519 public key (32 bytes), in canonical form (32..44 characters).
PubkeyB58 = Annotated[str, StringConstraints(min_length=32, max_length=44), AfterValidator(_check_pubkey)]
#: A base58 ed25519 signature (64 bytes), canonical form (64..88 characters).
SignatureB58 = Annotated[
    str, StringConstraints(min_length=64, max_length=88), AfterValidator(_check_signature)
]
#: A base58 32-byte hash (e.g. a Solana blockhash).
HashB58 = PubkeyB58
#: Base64 (standard alphabet, padded) of a Solana transaction (packet limit 1232 bytes -> 1644 chars).
TxBase64 = Annotated[str, StringConstraints(min_length=4, max_length=1644, pattern=r"^[A-Za-z0-9+/]+={0,2}$")]

# --- shared parts --------------------------------------------------------------------------------


class Health(Strict):
    """Device health at the time of the message (converted to integers by the daemon)."""

    cpu_bp: BasisPoints
    mem_bp: BasisPoints
    #: CPU temperature in milli-°C, when the platform exposes it.
    temp_mc: Annotated[int, Field(ge=-55_000, le=150_000)] | None = None
    #: The SoC reports thermal/under-voltage throttling.
    throttled: bool = False
    #: The agent itself lowered its inference rate (thermal policy).
    rate_limited: bool = False
    #: Why the rate was lowered, e.g. ``"thermal"``; set iff ``rate_limited``.
    throttle_reason: Ident | None = None

    @model_validator(mode="after")
    def _reason_iff_limited(self) -> Health:
        if self.rate_limited != (self.throttle_reason is not None):
            raise ValueError("throttle_reason must be set exactly when rate_limited is true")
        return self


class Latency(Strict):
    """Inference latency percentiles over a window, in µs (p50 <= p95 <= p99)."""

    p50: U32
    p95: U32
    p99: U32

    @model_validator(mode="after")
    def _ordered(self) -> Latency:
        if not self.p50 <= self.p95 <= self.p99:
            raise ValueError(
                f"percentiles must satisfy p50 <= p95 <= p99 (got {self.p50}, {self.p95}, {self.p99})"
            )
        return self


# --- bodies --------------------------------------------------------------------------------------

MAX_SUMMARY_LABELS = 32
MAX_WINDOW_MS = 86_400_000
SKETCH_SIZE = 32


class Beacon(Strict):
    """coordinator -> all (retained): the current slot and its random nonce."""

    slot: Ms
    nonce: Hex64
    #: Coordinator wall clock when the slot started (ms since the Unix epoch).
    time_ms: Ms
    #: Slot length in ms.
    slot_ms: Annotated[int, Field(ge=1_000, le=3_600_000)]


class Heartbeat(Strict):
    """device -> coordinator: I am online and saw this beacon."""

    beacon_slot: Ms
    beacon_nonce: Hex64
    uptime_s: U32
    health: Health


class Proof(Strict):
    """device -> coordinator: work proof for one window (commitments and aggregates only)."""

    window_start_ms: Ms
    window_end_ms: Ms
    model_id: Ident
    model_sha256: Hex64
    inferences: U32
    #: The 32-byte tensor digest the Merkle items are made with: BLAKE3 or SHA-256.
    leaf_hash: Literal["blake3", "sha256"]
    #: Merkle root (RFC 6962) over the ``leaf_hash`` digest of each input (resized uint8 image).
    input_root: Hex64
    #: Merkle root (RFC 6962) over the ``leaf_hash`` digest of each inference's output tensors.
    output_root: Hex64
    #: Aggregate counts per class label over the window (at most 32 labels).
    summary: Annotated[dict[Label, U32], Field(max_length=MAX_SUMMARY_LABELS)]
    latency_us: Latency
    health: Health
    agent_version: Version

    @model_validator(mode="after")
    def _window(self) -> Proof:
        length = self.window_end_ms - self.window_start_ms
        if length <= 0:
            raise ValueError("window_end_ms must be after window_start_ms")
        if length > MAX_WINDOW_MS:
            raise ValueError(f"window longer than {MAX_WINDOW_MS} ms")
        return self


class Challenge(Strict):
    """coordinator -> device: run the model on the synthetic input of ``nonce`` before the deadline."""

    #: The challenged device (a challenge for another device is refused).
    device: PubkeyB58
    nonce: Hex64
    model_sha256: Hex64
    deadline_ms: Ms


class ChallengeResponse(Strict):
    """device -> coordinator: the output sketch for a challenge."""

    nonce: Hex64
    model_sha256: Hex64
    sketch: Annotated[list[SketchInt], Field(min_length=SKETCH_SIZE, max_length=SKETCH_SIZE)]
    latency_us: U32


class Verdict(Strict):
    """coordinator -> device: a message was accepted or rejected, with a named reason."""

    device: PubkeyB58
    ref_kind: Ident
    ref_seq: U64
    ref_hash: Hex64
    accepted: bool
    #: Named reason (e.g. ``bad_signature``, ``replay``, ``chain_gap``, ``stale_beacon``,
    #: ``implausible_throughput``, ``challenge_failed``, ``unknown_device``); required when rejected.
    reason: Ident | None = None
    detail: Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None

    @model_validator(mode="after")
    def _reason(self) -> Verdict:
        if not self.accepted and self.reason is None:
            raise ValueError("a rejection needs a reason")
        return self


class Claim(Strict):
    """device -> coordinator: pay my claimable rewards to ``owner``."""

    claim_id: Hex32
    #: The owner's wallet (the tokens go to its associated token account).
    owner: PubkeyB58
    #: Token base units; ``None`` = everything claimable.
    amount: U64 | None = None


class ProofStep(Strict):
    """One step of a reward-leaf inclusion proof (docs/rewards.md): the sibling hash, and whether
    it is the left operand."""

    sibling: Hex64
    left: bool


class Voucher(Strict):
    """coordinator -> device: a partially signed claim transaction for the device to check and sign.

    ``epoch``, ``epoch_amount`` and ``cumulative`` are the device's leaf in that epoch's settlement
    (the newest settled one), ``proof`` its inclusion proof against the root published in the
    ``reward_root`` of that epoch; ``paid`` is what the coordinator has recorded as paid to this
    device before this voucher.  ``amount`` is ``cumulative - paid`` (or the claim's smaller
    ``amount``): the agent checks it against its own record before it signs.
    """

    device: PubkeyB58
    claim_id: Hex32
    owner: PubkeyB58
    mint: PubkeyB58
    amount: U64
    decimals: Annotated[int, Field(ge=0, le=18)]
    transaction: TxBase64
    blockhash: HashB58
    last_valid_block_height: U64
    epoch: U64
    epoch_amount: U64
    cumulative: U64
    paid: U64
    #: At most 24 steps: a tree of up to 2**24 leaves (devices).
    proof: Annotated[list[ProofStep], Field(max_length=24)]


class RewardRoot(Strict):
    """coordinator (retained, sideband): an epoch's settlement, committed as a Merkle root.

    One retained slot holds the newest settled epoch; a device keeps the newest it has seen
    (``epoch`` only goes up; the same epoch with another root is refused).  Not chained: it is
    signed by the coordinator key but may come from ``edgeproof rewards settle``, a process other
    than the coordinator service that writes the coordinator chain.
    """

    epoch: U64
    root: Hex64
    #: Number of leaves (devices with an allocation row in the epoch).
    devices: U32
    pool: U64
    total: U64
    policy_hash: Hex64
    settled_ms: Ms


class Receipt(Strict):
    """device -> coordinator: what happened to a voucher's transaction."""

    claim_id: Hex32
    signature: SignatureB58 | None = None
    status: Literal["submitted", "confirmed", "failed", "refused"]
    slot: U64 | None = None
    #: Named reason for ``failed``/``refused`` (e.g. ``wrong_mint``, ``blockhash_expired``).
    reason: Ident | None = None


class Status(Strict):
    """device (retained, also the MQTT last will): online/offline, active model, agent version.

    A status envelope does not advance the hash chain (see docs/protocol.md).
    """

    state: Literal["online", "offline"]
    model_id: Ident | None = None
    model_sha256: Hex64 | None = None
    agent_version: Version
    profile: Ident | None = None


DeployState = Literal[
    "received",
    "rejected",
    "downloading",
    "staged",
    "smoke_test",
    "activated",
    "committed",
    "rolled_back",
    "failed",
]


class Deploy(Strict):
    """device -> operator: rollout state of one model manifest on this device."""

    channel: Ident
    manifest_version: U64
    model_id: Ident
    model_sha256: Hex64
    state: DeployState
    #: Named reason for ``rejected``/``failed``/``rolled_back`` (e.g. ``expired``, ``hash_mismatch``).
    reason: Ident | None = None
    #: Download progress in basis points.
    progress_bp: BasisPoints | None = None


#: A file name inside a manifest: no directories, no leading dot.
ArtifactName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
]
#: An http(s) URL of printable ASCII (percent-encode anything else), at most 256 characters.
ArtifactUrl = Annotated[str, StringConstraints(min_length=8, max_length=256, pattern=r"^https?://[!-~]+$")]
MAX_ARTIFACT_BYTES = 2**32
MAX_ARTIFACTS = 3
MAX_TARGET_PROFILES = 8
MAX_TARGET_TAGS = 8
MAX_TARGET_DEVICES = 16
MAX_STAGES = 8


class Artifact(Strict):
    """One file a manifest installs: where to fetch it and what it must hash to."""

    name: ArtifactName
    url: ArtifactUrl
    sha256: Hex64
    length: Annotated[int, Field(ge=1, le=MAX_ARTIFACT_BYTES)]


class Targets(Strict):
    """Which devices a manifest is for; an empty list does not restrict (all three must match)."""

    #: Firmware profile ids (``rpi4``, ``jetson-orin``, ...).
    profiles: Annotated[list[Ident], Field(max_length=MAX_TARGET_PROFILES)] = Field(default_factory=list)
    #: Device tags from the device's config; a device matches with any one of them.
    tags: Annotated[list[Ident], Field(max_length=MAX_TARGET_TAGS)] = Field(default_factory=list)
    #: Device ids (base58 public keys).
    devices: Annotated[list[PubkeyB58], Field(max_length=MAX_TARGET_DEVICES)] = Field(default_factory=list)


class Manifest(Strict):
    """operator -> devices (retained per channel): a signed, hardware-targeted model release.

    ``version`` only goes up per channel (a device refuses a lower one: no rollback by replay);
    ``expires_ms`` bounds how long a captured manifest can be replayed (a freeze attack);
    ``stages`` is the rollout plan in basis points of the targeted devices and ``stage`` the
    current step: a device takes part when its rollout bucket is below ``stages[stage]``.
    Advancing a stage is a new manifest (higher ``version``) with the same artifacts.
    """

    channel: Ident
    version: Annotated[int, Field(ge=1, le=SAFE_MAX)]
    model_id: Ident
    model_version: Version
    #: The artifact that is the model file, and the one that is its card (TOML).
    model: ArtifactName
    card: ArtifactName
    artifacts: Annotated[list[Artifact], Field(min_length=2, max_length=MAX_ARTIFACTS)]
    targets: Targets = Field(default_factory=Targets)
    expires_ms: Ms
    stages: Annotated[
        list[Annotated[int, Field(ge=1, le=10_000)]], Field(min_length=1, max_length=MAX_STAGES)
    ]
    stage: Annotated[int, Field(ge=0, le=MAX_STAGES - 1)]
    #: The rollout of this release is halted: a device that has not started it does not start,
    #: one that is downloading or preparing it stops (``failed``, reason ``halted``), one that
    #: runs it committed keeps it.  Absent (never ``false``) otherwise, so older bodies are unchanged.
    halted: Literal[True] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [a.name for a in self.artifacts]
        if len(set(names)) != len(names):
            raise ValueError(f"artifact names must be unique (got {', '.join(names)})")
        for role in ("model", "card"):
            if getattr(self, role) not in names:
                raise ValueError(f"{role} {getattr(self, role)!r} is not one of the artifacts")
        if self.model == self.card:
            raise ValueError("model and card must be different artifacts")
        if any(b <= a for a, b in zip(self.stages, self.stages[1:], strict=False)):
            raise ValueError(f"stages must increase (got {self.stages})")
        if self.stages[-1] != 10_000:
            raise ValueError("the last stage must be 10000 (every targeted device)")
        if self.stage >= len(self.stages):
            raise ValueError(f"stage {self.stage} is not an index into {len(self.stages)} stages")
        return self

    @property
    def model_sha256(self) -> str:
        return next(a.sha256 for a in self.artifacts if a.name == self.model)

    @property
    def rollout_bp(self) -> int:
        return self.stages[self.stage]

    @property
    def total_bytes(self) -> int:
        return sum(a.length for a in self.artifacts)


# --- registry ------------------------------------------------------------------------------------

Body = (
    Beacon
    | Heartbeat
    | Proof
    | Challenge
    | ChallengeResponse
    | Verdict
    | Claim
    | Voucher
    | RewardRoot
    | Receipt
    | Status
    | Deploy
    | Manifest
)


def body_to_dict(body: Strict) -> dict[str, Any]:
    """The JSON form of a body: ``None`` fields are omitted (absent == null)."""
    return body.model_dump(mode="python", exclude_none=True)
