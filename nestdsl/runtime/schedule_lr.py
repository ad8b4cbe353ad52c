"""Learning-rate schedules as pure functions of the step (so resuming needs no scheduler state).

``step`` is the 0-based index of the optimizer step about to be taken. With ``warmup = W`` the
factor rises linearly ``(step + 1) / W`` over steps ``0 .. W-1`` (the first step is not zero),
then follows the schedule over the remaining ``total_steps - W`` steps, from 1 down to
``min_ratio``:

* ``constant``: 1
* ``cosine``: ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2``
* ``linear``: ``1 - (1 - min_ratio) * p``

where ``p = (step - W) / (total_steps - W)`` clipped to ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["SCHEDULES", "apply_lr", "lr_at", "lr_factor", "make_schedule"]

SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(
    step: int,
    *,
    total_steps: int,
    schedule: str = "cosine",
    warmup: int = 0,
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at ``step`` (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r} (expected one of {SCHEDULES})")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup < 0 or step < 0:
        raise ValueError("warmup and step must be >= 0")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = min(1.0, max(0.0, (step - warmup) / max(1, total_steps - warmup)))
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    return 1.0 - (1.0 - min_ratio) * p


def lr_at(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    schedule: str = "cosine",
    warmup: int = 0,
    min_ratio: float = 0.0,
) -> float:
    """The learning rate at ``step``: ``base_lr * lr_factor(...)``."""
    return base_lr * lr_factor(
        step, total_steps=total_steps, schedule=schedule, warmup=warmup, min_ratio=min_ratio
    )


def make_schedule(train: Any, *, min_ratio: float = 0.0) -> Callable[[int], float]:
    """``step -> factor`` from an IR ``Train`` node (``steps``, ``schedule``, ``warmup``)."""

    def factor(step: int) -> float:
        return lr_factor(
            step,
            total_steps=train.steps,
            schedule=train.schedule,
            warmup=train.warmup,
            min_ratio=min_ratio,
        )

    return factor


def apply_lr(optimizer: Any, factor: float) -> list[float]:
    """Set every param group's ``lr`` to its ``initial_lr`` times ``factor``; returns the lrs.

    ``initial_lr`` is recorded from the group's ``lr`` the first time (as torch's schedulers
    do); it lives in the optimizer state dict, so it is checkpointed with it.
    """
    out = []
    for group in optimizer.param_groups:
        base = group.setdefault("initial_lr", group["lr"])
        group["lr"] = base * factor
        out.append(group["lr"])
    return out
