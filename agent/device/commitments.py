"""Per-inference commitments of one work window, hashed off the inference thread.

A work proof commits to every inference with two Merkle roots: one over the
input items and one over the output items.  What an item is (which bytes, which
digest, named in the proof as ``leaf_hash``) is a wire fact defined in
:mod:`agent.protocol.leaf`; this module is the device's machinery that computes
them without slowing inference down.  BLAKE3 is ~3.8x cheaper than SHA-256 here
even with SHA-NI (docs/decisions/0008).

The inference thread only hands references to :class:`CommitmentHasher`; one
worker thread hashes them in submission order (both hashers release the GIL on
large buffers) and appends the leaves to the window's :class:`Commitments`.
Hand-offs are batched to keep lock and wake-up traffic off the hot path;
:meth:`CommitmentHasher.wait` makes every submitted leaf visible before a
window is closed.

Arrays handed over must not be mutated afterwards: both backends return fresh
output arrays per run and the preprocessor allocates a new resized image.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from agent.protocol.leaf import LeafHash, digest_arrays, hasher
from agent.protocol.merkle import MerkleBuilder

DEFAULT_BATCH = 16


@dataclass
class Commitments:
    """The two Merkle trees of one work window, and the tensor digest their leaves use."""

    leaf_hash: LeafHash = "sha256"
    inputs: MerkleBuilder = field(default_factory=MerkleBuilder)
    outputs: MerkleBuilder = field(default_factory=MerkleBuilder)

    def __post_init__(self) -> None:
        self._new = hasher(self.leaf_hash)  # resolved once, not per inference

    def add(self, resized: np.ndarray, outputs: list[np.ndarray]) -> None:
        self.inputs.add(digest_arrays(self._new, (resized,)))
        self.outputs.add(digest_arrays(self._new, outputs))

    @property
    def count(self) -> int:
        return self.inputs.count


_Item = tuple[Commitments, np.ndarray, list[np.ndarray]]


class CommitmentHasher:
    """One background thread that folds (input, outputs) pairs into Commitments, in order."""

    def __init__(self, batch: int = DEFAULT_BATCH) -> None:
        self.batch = max(1, batch)
        self._local: list[_Item] = []  # owned by the submitting thread
        self._queue: deque[list[_Item]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, target: Commitments, resized: np.ndarray, outputs: list[np.ndarray]) -> None:
        """Queue one inference's commitment; call from one thread only."""
        self._local.append((target, resized, outputs))
        if len(self._local) >= self.batch:
            self._hand_off()

    def wait(self) -> None:
        """Block until everything submitted so far is folded into its Commitments."""
        self._hand_off()
        with self._cond:
            while (self._queue or self._busy) and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise RuntimeError("commitment hashing failed") from self._error

    def close(self) -> None:
        self.wait()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _hand_off(self) -> None:
        if not self._local:
            return
        batch, self._local = self._local, []
        with self._cond:
            if self._closed:
                raise RuntimeError("CommitmentHasher is closed")
            self._queue.append(batch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="commitments", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._queue.popleft()
                self._busy = True
            try:
                for target, resized, outputs in batch:
                    target.add(resized, outputs)
            except BaseException as exc:  # surfaced to the submitter by wait()
                with self._cond:
                    self._error = exc
                    self._busy = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False
                self._cond.notify_all()
