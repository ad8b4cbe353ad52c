"""Period classification of levels (docs/design.md §3.3): the one `classify`, used by the checker,
the schedule / level graph and the CMS lowering.

A level's period is in tokens (fires inside a sequence) or in optimizer steps. Relative to the
training data's sequence length T and tokens per optimizer step (batch × T):

- in-context:  period < T tokens and divides T (fires every C tokens, state reset per sequence);
- persistent:  period in steps, or a multiple of batch × T tokens (fires every k steps, k =
               period / (batch × T));
- outer:       the built-in `step` level (the outer pre-training level itself);
- anything else is an error: `non-dividing` (< T but does not divide T) or `between` (≥ T tokens
  but not a whole number of optimizer steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from nestdsl.spec import ir


class LevelKind(StrEnum):
    """What a level is, relative to the data (its value is how it is printed)."""

    IN_CONTEXT = "in-context"        # fires inside a sequence; its state is per sequence
    PERSISTENT = "persistent"        # fires every k optimizer steps (outer optimizer)
    OUTER = "outer"                  # the built-in `step` level
    NON_DIVIDING = "non-dividing"    # error: < seq_len tokens but does not divide it
    BETWEEN = "between"              # error: >= seq_len tokens, not a whole number of steps


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
    every_k: int | None = None  # persistent / outer: optimizer steps between firings
    tokens: int | None = None  # in-context (and non-dividing): chunk size in tokens

    @property
    def ok(self) -> bool:
        return self.kind in (LevelKind.IN_CONTEXT, LevelKind.PERSISTENT, LevelKind.OUTER)


def classify(period: ir.Period, shape: DataShape | None, *, outer: bool = False) -> LevelClass:
    """Classify a level's period against the data shape (see the module docstring). `outer`: the
    level is the built-in `step`. Without a shape (unknown data) a token period is in-context."""
    if period.unit == "steps":
        return LevelClass(LevelKind.OUTER if outer else LevelKind.PERSISTENT, every_k=period.every)
    n = period.every
    if shape is None:
        return LevelClass(LevelKind.IN_CONTEXT, tokens=n)
    if n < shape.seq_len:
        kind = LevelKind.IN_CONTEXT if shape.seq_len % n == 0 else LevelKind.NON_DIVIDING
        return LevelClass(kind, tokens=n)
    if n % shape.tokens_per_step == 0:
        return LevelClass(LevelKind.PERSISTENT, every_k=n // shape.tokens_per_step)
    return LevelClass(LevelKind.BETWEEN)


def divisors_near(n: int, seq_len: int) -> tuple[int | None, int | None]:
    """The divisors of `seq_len` just below and above `n` (for a hint); None when none."""
    divs = [d for d in range(1, seq_len) if seq_len % d == 0]
    below = max((d for d in divs if d < n), default=None)
    above = min((d for d in divs if d > n), default=None)
    return below, above
