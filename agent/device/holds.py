"""Named hold points in the model updater, for the power-loss tests (``EDGEPROOF_TEST_HOLD``).

A daemon started with ``EDGEPROOF_TEST_HOLD=<step>`` logs ``update held`` (with the step) when
the updater reaches that step and then blocks the calling thread until the process dies, so a
test can SIGKILL it at a known point between two durable writes.  Unset (always, in production)
:func:`hold` returns at once.  The variable has a single underscore after ``EDGEPROOF``, so the
config loader's ``EDGEPROOF_<SECTION>__<KEY>`` overrides never read it.

Steps (docs/operations.md, "Model updates"):

* ``download``: the first artifact is complete in ``.staging/``, the others are not fetched yet;
* ``verify``: the release folder is installed (``staged`` reported), before its card check and
  smoke test;
* ``activate``: ``active.json`` points at the release on trial, ``activated`` not yet reported;
* ``commit``: ``active.json`` says committed, ``committed`` not yet reported.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

ENV = "EDGEPROOF_TEST_HOLD"
STEPS = ("download", "verify", "activate", "commit")


def hold(step: str) -> None:
    """Block forever at ``step`` when ``EDGEPROOF_TEST_HOLD`` names it; else return at once."""
    if step not in STEPS:
        raise ValueError(f"unknown hold step {step!r} (one of {', '.join(STEPS)})")
    if os.environ.get(ENV) != step:
        return
    log.warning("update held", extra={"step": step})
    threading.Event().wait()
