"""What the device says about its coordinator pin (the check itself is the shared
:func:`agent.protocol.inbound.check_inbound`: no pin trusts nobody, another key is untrusted)."""

from __future__ import annotations

from agent.protocol.inbound import PIN_HINT

UNPINNED_NOTICE = "coordinator: not pinned, every coordinator message is refused"

__all__ = ["PIN_HINT", "UNPINNED_NOTICE"]
