"""Copy task: a random string, a separator, then the same string again.

Token layout of one sequence ``S`` of ``seq_len + 1`` tokens (ids)::

    x1 x2 ... xL SEP x1 x2 ... xL PAD PAD ... PAD

* ``PAD = 0``, ``SEP = 1``; symbols ``x_i`` are ids ``[2, vocab_size)`` drawn uniformly.
* only the copied symbols after ``SEP`` are scored (``loss_mask`` is true at the positions
  whose target is a copied symbol).

Needs ``seq_len + 1 >= 2 L + 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nestdsl.runtime.tasks.base import Batch, DataError, Task, make_rng, split_sequences

__all__ = ["PAD", "SEP", "CopyTask", "make"]

PAD = 0
SEP = 1
_FIRST = 2


class CopyTask(Task):
    """Copy a random string of ``length`` symbols after a separator."""

    name = "copy"

    def __init__(
        self,
        *,
        seq_len: int = 128,
        batch: int = 8,
        seed: int = 0,
        length: int = 16,
        vocab_size: int = 256,
    ) -> None:
        if vocab_size < 3:
            raise DataError(f"copy: vocab_size must be >= 3, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.seq_len = int(seq_len)
        self.batch_size = int(batch)
        self.seed = int(seed)
        self.length = int(length)
        if self.seq_len + 1 < 2 * self.length + 1:
            raise DataError(
                f"copy: seq_len={self.seq_len} too short to copy length={self.length} "
                f"(need seq_len >= {2 * self.length})"
            )

    @property
    def answer_chance(self) -> float:
        """Accuracy of a uniform guess over the symbols, per answer token."""
        return 1.0 / (self.vocab_size - _FIRST)

    def batch(self, step: int, split: str = "train") -> Batch:
        """Deterministic batch for ``(seed, step, split)``."""
        rng = make_rng(self.seed, step, split, "copy")
        B, L, n = self.batch_size, self.seq_len + 1, self.length
        seqs = np.full((B, L), PAD, dtype=np.int64)
        answer = np.zeros((B, L), dtype=np.bool_)
        src = rng.integers(_FIRST, self.vocab_size, size=(B, n))
        seqs[:, :n] = src
        seqs[:, n] = SEP
        seqs[:, n + 1 : 2 * n + 1] = src
        answer[:, n + 1 : 2 * n + 1] = True
        return split_sequences(seqs, answer)


def make(spec: Any, *, seq_len: int | None = None, batch: int | None = None) -> CopyTask:
    """Build from an IR ``CopyData`` node, optionally overriding ``seq_len``/``batch``."""
    return CopyTask(
        seq_len=seq_len if seq_len is not None else spec.seq_len,
        batch=batch if batch is not None else spec.batch,
        seed=spec.seed,
        length=spec.length,
    )
