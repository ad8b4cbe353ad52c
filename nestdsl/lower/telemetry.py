"""Inner-loop telemetry: what every memory's test-time learning does, per log step.

A memory that diverges does so inside the forward pass, long before the outer loss shows it
(titans-lmm's state grew 0.75 → 1e16 in seven chunks). So every memory layer reports, while
`recording()` is active (the train loop turns it on at log steps only):

* ``state_norm``: ‖θ_T‖ at the end of the sequence (Frobenius over all its weights, per head,
  mean over batch and heads); ``max_state_norm``: the largest over the chunk boundaries;
* ``update_norm``: ‖θ_T − θ_0‖ (same averaging): how far the sequence moved the memory;
* ``loss_before`` / ``loss_after``: the inner objective on each chunk's (k, v) at the state before
  and after that chunk's writes, averaged over chunks and tokens: a memory that learns in context
  has after < before;
* ``lr``, ``retention``, ``momentum``: the means of the gates η, α, β.

Independently of recording, every forward leaves a cheap, sync-free probe per memory: the first
token whose output is non-finite (`NonFiniteProbe`), so a divergence can be blamed on the first
memory / layer / chunk that produced it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["recording", "active", "record", "NonFiniteProbe", "state_norm", "gate_means"]

_RECORD: list[dict[str, dict[str, Tensor]]] = []


@contextlib.contextmanager
def recording() -> Iterator[dict[str, dict[str, Tensor]]]:
    """Collect the statistics of every memory that runs inside the block: {memory: {stat: t}}.

    Values are 0-d tensors (no host sync while recording); read them after the step.
    """
    out: dict[str, dict[str, Tensor]] = {}
    _RECORD.append(out)
    try:
        yield out
    finally:
        _RECORD.pop()


def active() -> bool:
    return bool(_RECORD)


def record(name: str, stats: dict[str, Tensor | float | None]) -> None:
    """Add one memory's statistics (None values are dropped) to the active recording."""
    if not _RECORD:
        return
    clean = {k: (v.detach().float() if isinstance(v, Tensor) else torch.tensor(float(v)))
             for k, v in stats.items() if v is not None}
    _RECORD[-1][name] = clean


def state_norm(weights: Sequence[Tensor]) -> Tensor:
    """‖θ‖ per (batch, head): sqrt of the summed squared entries of every weight, (B, H)."""
    return torch.sqrt(sum(w.detach().float().pow(2).sum((-2, -1)) for w in weights))


def gate_means(**gates: Tensor | float | None) -> dict[str, Tensor | float | None]:
    """Mean of each gate (a tensor's mean, a constant as is, None dropped by `record`)."""
    return {name: (g.detach().float().mean() if isinstance(g, Tensor) else g)
            for name, g in gates.items()}


class NonFiniteProbe:
    """The first token (along dim 2 of a (B, H, T, d) output) that is non-finite, as a 0-d
    long tensor; T (the sequence length) when all are finite. No host sync."""

    def __init__(self) -> None:
        self.first_bad: Tensor | None = None
        self.length = 0

    def update(self, o: Tensor) -> None:
        with torch.no_grad():
            bad = ~torch.isfinite(o).all(-1)                    # (B, H, T)
            bad_t = bad.flatten(0, -2).any(0) if bad.dim() > 1 else bad
            T = bad_t.shape[0]
            idx = torch.arange(T, device=o.device)
            self.first_bad = torch.where(bad_t, idx, T).min()
            self.length = T

    def describe(self, chunk: int) -> str | None:
        """'token t (chunk c)' if the last forward had a non-finite output, else None (syncs)."""
        if self.first_bad is None:
            return None
        t = int(self.first_bad)
        if t >= self.length:
            return None
        return f"token {t} (chunk {t // max(chunk, 1)} of {chunk} tokens)"


def describe_stats(stats: dict[str, Any]) -> str:
    """One line for a console: 'state 3.1 (max 3.4), update 0.8, loss 0.52→0.31'."""
    parts = []
    if "state_norm" in stats:
        s = f"state {stats['state_norm']:.3g}"
        if "max_state_norm" in stats:
            s += f" (max {stats['max_state_norm']:.3g})"
        parts.append(s)
    if "update_norm" in stats:
        parts.append(f"update {stats['update_norm']:.3g}")
    if "loss_before" in stats and "loss_after" in stats:
        parts.append(f"inner loss {stats['loss_before']:.3g}→{stats['loss_after']:.3g}")
    return ", ".join(parts)
