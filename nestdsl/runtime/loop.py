"""The training loop's small collaborators (`runtime/train.py` composes them).

- `Ranks`: the collectives the loop needs (agreement, min, mean), trivial in one process;
- `Throughput`: tokens/s measured from the end of the first step (which compiles and warms);
- `LogWindow`: the loss average of the current log window and the run's history (both are
  loop state: checkpointed, so a resumed run logs the same numbers);
- `DivergenceGuard`: the first non-finite step and the memory that went bad first, recorded
  without a host sync per step, and the error that names them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from nestdsl.runtime.resume import LoopState


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    def all_ok(self, ok: bool) -> bool:
        """Whether every rank is ok (one collective; trivially `ok` in one process)."""
        if self.world == 1:
            return ok
        import torch.distributed as dist

        flag = torch.tensor(1 if ok else 0, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def any_(self, flag: bool) -> bool:
        """Whether any rank's `flag` is set (one collective; `flag` itself in one process)."""
        return flag if self.world == 1 else not self.all_ok(not flag)

    def min_(self, value: torch.Tensor) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(value, op=dist.ReduceOp.MIN)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(value)
            value /= self.world
        return value


@dataclass
class Throughput:
    """Tokens/s since this process's first step ended (over the first step alone until there
    is more): that step compiles, allocates and warms caches, and would dominate a short run."""

    t_start: float = field(default_factory=time.perf_counter)
    tokens_seen: int = 0
    t_warm: float | None = None
    tokens_warm: int = 0
    first_step_s: float = math.nan

    def step_done(self, tokens: int, device: str) -> bool:
        """Count a step's tokens; True after the first step (the moment compilation ends)."""
        self.tokens_seen += tokens
        if self.t_warm is not None:
            return False
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)    # once: the first step's kernels end here
        self.t_warm = time.perf_counter()
        self.tokens_warm, self.first_step_s = self.tokens_seen, self.t_warm - self.t_start
        return True

    def rate(self, now: float) -> float:
        if self.t_warm is not None and self.tokens_seen > self.tokens_warm and now > self.t_warm:
            return (self.tokens_seen - self.tokens_warm) / (now - self.t_warm)
        return self.tokens_seen / max(now - self.t_start, 1e-9)


class LogWindow:
    """The summed loss of the steps since the last log (a device tensor: no sync per step)."""

    def __init__(self, state: LoopState) -> None:
        self.history = state.history
        self.loss_acc, self.n_acc = state.loss_acc, state.n_acc
        self.first_loss = self.history[0]["loss"] if self.history else math.nan
        self.last_loss = self.history[-1]["loss"] if self.history else math.nan

    def add(self, loss: torch.Tensor) -> None:
        self.loss_acc = self.loss_acc + loss.detach().float()
        self.n_acc += 1

    def close(self, ranks: Ranks) -> float:
        """The window's mean loss over all ranks; the next window starts empty."""
        mean_loss = float(ranks.mean(self.loss_acc.clone())) / max(self.n_acc, 1)
        self.loss_acc = torch.zeros((), device=self.loss_acc.device)
        self.n_acc = 0
        if math.isnan(self.first_loss):
            self.first_loss = mean_loss
        self.last_loss = mean_loss
        return mean_loss

    def state(self, step: int) -> LoopState:
        return LoopState(step, self.history, self.loss_acc, self.n_acc)


class DivergenceGuard:
    """Every memory layer leaves a sync-free probe (first non-finite token of its output) per
    forward; at the first non-finite step they are snapshotted, so the error names the memory."""

    def __init__(self, model: torch.nn.Module, total_steps: int, device: str) -> None:
        from nestdsl.lower import telemetry

        self.probes = [(name, m) for name, m in model.named_modules()
                       if isinstance(getattr(m, "probe", None), telemetry.NonFiniteProbe)]
        self.snapshot: torch.Tensor | None = None
        self.no_bad = total_steps + 1  # "no non-finite step yet" (a min-reduction sentinel)
        self.bad_step = torch.full((), self.no_bad, dtype=torch.long, device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Record the first non-finite step (and where the memories first went non-finite)
        without a host sync."""
        first_bad = ~torch.isfinite(loss.detach()) & (self.bad_step == self.no_bad)
        if self.probes and all(m.probe.first_bad is not None for _, m in self.probes):
            snap = torch.stack([m.probe.first_bad for _, m in self.probes])
            if self.snapshot is None:
                self.snapshot = torch.full_like(snap, -1)
            self.snapshot = torch.where(first_bad, snap, self.snapshot)
        self.bad_step = torch.where(first_bad, torch.tensor(step, device=self.bad_step.device),
                                    self.bad_step)

    def check(self, ranks: Ranks, error: Callable[[int, str | None, str], Exception]) -> None:
        """Agree across ranks on the first bad step (a host sync: log/checkpoint steps only) and
        raise `error(step, memory or None, culprit text)` if there was one."""
        ranks.min_(self.bad_step)
        bad = int(self.bad_step)
        if bad != self.no_bad:
            raise error(bad, _bad_memory(self.probes, self.snapshot),
                        _culprit(self.probes, self.snapshot))


def _culprit(probes: list[tuple[str, Any]], snapshot: torch.Tensor | None) -> str:
    """', first non-finite in memory M (layer L) at token t (chunk c)' from the probe snapshot
    taken at the first non-finite step; memories are in forward order, so the first one listed
    is where it started."""
    if snapshot is None or not probes:
        return ""
    firsts = snapshot.tolist()
    for (name, mod), t in zip(probes, firsts, strict=True):
        if 0 <= t < mod.probe.length:
            chunk = cast(int, getattr(mod, "chunk", None) or getattr(mod, "c_mem", 1))
            label = getattr(mod, "name", name)
            return (f": the first non-finite memory output was in '{label}' (module {name}) at "
                    f"token {t}, chunk {t // max(chunk, 1)} of {chunk} tokens")
    return ": every memory's output was finite (the divergence is outside the memories)"


def _bad_memory(probes: list[tuple[str, Any]], snapshot: torch.Tensor | None) -> str | None:
    """The label of the memory whose output went non-finite first (as `_culprit` names it);
    "" when every memory's output was finite; None when the probes cannot tell."""
    if snapshot is None or not probes:
        return None
    for (name, mod), t in zip(probes, snapshot.tolist(), strict=True):
        if 0 <= t < mod.probe.length:
            return str(getattr(mod, "name", name))
    return ""


def rank_batch(task: Any, step: int, ranks: Ranks) -> tuple[Any, ...]:
    """This rank's slice of the global batch of `step` (on the device) and its loss weight (None
    in one process): the ranks' gradients are averaged; weighting each rank's mean loss by its
    share of the scored tokens makes that average the gradient of the global-batch mean. The
    task reads only this rank's rows when it can (`Task.rank_batch`)."""
    from nestdsl.runtime.tasks.base import scored_positions

    batch, n_global = task.rank_batch(step, ranks.rank, ranks.world)
    # counted on the host batch, before it moves: no device sync per step
    scale = (None if ranks.world == 1
             else scored_positions(batch.targets, batch.loss_mask) * ranks.world / max(n_global, 1))
    tokens, targets, mask = (t.to(ranks.device) for t in batch)
    return tokens, targets, mask, scale
