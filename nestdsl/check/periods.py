"""Period classification of levels (design.md §3.3), shared by the checker and the scheduler.

A level's period is in tokens (fires inside a sequence) or in optimizer steps. Relative to the
training data's sequence length T and tokens per optimizer step (batch × T):

- in-context:  period < T tokens and divides T (fires every C tokens, state reset per sequence);
- persistent:  period in steps, or a multiple of batch × T tokens (fires every k steps, k =
               period / (batch × T));
- anything else is an error: `non_dividing` (< T but does not divide T) or `between` (≥ T tokens
  but not a whole number of optimizer steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nestdsl.spec import ir

LevelKind = Literal["in_context", "persistent", "non_dividing", "between"]


@dataclass(frozen=True)
class DataShape:
    """What the period rules depend on: sequence length and batch size (tokens per step)."""

    seq_len: int
    batch: int
    from_defaults: bool = False  # True when the spec has no `data` section

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch

    @classmethod
    def of(cls, spec: ir.Spec) -> DataShape:
        if spec.data is not None:
            return cls(spec.data.seq_len, spec.data.batch)
        # Same defaults the runtime uses when a spec has no data section (ir._Data).
        fields = ir._Data.model_fields
        return cls(int(fields["seq_len"].default), int(fields["batch"].default), from_defaults=True)

    def describe(self) -> str:
        src = " (defaults: the spec has no `data` section)" if self.from_defaults else ""
        return f"seq_len {self.seq_len}, batch {self.batch}{src}"


@dataclass(frozen=True)
class LevelClass:
    kind: LevelKind
    every_k: int | None = None  # persistent: optimizer steps between firings
    tokens: int | None = None  # in-context: chunk size in tokens

    @property
    def ok(self) -> bool:
        return self.kind in ("in_context", "persistent")


def classify(period: ir.Period, shape: DataShape) -> LevelClass:
    """Classify a CMS level's period (see the module docstring)."""
    if period.unit == "steps":
        return LevelClass("persistent", every_k=period.every)
    n = period.every
    if n < shape.seq_len:
        if shape.seq_len % n == 0:
            return LevelClass("in_context", tokens=n)
        return LevelClass("non_dividing", tokens=n)
    if n % shape.tokens_per_step == 0:
        return LevelClass("persistent", every_k=n // shape.tokens_per_step)
    return LevelClass("between")


def divisors_near(n: int, seq_len: int) -> tuple[int | None, int | None]:
    """The divisors of `seq_len` just below and above `n` (for a hint); None when none."""
    divs = [d for d in range(1, seq_len) if seq_len % d == 0]
    below = max((d for d in divs if d < n), default=None)
    above = min((d for d in divs if d > n), default=None)
    return below, above
