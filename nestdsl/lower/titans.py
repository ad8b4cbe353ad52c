"""Titans hybrids (arXiv:2501.00663 §4): memory-as-layer (MAL) and memory-as-gate (MAG).

    MAL:  h = x + Mem(norm₁(x));  y = h + SWA(norm₂(h))         (each its own pre-norm residual)
    MAG:  y = g ⊙ norm₁(Mem(x)) + (1 − g) ⊙ norm₂(SWA(x)),  g = σ(x W_g)   (per channel)

The memory is a linear / MLP memory wired as a `memory` layer with its defaults (conv 4, qk_norm,
output gate); the attention is a sliding-window softmax memory (no conv, no QK-norm, no output
gate, as the `transformer` preset). Titans' persistent memory tokens are not modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict, cast

import torch
from torch import Tensor, nn

from nestdsl.lower.common import BuildContext, count_params, make_norm
from nestdsl.lower.layer import PlanRow
from nestdsl.lower.memory import MemoryLayerState, MemoryMixer, build_mixer
from nestdsl.lower.registry import register_layer
from nestdsl.spec import ir

if TYPE_CHECKING:
    from nestdsl.lower.attention import AttentionMixer, AttentionState


class HybridState(TypedDict):
    """Streaming state of a MAL or MAG layer, a plain dict at runtime."""

    memory: MemoryLayerState     # the memory branch's state
    attention: AttentionState    # the sliding-window attention's KV cache


def _parts(ctx: BuildContext, node: ir.MALLayer | ir.MAGLayer, name: str
           ) -> tuple[MemoryMixer, AttentionMixer]:
    mem, att = ctx.memory(node.memory), ctx.memory(node.attention)
    assert isinstance(mem, ir.ParametricMemory) and isinstance(att, ir.AttentionMemory), \
        "a MAL/MAG layer's memory is parametric and its attention is attention (checker)"
    m = MemoryMixer(ctx, node, mem, f"{name} {node.memory}", conv=4, qk_norm=True, output_gate=True)
    a = cast("AttentionMixer", build_mixer(ctx, node, att, f"{name} {node.attention}", conv=0,
                                           qk_norm=False, output_gate=False))
    return m, a


class MAL(nn.Module):
    owns_residual = True   # the block passes x un-normed; MAL adds its own two pre-norm residuals

    def __init__(self, ctx: BuildContext, node: ir.MALLayer, name: str) -> None:
        super().__init__()
        self.memory, self.attention = _parts(ctx, node, name)
        self.norm1, self.norm2 = make_norm(node.norm, ctx.width), make_norm(node.norm, ctx.width)
        self.residual = node.residual

    def forward(self, x: Tensor, state: HybridState | None = None) -> tuple[Tensor, HybridState]:
        m, ms = self.memory(self.norm1(x), state.get("memory") if state else None)
        h = x + m if self.residual else m
        a, as_ = self.attention(self.norm2(h), state.get("attention") if state else None)
        return (h + a if self.residual else a), {"memory": ms, "attention": as_}

    def plan(self) -> list[PlanRow]:
        rows = self.memory.plan() + self.attention.plan()
        rows[0].params += count_params(self.norm1)
        rows[1].params += count_params(self.norm2)
        rows[0].notes.append("MAL: memory then sliding-window attention, each pre-norm residual")
        return rows

    def explain(self) -> list[str]:
        return ["h = x + Mem(norm₁(x)); y = h + SWA(norm₂(h))", *self.memory.explain()]


class MAG(nn.Module):
    def __init__(self, ctx: BuildContext, node: ir.MAGLayer, name: str) -> None:
        super().__init__()
        self.memory, self.attention = _parts(ctx, node, name)
        D = ctx.width
        self.norm_m, self.norm_a = make_norm("rms", D), make_norm("rms", D)
        self.gate = nn.Linear(D, D)

    def forward(self, x: Tensor, state: HybridState | None = None) -> tuple[Tensor, HybridState]:
        m, ms = self.memory(x, state.get("memory") if state else None)
        a, as_ = self.attention(x, state.get("attention") if state else None)
        g = torch.sigmoid(self.gate(x))
        y = g * self.norm_m(m) + (1 - g) * self.norm_a(a)
        return y, {"memory": ms, "attention": as_}

    def plan(self) -> list[PlanRow]:
        rows = self.memory.plan() + self.attention.plan()
        rows[0].params += count_params(self.norm_m) + count_params(self.gate)
        rows[1].params += count_params(self.norm_a)
        rows[0].notes.append("MAG: y = g⊙norm(mem) + (1−g)⊙norm(swa), g = σ(x W_g) (gate params here)")
        return rows

    def explain(self) -> list[str]:
        return ["y = g ⊙ norm(Mem(x)) + (1 − g) ⊙ norm(SWA(x)),  g = σ(x W_g)", *self.memory.explain()]


@register_layer("mal")
def build_mal(ctx: BuildContext, node: ir.MALLayer, name: str) -> nn.Module:
    return MAL(ctx, node, name)


@register_layer("mag")
def build_mag(ctx: BuildContext, node: ir.MAGLayer, name: str) -> nn.Module:
    return MAG(ctx, node, name)
