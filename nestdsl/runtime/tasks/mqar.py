"""Multi-query associative recall (MQAR, Zoology-style).

Token layout of one sequence ``S`` of ``seq_len + 1`` tokens (ids)::

    k1 v1 k2 v2 ... kP vP | 0 0 q1 a1 0 0 0 0 q2 a2 0 ... 0
    <--- P key-value pairs ---><--- query region: Q (key, answer) pairs at random
                                     2-aligned slots, the rest PAD (0) --->

* ``PAD = 0`` fills the query region; ``1`` is reserved (unused separator id).
* keys are ids ``[2, 2 + n_keys)``; values are ids ``[2 + n_keys, vocab_size)``, with
  ``n_keys = (vocab_size - 2) // 2`` (vocab 256: 127 keys, 127 values).
* keys within a sequence are distinct; values are drawn with replacement.
* queries ``q_j`` are keys of the sequence (distinct while ``Q <= P``), each followed by its
  value ``a_j``; only the answers are scored: ``loss_mask`` is true exactly at the positions
  whose target is an ``a_j`` (i.e. at the position of ``q_j`` in ``tokens``).

Needs ``seq_len + 1 >= 2 P + 2 Q``. ``Q`` defaults to ``P`` (every pair queried).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nestdsl.runtime.tasks.base import Batch, DataError, Task, make_rng, split_sequences

__all__ = ["PAD", "MQARTask", "make"]

PAD = 0
SEP = 1
_FIRST = 2


class MQARTask(Task):
    """Zoology-style multi-query associative recall (see the module docstring for the layout)."""

    name = "mqar"

    def __init__(
        self,
        *,
        seq_len: int = 128,
        batch: int = 8,
        seed: int = 0,
        num_pairs: int = 8,
        num_queries: int | None = None,
        vocab_size: int = 256,
    ) -> None:
        if vocab_size < 6:
            raise DataError(f"mqar: vocab_size must be >= 6, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.seq_len = int(seq_len)
        self.batch_size = int(batch)
        self.seed = int(seed)
        self.num_pairs = int(num_pairs)
        self.num_queries = int(num_queries) if num_queries is not None else self.num_pairs
        self.n_keys = (self.vocab_size - _FIRST) // 2
        self.n_values = self.vocab_size - _FIRST - self.n_keys
        self.key_start = _FIRST
        self.value_start = _FIRST + self.n_keys
        if self.num_pairs > self.n_keys:
            raise DataError(
                f"mqar: num_pairs={self.num_pairs} exceeds the {self.n_keys} distinct keys of "
                f"vocab {self.vocab_size}"
            )
        need = 2 * self.num_pairs + 2 * self.num_queries
        if self.seq_len + 1 < need:
            raise DataError(
                f"mqar: seq_len={self.seq_len} too short for {self.num_pairs} pairs and "
                f"{self.num_queries} queries (need seq_len >= {need - 1})"
            )

    @property
    def answer_chance(self) -> float:
        """Accuracy of a uniform guess over the values, per answer token."""
        return 1.0 / self.n_values

    def batch(self, step: int, split: str = "train") -> Batch:
        """Deterministic batch for ``(seed, step, split)``."""
        rng = make_rng(self.seed, step, split, "mqar")
        B, L, P, Q = self.batch_size, self.seq_len + 1, self.num_pairs, self.num_queries
        seqs = np.full((B, L), PAD, dtype=np.int64)
        answer = np.zeros((B, L), dtype=np.bool_)
        n_slots = (L - 2 * P) // 2
        for b in range(B):
            keys = rng.permutation(self.n_keys)[:P] + self.key_start
            values = rng.integers(0, self.n_values, size=P) + self.value_start
            seqs[b, 0 : 2 * P : 2] = keys
            seqs[b, 1 : 2 * P : 2] = values
            if Q <= P:
                which = rng.permutation(P)[:Q]
            else:
                which = rng.integers(0, P, size=Q)
            slots = np.sort(rng.permutation(n_slots)[:Q])
            pos = 2 * P + 2 * slots
            seqs[b, pos] = keys[which]
            seqs[b, pos + 1] = values[which]
            answer[b, pos + 1] = True
        return split_sequences(seqs, answer)


def make(spec: Any, *, seq_len: int | None = None, batch: int | None = None) -> MQARTask:
    """Build from an IR ``MQARData`` node, optionally overriding ``seq_len``/``batch``."""
    return MQARTask(
        seq_len=seq_len if seq_len is not None else spec.seq_len,
        batch=batch if batch is not None else spec.batch,
        seed=spec.seed,
        num_pairs=spec.num_pairs,
        num_queries=spec.num_queries,
    )
