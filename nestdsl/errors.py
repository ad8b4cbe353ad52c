"""nestdsl's own exception types, below the checker (ops, runtime) as well as above it.

`NestdslError` is the root: `except NestdslError` catches whatever nestdsl raises on purpose,
and no bug. A subclass that replaces a builtin also subclasses it (`ShapeError` is a
`ValueError`), so code and tests that catch the builtin keep working. A spec's problems are
`nestdsl.diagnostics.SpecError` (positioned diagnostics, `nestdsl/codes.py`), a checkpoint's
`nestdsl.runtime.checkpoint.CheckpointError`; both are `NestdslError`s.

`user_error = True` marks bad input (the CLI prints the message and exits 2); the others are a
caller's mistake in Python (exit 1, an internal error, when they reach the CLI).

Nothing here imports torch.
"""

from __future__ import annotations

__all__ = ["ArgumentError", "NestdslError", "ShapeError"]


class NestdslError(Exception):
    """Raised on purpose by nestdsl (not a bug in it)."""

    user_error: bool = False


class ShapeError(NestdslError, ValueError):
    """Tensors whose shapes do not fit the operation or each other (e.g. `memory_scan`'s q, k, v,
    or a state's weights for another head count)."""


class ArgumentError(NestdslError, ValueError):
    """An argument value a function does not accept (an unknown rule name, a chunk size of 0,
    a state that the other arguments cannot continue)."""
