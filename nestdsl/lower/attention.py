"""Softmax attention as a memory layer (docs/design.md §2: the non-parametric memory).

    q, k, v = x W_q, x W_k, x W_v                  (optional depthwise causal conv, no SiLU:
                                                    softmax needs no positive feature map)
    q, k = RMSNorm_head(q), RMSNorm_head(k)        (qk_norm: QK-norm; an L2 norm would fix the
                                                    softmax temperature at 1/√d·1, so RMS is used)
    q, k = RoPE(q, pos), RoPE(k, pos)              (absolute positions; a stream continues them)
    o_t = softmax(q_t Kᵀ / √d + mask) V            (causal; sliding `window`: the last w tokens)
    y = (RMSNorm_head(o) ⊙ σ(x W_g)) W_o           (output_gate; else y = o W_o)

Streaming state: the KV cache (post-RoPE keys and values, at most `window` of them when a window
is set), the conv cache and the next position (`AttentionState`).
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch
from torch import Tensor, nn

from nestdsl.lower.common import (
    BuildContext,
    Compiled,
    RMSNorm,
    ShortConv,
    compile_status,
    count_params,
    merge_heads,
    rope,
    split_heads,
)
from nestdsl.lower.equations import update_equation
from nestdsl.lower.layer import PlanRow
from nestdsl.ops import causal_attention
from nestdsl.spec import ir


class AttentionState(TypedDict):
    """Streaming state of softmax attention (`AttentionMixer`), a plain dict at runtime."""

    k: Tensor              # KV cache keys after RoPE, (B, H, S, d); S ≤ window when one is set
    v: Tensor              # KV cache values, (B, H, S, d)
    conv: Tensor | None    # the short conv's last K−1 inputs (B, K−1, 3·H·d); None: no conv
    pos: int               # tokens seen: the next token's RoPE position


class AttentionMixer(nn.Module):
    def __init__(self, ctx: BuildContext, node: Any, mem: ir.AttentionMemory, name: str, *, conv: int,
                 qk_norm: bool, output_gate: bool) -> None:
        super().__init__()
        H, d = ctx.heads_and_dim(mem)
        D = ctx.width
        self.name, self.ir = name, mem
        self.H, self.d, self.window = H, d, mem.window
        self.conv_width, self.qk_norm, self.output_gate = conv, qk_norm, output_gate
        self.qkv = nn.Linear(D, 3 * H * d, bias=False)
        self.conv = ShortConv(3 * H * d, conv) if conv > 0 else None
        if qk_norm:
            self.q_norm, self.k_norm = RMSNorm(d), RMSNorm(d)
        if output_gate:
            self.o_norm = RMSNorm(d)
            self.g_proj = nn.Linear(D, H * d, bias=False)
        self.o_proj = nn.Linear(H * d, D, bias=False)
        self._cfg = ctx.compile
        self.full = Compiled(self._full, f"{name}.attn", ctx.compile)

    def _project(self, x: Tensor, conv_cache: Tensor | None, pos: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        qkv = self.qkv(x)
        if self.conv is not None:
            qkv, conv_cache = self.conv(qkv, conv_cache)
        q, k, v = (split_heads(t, self.H) for t in qkv.chunk(3, dim=-1))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return rope(q, pos), rope(k, pos), v, conv_cache

    def _out(self, o: Tensor, x: Tensor) -> Tensor:
        if self.output_gate:
            o = merge_heads(self.o_norm(o)) * torch.sigmoid(self.g_proj(x))
        else:
            o = merge_heads(o)
        return self.o_proj(o)

    def _full(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """A sequence from its start (the training path, compiled as one graph)."""
        q, k, v, conv_cache = self._project(x, None, 0)
        o = causal_attention(q, k, v, window=self.window)
        return self._out(o, x), k, v, conv_cache

    def _trim(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # A query only sees the last `window` tokens (itself included): older keys can go.
        if self.window is not None and k.shape[2] > self.window:
            return k[:, :, -self.window:], v[:, :, -self.window:]
        return k, v

    def forward(self, x: Tensor, state: AttentionState | None = None
                ) -> tuple[Tensor, AttentionState]:
        if state is None:
            y, k, v, conv_cache = self.full(x)
            pos = x.shape[1]
        else:
            # Continue a stream: new queries attend to the cached keys plus their own.
            pos = state["pos"]
            q, k, v, conv_cache = self._project(x, state.get("conv"), pos)
            k = torch.cat([state["k"], k], dim=2)
            v = torch.cat([state["v"], v], dim=2)
            y = self._out(causal_attention(q, k, v, window=self.window), x)
            pos = pos + x.shape[1]
        k, v = self._trim(k, v)
        return y, {"k": k, "v": v, "conv": conv_cache, "pos": pos}

    def plan(self) -> list[PlanRow]:
        impl = "sdpa causal" if self.window is None else f"sdpa sliding window ({self.window})"
        status, why = compile_status(self._cfg, [self.full.name],
                                     "whole layer, one graph; streaming with a KV cache runs eager")
        return [PlanRow(
            name=self.name, kind="memory/attention", implementation=impl + " + RoPE",
            chunk_size=None, read="after", writes="—", params=count_params(self), compiled=status,
            update=update_equation(self.ir, 1),
            notes=[f"heads {self.H}×{self.d}, conv {self.conv_width or 'none'}, "
                   f"qk_norm {'RMS' if self.qk_norm else 'off'}, output_gate {self.output_gate}, "
                   f"KV cache {'≤ ' + str(self.window) if self.window else 'unbounded'}", why])]

    def explain(self) -> list[str]:
        w = f"s > t − {self.window}" if self.window else ""
        return ["q, k, v = split_heads(x W_qkv)" + (f"; causal conv {self.conv_width}" if self.conv_width else ""),
                *(["q, k = RMSNorm(q), RMSNorm(k)"] if self.qk_norm else []),
                "q, k = RoPE(q), RoPE(k)",
                f"o = softmax(q kᵀ/√d, mask s ≤ t{' and ' + w if w else ''}) v   # F.scaled_dot_product_attention",
                "y = " + ("(RMSNorm(o) ⊙ σ(x W_g)) W_o" if self.output_gate else "o W_o")]
