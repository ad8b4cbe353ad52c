"""Common pieces of the task generators: the error type, seeding, the batch type and scoring.

Every task is a deterministic function of ``(seed, step, split)``: the batch for step ``s`` is
drawn from a fresh generator seeded from those three values (and a per-task salt), so a resumed
run sees exactly the data an uninterrupted run would have seen, without replaying the stream
(the *data position* is simply the step).

Next-token convention: a task first builds a sequence ``S`` of ``seq_len + 1`` tokens per row,
then ``tokens = S[:, :-1]`` and ``targets = S[:, 1:]``, so ``targets[:, t]`` is the token to
predict after reading ``tokens[:, : t + 1]``. ``loss_mask[:, t]`` says whether position ``t``
counts in the loss (every position for text; only answer positions for recall tasks).
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "Batch",
    "DataError",
    "Task",
    "accuracy",
    "exact_match",
    "make_rng",
    "scored_positions",
    "split_sequences",
]


class DataError(Exception):
    """A data problem the user can fix (missing/empty/unreadable path, too-short text, ...).

    The message is a single line meant to be shown as is, without a traceback.
    """


class Batch(NamedTuple):
    """One batch: ``tokens``/``targets`` are int64 ``(B, T)``, ``loss_mask`` is bool ``(B, T)``."""

    tokens: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor


_U64 = 2**64


def make_rng(seed: int, step: int, split: str, salt: str) -> np.random.Generator:
    """A numpy generator seeded from ``(seed, step, split, salt)`` only (stable across runs).

    ``seed`` may be any int (negative seeds are mapped modulo 2**64); ``split`` and ``salt`` are
    hashed with CRC32 so different splits and different tasks draw independent streams.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    entropy = [
        int(seed) % _U64,
        int(step),
        zlib.crc32(split.encode("utf-8")),
        zlib.crc32(salt.encode("utf-8")),
    ]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def scored_positions(targets: torch.Tensor, mask: torch.Tensor | None) -> int:
    """Positions the loss counts (mask set, target != -100), as `masked_cross_entropy` does."""
    valid = targets != -100
    if mask is not None:
        valid = valid & mask.to(torch.bool)
    return int(valid.sum())


def split_sequences(seqs: np.ndarray, answer: np.ndarray | None = None) -> Batch:
    """Turn ``(B, T+1)`` sequences (and an optional ``(B, T+1)`` answer mask over them) into a batch.

    ``answer[b, i]`` marks sequence position ``i`` as an answer token; it becomes
    ``loss_mask[b, i - 1]`` (the position whose *target* is that token). Without ``answer``
    every position counts.
    """
    full = torch.from_numpy(np.ascontiguousarray(seqs, dtype=np.int64))
    tokens = full[:, :-1].contiguous()
    targets = full[:, 1:].contiguous()
    if answer is None:
        mask = torch.ones_like(targets, dtype=torch.bool)
    else:
        mask = torch.from_numpy(np.ascontiguousarray(answer[:, 1:], dtype=np.bool_))
    return Batch(tokens, targets, mask)


def _predictions(logits_or_predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = logits_or_predictions
    if x.dim() == targets.dim() + 1:
        return x.argmax(dim=-1)
    if x.shape != targets.shape:
        raise ValueError(
            f"predictions of shape {tuple(x.shape)} do not match targets {tuple(targets.shape)}"
        )
    if x.is_floating_point():
        raise ValueError("predictions must be integer token ids, or logits with a vocab axis")
    return x


def exact_match(
    logits_or_predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-sample exact match ``(B,)`` bool: every masked (answer) position predicted right.

    ``logits_or_predictions`` is either logits ``(B, T, V)`` (argmax is taken) or token ids
    ``(B, T)``. A sample with no answer positions counts as a match (vacuously true); use
    :func:`accuracy`, which leaves such samples out.
    """
    pred = _predictions(logits_or_predictions, targets).to(targets.device)
    wrong = (pred != targets) & mask.to(torch.bool)
    return ~wrong.any(dim=-1)


def accuracy(
    logits_or_predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> float:
    """Fraction of samples (with at least one answer position) whose answers are all exact."""
    mask = mask.to(torch.bool)
    scored = mask.any(dim=-1)
    if not bool(scored.any()):
        raise ValueError("no answer positions in mask: nothing to score")
    ok = exact_match(logits_or_predictions, targets, mask)
    return float(ok[scored].float().mean().item())


class Task(ABC):
    """Base class of the task generators.

    Subclasses set ``vocab_size``, ``seq_len``, ``batch_size`` and ``seed`` and implement
    :meth:`batch`. ``name`` is the IR ``task`` string.
    """

    name: str = "task"
    vocab_size: int
    seq_len: int
    batch_size: int
    seed: int

    @abstractmethod
    def batch(self, step: int, split: str = "train") -> Batch:
        """The batch for optimizer step ``step`` of ``split`` (a pure function of seed/step/split)."""

    def rank_batch(self, step: int, rank: int, world: int, split: str = "train") -> tuple[Batch, int]:
        """Rank ``rank``'s rows of the global batch of ``step`` (contiguous, ``batch / world``
        of them) and the number of scored positions in the whole global batch (the loss weight
        of data parallelism needs it). This default builds the global batch and slices it; a
        task that can read only its rows (token shards) overrides it."""
        full = self.batch(step, split)
        n_global = scored_positions(full.targets, full.loss_mask)
        if world == 1:
            return full, n_global
        return Batch(*(t.chunk(world)[rank] for t in full)), n_global

    def accuracy(
        self, logits_or_predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> float:
        """Exact-match accuracy per sample over the answer positions (see :func:`accuracy`)."""
        return accuracy(logits_or_predictions, targets, mask)

    @property
    def tokens_per_batch(self) -> int:
        """Input tokens in one batch (``batch_size * seq_len``), for throughput reporting."""
        return self.batch_size * self.seq_len

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, seq_len={self.seq_len}, "
            f"batch={self.batch_size}, seed={self.seed})"
        )
