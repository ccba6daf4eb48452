"""Only the pinned coordinator key is trusted for coordinator kinds; no pin trusts nobody."""

from __future__ import annotations

from agent.errors import ProtocolError
from agent.protocol.envelope import Envelope

UNPINNED_NOTICE = "coordinator: not pinned, every coordinator message is refused"
PIN_HINT = "set coordinator.pubkey to your coordinator's base58 public key"


def check_coordinator_pin(env: Envelope, pinned: str) -> None:
    """Raise ProtocolError for a coordinator-signed envelope that the pin does not allow.

    ``unpinned_coordinator``: no key is pinned (``[coordinator] pubkey = ""``), so a device
    never trusts whoever signs; ``untrusted_coordinator``: signed by another key than the pin.
    Envelopes of other origins (device, operator) pass.
    """
    if env.origin != "coordinator":
        return
    if not pinned:
        raise ProtocolError(
            f"{env.kind} refused: no coordinator key is pinned", reason="unpinned_coordinator", hint=PIN_HINT
        )
    if env.dev != pinned:
        raise ProtocolError(
            f"{env.kind} signed by {env.dev}, not the pinned coordinator {pinned}",
            reason="untrusted_coordinator",
        )
