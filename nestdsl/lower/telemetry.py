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
* ``lr``, ``retention``, ``momentum``: the means of the gates η, α, β;
* ``write_size``: ‖θ_{c+1} − θ_c‖ / ‖θ_c‖, one chunk's writes relative to the state they
  change, mean over chunks (chunks from a zero state skipped); ``state_growth``: ‖θ_T‖ / ‖θ_1‖,
  the end state against the state after the first chunk;
* ``branch_share`` (residual memories, x + M̃(x)): ‖M(q) − q‖ / ‖M(q)‖, how much of the read is
  the memory's own branch rather than the query passed through.

`nestdsl probe` (runtime/probe.py) turns these, with a needle/haystack perturbation, into a
verdict per memory layer.

Independently of recording, every forward leaves a cheap, sync-free probe per memory: the first
token whose output is non-finite (`NonFiniteProbe`), so a divergence can be blamed on the first
memory / layer / chunk that produced it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TypedDict, cast

import torch
from torch import Tensor

__all__ = ["recording", "active", "record", "MemoryStats", "NonFiniteProbe", "state_norm",
           "gate_means", "write_size", "mean_finite", "branch_share"]


class MemoryStats(TypedDict, total=False):
    """One memory's statistics as a layer hands them to `record` (the module docstring defines
    them); a memory reports the ones it has, and None values are dropped."""

    state_norm: Tensor                   # ‖θ_T‖, mean over (batch, head), 0-d
    max_state_norm: Tensor               # the largest ‖θ‖ at a chunk boundary, 0-d
    update_norm: Tensor                  # ‖θ_T − θ_0‖, 0-d
    loss_before: Tensor                  # inner loss on each chunk's (k, v) before its writes, 0-d
    loss_after: Tensor                   # … and after them, 0-d
    lr: Tensor | float | None            # mean of η (a constant as is; None: no gate)
    retention: Tensor | float | None     # mean of α
    momentum: Tensor | float | None      # mean of β
    write_size: Tensor | None            # ‖θ_{c+1} − θ_c‖ / ‖θ_c‖, chunk mean (None: none finite)
    state_growth: Tensor                 # ‖θ_T‖ / ‖θ_1‖, 0-d
    branch_share: Tensor | None          # residual memories: ‖M(q) − q‖ / ‖M(q)‖, 0-d

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


def record(name: str, stats: MemoryStats) -> None:
    """Add one memory's statistics (None values are dropped) to the active recording."""
    if not _RECORD:
        return
    values = cast("Mapping[str, Tensor | float | None]", stats)   # every key's value type
    clean = {k: (v.detach().float() if isinstance(v, Tensor) else torch.tensor(float(v)))
             for k, v in values.items() if v is not None}
    _RECORD[-1][name] = clean


def state_norm(weights: Sequence[Tensor]) -> Tensor:
    """‖θ‖ per (batch, head): sqrt of the summed squared entries of every weight, (B, H)."""
    return torch.sqrt(cast(Tensor, sum(w.detach().float().pow(2).sum((-2, -1)) for w in weights)))


def write_size(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    """‖θ_after − θ_before‖ / ‖θ_before‖, mean over (batch, head); NaN from a zero state."""
    b = [w.expand_as(a) for w, a in zip(before, after, strict=True)]
    moved = state_norm([x - y for x, y in zip(after, b, strict=True)])
    base = state_norm(b)
    return torch.where(base > 0, moved / base.clamp_min(1e-30), torch.nan).mean()


def mean_finite(values: Sequence[Tensor]) -> Tensor | None:
    """The mean of the finite entries (None if there are none)."""
    t = torch.stack(list(values)).float()
    ok = torch.isfinite(t)
    return t[ok].mean() if bool(ok.any()) else None


def branch_share(o: Tensor, q: Tensor) -> Tensor:
    """‖o − q‖ / ‖o‖ per token (last dim), mean: the memory branch's share of a residual read."""
    o, q = o.detach().float(), q.detach().float()
    return ((o - q).norm(dim=-1) / o.norm(dim=-1).clamp_min(1e-12)).mean()


def gate_means(*, lr: Tensor | float | None, retention: Tensor | float | None,
               momentum: Tensor | float | None) -> MemoryStats:
    """Mean of each gate η, α, β (a tensor's mean, a constant as is, None dropped by `record`)."""
    def mean(g: Tensor | float | None) -> Tensor | float | None:
        return g.detach().float().mean() if isinstance(g, Tensor) else g

    return {"lr": mean(lr), "retention": mean(retention), "momentum": mean(momentum)}


class NonFiniteProbe:
    """The first token (along dim 2 of a (B, H, T, d) output) that is non-finite, as a 0-d
    long tensor; T (the sequence length) when all are finite. No host sync."""

    def __init__(self) -> None:
        self.first_bad: Tensor | None = None
        self.length = 0

    def update(self, o: Tensor) -> None:
        with torch.no_grad():
            bad_t = (~torch.isfinite(o).all(-1)).flatten(0, 1).any(0)   # (B, H, T) → (T,)
            T = bad_t.shape[0]
            idx = torch.arange(T, device=o.device)
            self.first_bad = torch.where(bad_t, idx, T).min()
            self.length = T
