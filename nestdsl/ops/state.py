"""The state a memory carries across tokens and calls."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["MemoryState"]


class MemoryState(NamedTuple):
    """State of an associative memory, per batch element and head.

    Attributes:
        weights: the memory parameters θ in application order. Linear memory: ``(M,)`` with M of
            shape (B, H, Dv, Dk). MLP memory: ``(W_0, …, W_{n-1})``, W_0 of shape
            (B, H, hidden, Dk) multiplies the key, W_{n-1} of shape (B, H, Dv, hidden) produces the
            output. As an *input*, weights may omit the batch dimension, (H, out, in): they are
            then shared by every sequence of the batch (a meta-learned initial state).
        momentum: the momentum ("surprise") buffers S, one per weight and of the same shapes, or
            ``None`` when the rule has no momentum.
        offset: number of tokens already consumed in the current, unfinished chunk
            (``T mod chunk_size`` of the call that produced this state). A state can only be
            continued from a chunk boundary (``offset == 0``): split streams at multiples of the
            chunk size. Users constructing an initial state leave it at 0.
    """

    weights: tuple[Tensor, ...]
    momentum: tuple[Tensor, ...] | None = None
    offset: int = 0
