"""A memory spec's inner loop, resolved once for every layer that lowers it (docs/design.md §3.1).

The memory function f_θ (a matrix, an MLP, and the optional inner norm + residual), the inner
objective (with the optional soft clip of the surprise), DGD's erase rate ε and the step-size
divisor. `MemoryMixer` (lower/memory.py) and Hope's self-modifying layer (lower/hope.py) both
build their memories from these, so a field means the same thing in both.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from nestdsl.ops import MLPMemory
from nestdsl.ops.objectives import Objective, get_objective, soft_clipped_l2
from nestdsl.spec import ir
from nestdsl.spec.resolve import DGD_ERASE
from nestdsl.vocabulary import EraseRate

__all__ = ["memory_function", "objective_of", "erase_of", "lr_divisor", "NormParameters",
           "ReadNorm", "LrWarmup", "lr_warmup_of", "set_outer_step"]


def memory_function(mem: ir.Memory, head_dim: int) -> str | MLPMemory:
    """``"linear"`` (a bare matrix: the exact chunked forms apply) or the ``MLPMemory`` f_θ of a
    resolved memory (spec/resolve.py).

    A linear memory with an inner norm is a depth-1 ``MLPMemory`` (TTT-Linear's x + LN(W x)).
    """
    assert isinstance(mem, ir.ParametricMemory), "an attention memory has no memory function"
    assert mem.residual is not None and mem.norm is not None, "memory defaults are not resolved"
    if isinstance(mem, ir.LinearMemory):
        if not mem.norm:
            return "linear"
        return MLPMemory(depth=1, hidden=head_dim, residual=mem.residual, norm=True)
    assert isinstance(mem, ir.MLPMemory) and mem.depth and mem.hidden and mem.activation
    return MLPMemory(depth=mem.depth, hidden=mem.hidden * head_dim, activation=mem.activation,
                     residual=mem.residual, norm=mem.norm, renorm=mem.renorm)


def objective_of(mem: ir.ParametricMemory) -> Objective:
    """The inner objective; ``rule.clip`` turns l2 into its soft-clipped form."""
    rule = mem.rule or ir.Rule()
    if rule.clip is not None:
        return soft_clipped_l2(rule.clip)
    return get_objective(mem.objective or "l2")


def erase_of(mem: ir.ParametricMemory) -> EraseRate:
    """DGD's erase rate ε (resolved: ``eta``, the NL paper's Eq. 88 as written, by default);
    gd erases nothing, and the ops ignore the value."""
    rule = mem.rule or ir.Rule()
    assert rule.kind != "dgd" or rule.erase is not None, "memory defaults are not resolved"
    return rule.erase or cast(EraseRate, DGD_ERASE)


def lr_divisor(mem: ir.ParametricMemory, head_dim: int) -> float:
    """η is divided by this: d_head with ``lr_per_dim`` (TTT's η/d), else 1."""
    rule = mem.rule or ir.Rule()
    return float(head_dim) if rule.lr_per_dim else 1.0


class NormParameters(nn.Module):
    """The inner LayerNorm's outer-learned gain γ (init ``gain``, the memory's ``norm_gain``) and
    bias b (init 0), per head.

    Not part of the memory state: the inner rule never updates them; the outer optimizer does.
    """

    def __init__(self, heads: int, dim: int, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.full((heads, dim), float(gain)))
        self.bias = nn.Parameter(torch.zeros(heads, dim))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gain, self.bias


class ReadNorm(nn.Module):
    """Read-path normalisation of a residual memory: o = q + g ⊙ RMSNorm(M(q) − q), g per head
    and dimension, initialised to the memory's ``read_norm`` (outer-learned).

    Outside the inner loss: the writes fit x + M̃(x) as before; only what the layer reads is
    rescaled, so the branch's size at initialisation is set by g, not by the MLP's small output
    (NL paper Eq. 89 leaves the read's scale open). Applied to a read o = M(q) of any kernel.
    """

    eps = 1e-6

    def __init__(self, heads: int, dim: int, gain: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.full((heads, dim), float(gain)))

    def forward(self, o: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """o, q: (B, H, T, d)."""
        branch = o - q
        rms = torch.rsqrt(branch.pow(2).mean(-1, keepdim=True) + self.eps)
        return q + branch * rms * self.gain.to(o.dtype)[:, None, :]


class LrWarmup(nn.Module):
    """The inner-lr warm-up of ``rule.lr_warmup``: η is multiplied by ``factor``
    = min(1, (s + 1)/N) at outer step s (set by the train loop through ``set_outer_step``).

    ``factor`` is a persistent buffer: a checkpoint carries the value its model was trained
    with, and a fresh model starts at step 0's 1/N. A tensor (not a Python float), so a compiled
    graph reads it as an input instead of recompiling at every step.
    """

    factor: torch.Tensor     # the registered buffer

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = int(steps)
        self.register_buffer("factor", torch.tensor(min(1.0, 1.0 / self.steps)))

    def set_step(self, step: int) -> None:
        self.factor.fill_(min(1.0, (step + 1) / self.steps))

    def extra_repr(self) -> str:
        return f"steps={self.steps}"


def lr_warmup_of(mem: ir.ParametricMemory) -> LrWarmup | None:
    """The memory's η warm-up module, or None without ``rule.lr_warmup``."""
    rule = mem.rule or ir.Rule()
    return LrWarmup(rule.lr_warmup) if rule.lr_warmup is not None else None


@torch.no_grad()
def set_outer_step(model: nn.Module, step: int) -> None:
    """Tell every memory with an inner-lr warm-up the outer step about to be taken."""
    for m in model.modules():
        if isinstance(m, LrWarmup):
            m.set_step(step)
