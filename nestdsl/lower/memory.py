"""The `memory` layer: a parametric associative memory (linear or MLP) used as a token mixer.

Wiring (docs/design.md §3.4, Titans arXiv:2501.00663 §4.4), for x: (B, T, D) and H heads of size d:

    q, k, v = x W_q, x W_k, x W_v                        # D → H·d each (one fused matmul)
    q, k, v = SiLU(conv_K(q, k, v))                      # depthwise causal conv, width K (0: none)
    q, k = q / ‖q‖₂, k / ‖k‖₂                            # qk_norm
    η_t, α_t, β_t = gates(x_t)                           # per head: scale·squash(x_t w + b), or constants
    o = memory_scan(q, k, v; η, α, β, C = level period)  # the update family, docs/design.md §3.1:
        g_t = ∇_θ ℓ(θ_{c(t)}; k_t, v_t)                  #   ℓ = ½‖M(k) − v‖²: Titans Eq. 12
        S_t = β_t S_{t−1} − η_t g_t                      #   surprise momentum: Titans Eq. 14
        θ_t = α_t P_t(θ_{t−1}) + S_t                     #   forgetting (α = 1 − α_Titans): Eq. 13;
                                                         #   P_t = DGD erase, NL paper Eq. 88
        o_t = M(θ_t; q_t)                                #   retrieval, Titans Eq. 15 (read after /
                                                         #   before / chunk); c(t): chunk start,
                                                         #   Titans Eq. 16 (mini-batch form)
    y = (RMSNorm_head(o) ⊙ σ(x W_g)) W_o                 # output_gate (else y = o W_o)

The memory's initial state θ_0 is zeros for a linear memory and meta-learned parameters
(H, out, in) for an MLP memory (learned by backprop through the writes, docs/design.md §3.2).

`writes: stop` (docs/design.md §3.2) detaches the *write path*: k, v and the η/α/β gates enter the
scan detached, so no gradient flows through any inner update into W_k, W_v or the gate
projections. Reads stay differentiable: o_t is differentiable in q_t (hence W_q, the conv and the
output path) and in the initial state θ_0 (meta-learned MLP weights) through the detached
recurrence. For a linear memory θ_0 = 0 is not a parameter, so W_k and W_v then get no
gradient from this layer at all (the plan notes it).
"""

from __future__ import annotations

import math
from typing import Any, TypedDict, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestdsl.lower import telemetry
from nestdsl.lower.common import (
    BuildContext,
    Compiled,
    LearnedGateModule,
    RMSNorm,
    ShortConv,
    compile_status,
    count_params,
    describe_gate,
    merge_heads,
    split_heads,
)
from nestdsl.lower.equations import step_listing, update_equation
from nestdsl.lower.inner import (
    NormParameters,
    ReadNorm,
    erase_of,
    lr_divisor,
    lr_warmup_of,
    memory_function,
    objective_of,
)
from nestdsl.lower.layer import PlanRow
from nestdsl.lower.registry import register_layer
from nestdsl.ops import MemoryState, MLPMemory, kernels, memory_scan, mlp_forward
from nestdsl.ops.linear_chunked import DEFAULT_BLOCK
from nestdsl.ops.mlp import NormParams
from nestdsl.ops.objectives import Objective
from nestdsl.spec import ir
from nestdsl.vocabulary import EraseRate, ReadMode, RuleKind

GATE_ROLES = ("lr", "retention", "momentum")


class MemoryLayerState(TypedDict):
    """Streaming state of a `memory` layer (`MemoryMixer`), a plain dict at runtime."""

    conv: Tensor | None      # the short conv's last K−1 inputs (B, K−1, 3·H·d); None: no conv
    memory: MemoryState      # θ (and momentum S) at the last chunk boundary, (B, H, out, in) each


class ScanKwargs(TypedDict):
    """The keyword arguments of one layer's `memory_scan` call (and its telemetry re-run)."""

    memory: str | MLPMemory              # "linear" or the MLP f_θ
    objective: Objective                 # the inner loss ℓ
    rule: RuleKind                       # "gd" | "dgd"
    lr: Tensor | float                   # η: (B, H, T) or a constant
    retention: Tensor | float | None     # α: (B, H, T), a constant or None (α = 1)
    momentum: Tensor | float | None      # β: (B, H, T), a constant or None (no momentum)
    chunk_size: int                      # C
    read: ReadMode                       # "after" | "before" | "chunk"
    state: MemoryState | None            # θ to continue from (None: θ_0 of the memory kind)
    erase: EraseRate                     # DGD's ε
    norm: NormParams                     # inner norm (gain, bias) (H, d) each, or None
    checkpoint_every: int | None         # G: keep every G-th chunk's state in training
    normalized_lr: bool                  # η/(ε + ‖a_i‖²) per layer


class MemoryMixer(nn.Module):
    """A linear / MLP associative memory as a token mixer (see the module docstring)."""

    def __init__(self, ctx: BuildContext, node: Any, mem: ir.Memory, name: str, *, conv: int,
                 qk_norm: bool, output_gate: bool) -> None:
        super().__init__()
        assert isinstance(mem, ir.ParametricMemory) and mem.objective is not None, \
            "a memory layer's memory is parametric with an objective (checker)"
        self.objective = objective_of(mem)
        self.name, self.ir = name, mem
        # the spec's name for this memory: what `--kernel NAME=…` refers to
        self.key = next((k for k, m in ctx.spec.memories.items() if m is mem), name)
        self.rule = mem.rule or ir.Rule()
        H, d = ctx.heads_and_dim(mem)
        D = ctx.width
        self.H, self.d = H, d
        self.chunk = ctx.chunk_size(self.key)
        self.stream_chunk = self.chunk     # a stream continues from chunk-boundary states only
        self.conv_width, self.qk_norm, self.output_gate = conv, qk_norm, output_gate
        self.writes = mem.writes

        self.qkv = nn.Linear(D, 3 * H * d, bias=False)
        self.conv = ShortConv(3 * H * d, conv) if conv > 0 else None

        # η, α, β: learned per-head gates become modules; constants stay floats.
        self.gates = nn.ModuleDict()
        self.const: dict[str, float | None] = {}
        for role in GATE_ROLES:
            g = getattr(self.rule, role)
            if isinstance(g, ir.LearnedGate):
                self.gates[role] = LearnedGateModule(D, H, g, role)
                self.const[role] = None
            else:
                self.const[role] = None if g is None else float(g)

        self.erase = erase_of(mem)
        self.lr_divisor = lr_divisor(mem, d)
        self.lr_warmup = lr_warmup_of(mem)        # η · min(1, (s + 1)/N) (rule.lr_warmup)
        fn = memory_function(mem, d)
        self.mlp: MLPMemory | None = None if fn == "linear" else cast(MLPMemory, fn)
        read_norm = mem.read_norm if isinstance(mem, ir.MLPMemory) else None
        self.read_norm = ReadNorm(H, d, read_norm) if read_norm is not None else None
        self.norm = NormParameters(H, d, mem.norm_gain) if self.mlp is not None and self.mlp.norm else None
        self.init_weights = nn.ParameterList()
        if self.mlp is not None or mem.init == "learned":
            # θ_0 per head, meta-learned (Titans §3.2 / Hope: "knowledge in the initial state");
            # a linear memory starts from zeros unless `init: learned`.
            shapes = self.mlp.weight_shapes(d, d) if self.mlp is not None else [(d, d)]
            for o, i in shapes:
                w = (torch.randn(H, o, i) / math.sqrt(i) if isinstance(mem, ir.MLPMemory)
                     else torch.zeros(H, o, i))
                self.init_weights.append(nn.Parameter(w))

        if output_gate:
            self.o_norm = RMSNorm(d)
            self.g_proj = nn.Linear(D, H * d, bias=False)
        self.o_proj = nn.Linear(H * d, D, bias=False)

        self.probe = telemetry.NonFiniteProbe()
        self._cfg = ctx.compile
        self.pre = Compiled(self._pre, f"{name}.pre", ctx.compile)
        self.post = Compiled(self._post, f"{name}.post", ctx.compile)

    # -- the three stages: projections (compiled), scan (Python chunk loop), output (compiled)

    def _pre(self, x: Tensor, conv_cache: Tensor | None
             ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor], Tensor | None]:
        qkv = self.qkv(x)
        if self.conv is not None:
            qkv, conv_cache = self.conv(qkv, conv_cache)
        qkv = F.silu(qkv)
        q, k, v = (split_heads(t, self.H) for t in qkv.chunk(3, dim=-1))
        if self.qk_norm:
            q = F.normalize(q, dim=-1, eps=1e-6)
            k = F.normalize(k, dim=-1, eps=1e-6)
        gates = {role: g(x) for role, g in self.gates.items()}
        return q, k, v, gates, conv_cache

    def _post(self, o: Tensor, x: Tensor) -> Tensor:
        if self.output_gate:
            o = merge_heads(self.o_norm(o)) * torch.sigmoid(self.g_proj(x))
        else:
            o = merge_heads(o)
        return self.o_proj(o)

    # Never traced into an enclosing graph (e.g. torch.compile(model)): the Python loop over
    # chunks would be unrolled and compile time would grow with T (docs/design.md §6). The per-chunk
    # step inside is compiled on its own.
    @torch.compiler.disable
    def scan(self, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor],
             state: MemoryState | None) -> tuple[Tensor, MemoryState]:
        """memory_scan with this layer's memory; the per-chunk step is the compiled one."""
        g: dict[str, Tensor | float | None] = {r: gates.get(r, self.const[r]) for r in GATE_ROLES}
        if self.writes == "stop":   # stop-gradient writes: detach everything the write path reads
            k, v = k.detach(), v.detach()
            g = {r: (t.detach() if isinstance(t, Tensor) else t) for r, t in g.items()}
        if state is None and len(self.init_weights):
            state = MemoryState(tuple(self.init_weights), None)
        lr = g["lr"] if g["lr"] is not None else 1.0
        if self.lr_divisor != 1.0:
            lr = lr / self.lr_divisor
        if self.lr_warmup is not None:
            lr = lr * self.lr_warmup.factor
        kw: ScanKwargs = {
            "memory": self.mlp if self.mlp is not None else "linear", "objective": self.objective,
            "rule": self.rule.kind, "lr": lr, "retention": g["retention"],
            "momentum": g["momentum"], "chunk_size": self.chunk, "read": self.ir.read,
            "state": state, "erase": self.erase,
            "norm": self.norm() if self.norm is not None else None,
            "checkpoint_every": self._cfg.checkpoint_every,
            "normalized_lr": self.rule.normalized_lr}
        kernel = kernels.choose(self.call(q, T=q.shape[2]), self.forced_kernel())
        step_name = f"{self.name}.step"
        if kernel.name == "compiled" and step_name not in self._cfg.failures:
            try:
                out = memory_scan(q, k, v, kernel="compiled", compile=True, **kw)
            except Exception as e:  # noqa: BLE001 - compiler failure: fall back visibly
                out = memory_scan(q, k, v, kernel="chunked", **kw)   # an input error raises here
                self._cfg.note_failure(step_name, e)
        else:
            name = "chunked" if kernel.name == "compiled" else kernel.name
            out = memory_scan(q, k, v, kernel=name, **kw)
        if self.read_norm is not None:      # memory.read_norm: q + g RMSNorm(M(q) − q)
            out = (self.read_norm(out[0], q), out[1])
        self.probe.update(out[0])
        if telemetry.active():
            self._telemetry(q, k, v, kw, out[0])
        return out

    # -- which kernel computes the scan (ops/kernels.py)

    def forced_kernel(self) -> str | None:
        forced = self._cfg.kernels
        return forced.get(self.key, forced.get("*"))

    def call(self, q: Tensor | None = None, *, T: int | None = None) -> kernels.MemoryCall:
        """This memory as a kernel request: on q's device and dtype (the parameters' when
        planning, with T unknown)."""
        p = self.qkv.weight
        dtype = q.dtype if q is not None else p.dtype
        if q is None and p.device.type == "cuda":
            dtype = torch.bfloat16          # planned for training under bf16 autocast
        return kernels.MemoryCall(
            memory=self.mlp if self.mlp is not None else "linear", objective=self.objective,
            rule=self.rule.kind, erase=self.erase, read=self.ir.read, chunk_size=self.chunk,
            retention=self.rule.retention is not None, momentum=self.rule.momentum is not None,
            d_key=self.d, d_value=self.d, device=p.device if q is None else q.device,
            dtype=dtype, compile=self._cfg.enabled, training=torch.is_grad_enabled(), T=T,
            normalized_lr=self.rule.normalized_lr)

    def kernel_rows(self) -> list[kernels.KernelChoice]:
        """The kernel this layer runs and every candidate's verdict: `compile --explain`."""
        return [kernels.explain(self.name, self.key, self.call(), self.forced_kernel())]

    def _forward_fn(self, ws: tuple[Tensor, ...], x: Tensor, norm: Any) -> Tensor:
        """f_θ(x) for x (B, H, N, d)."""
        if self.mlp is None:
            return x @ ws[0].mT
        return mlp_forward(ws, x, self.mlp, norm)

    @torch.no_grad()
    def _telemetry(self, q: Tensor, k: Tensor, v: Tensor, kw: ScanKwargs, o: Tensor) -> None:
        """Chunk by chunk again (no grad; log steps only): state norms, write sizes and the inner
        loss on each chunk's (k, v) before and after its writes (lower/telemetry.py)."""
        B, H, T, _ = k.shape
        L = self.chunk if self.chunk > 1 else DEFAULT_BLOCK
        state = kw["state"]
        if state is None:
            state = MemoryState((torch.zeros(B, H, self.d, self.d, device=k.device),), None)
        first = state
        before, after, norms, writes = [], [], [], []

        def sl(x: Any, a: int, b: int) -> Any:
            return x[..., a:b] if isinstance(x, Tensor) and x.dim() == 3 else x

        for a in range(0, T, L):
            b = min(a + L, T)
            kc, vc = k[:, :, a:b].float(), v[:, :, a:b].float()
            part: ScanKwargs = {**kw, "lr": sl(kw["lr"], a, b), "retention": sl(kw["retention"], a, b),
                                "momentum": sl(kw["momentum"], a, b), "state": state}
            before.append(self.objective.loss(self._forward_fn(state.weights, kc, kw["norm"]), vc).mean())
            prev = state
            _, state = memory_scan(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], compile=False, **part)
            writes.append(telemetry.write_size(prev.weights, state.weights))
            after.append(self.objective.loss(self._forward_fn(state.weights, kc, kw["norm"]), vc).mean())
            norms.append(telemetry.state_norm(state.weights).mean())
        w0 = tuple(w.expand(B, *w.shape[-3:]) for w in first.weights)
        moved = telemetry.state_norm([w - w0_ for w, w0_ in zip(state.weights, w0, strict=True)])
        telemetry.record(self.name, {
            "state_norm": norms[-1], "max_state_norm": torch.stack(norms).max(),
            "update_norm": moved.mean(), "loss_before": torch.stack(before).mean(),
            "loss_after": torch.stack(after).mean(),
            "state_growth": norms[-1] / norms[0].clamp_min(1e-12),
            "write_size": telemetry.mean_finite(writes),
            "branch_share": (telemetry.branch_share(o, q) if self.mlp is not None and self.mlp.residual
                             else None),
            **telemetry.gate_means(lr=kw["lr"], retention=kw["retention"], momentum=kw["momentum"]),
        })

    def forward(self, x: Tensor, state: MemoryLayerState | None = None
                ) -> tuple[Tensor, MemoryLayerState]:
        q, k, v, gates, conv_cache = self.pre(x, state.get("conv") if state else None)
        o, mem_state = self.scan(q, k, v, gates, state.get("memory") if state else None)
        return self.post(o, x), {"conv": conv_cache, "memory": mem_state}

    # -- plan

    def implementation(self) -> str:
        if self.mlp is not None and self.mlp.depth == 1:
            return f"matrix + inner norm chunk step (closed-form grads, dual-form reads, C={self.chunk})"
        if self.mlp is not None:
            return "mlp chunk step (closed-form grads, dual-form reads)"
        if self.chunk == 1 and self.objective.affine is not None:
            if self.objective.affine == 0.0 and self.rule.kind == "gd":
                return f"chunked linear attention (exact C=1, blocks of {DEFAULT_BLOCK})"
            return f"chunked delta rule (WY/UT solve, exact C=1, blocks of {DEFAULT_BLOCK})"
        if self.chunk == 1:
            return "linear step, one token per block (non-affine objective)"
        return f"linear chunk step (gradient at chunk start, C={self.chunk})"

    def plan(self) -> list[PlanRow]:
        notes = [f"heads {self.H}×{self.d}, conv {self.conv_width or 'none'}, "
                 f"qk_norm {self.qk_norm}, output_gate {self.output_gate}",
                 "gates: " + ", ".join(f"{r} {describe_gate(getattr(self.rule, r), '—')}"
                                       for r in GATE_ROLES)]
        if self.mlp is not None:
            notes.append(f"memory function: depth {self.mlp.depth}, hidden {self.mlp.hidden}, "
                         f"{self.mlp.activation}, inner norm {self.mlp.norm}, residual "
                         f"{self.mlp.residual}; θ_0 meta-learned"
                         + ("; rows renormalised to θ_0's norms after each chunk (renorm)"
                            if self.mlp.renorm else ""))
        elif len(self.init_weights):
            notes.append("θ_0 meta-learned (init: learned)")
        if self.rule.kind == "dgd":
            notes.append(f"dgd erase rate ε = {self.erase}")
        G = self._cfg.checkpoint_every
        notes.append(f"training keeps the state every {G} chunk(s) and recomputes the group in "
                     "backward" if G else "training saves every chunk's intermediates")
        if self.lr_divisor != 1.0:
            notes.append(f"η divided by d_head = {self.lr_divisor:g} (lr_per_dim)")
        if self.lr_warmup is not None:
            notes.append(f"η warmed up over {self.lr_warmup.steps} outer steps (lr_warmup)")
        if self.writes == "stop":
            notes.append("writes: stop — k, v, η, α, β detached on the write path; reads (q, θ_0) "
                         "differentiable" + ("; W_k, W_v get no gradient (θ_0 = 0)" if self.mlp is None else ""))
        status, why = compile_status(
            self._cfg, [self.pre.name, self.post.name, f"{self.name}.step"],
            "projections + output graphs and the per-chunk step; chunk loop in Python "
            "(compile time independent of T)")
        kernel = self.kernel_rows()[0].shown
        return [PlanRow(
            name=self.name, kind=f"memory/{self.ir.kind}", implementation=self.implementation(),
            chunk_size=self.chunk, read=self.ir.read, writes=self.writes, params=count_params(self),
            compiled=status, kernel=kernel, update=update_equation(self.ir, self.chunk),
            notes=[*notes, why])]

    def explain(self) -> list[str]:
        return step_listing(self.ir, self.chunk, conv=self.conv_width, qk_norm=self.qk_norm,
                            output_gate=self.output_gate, writes=self.writes, block=DEFAULT_BLOCK)


def build_mixer(ctx: BuildContext, node: Any, mem: ir.Memory, name: str, *, conv: int,
                qk_norm: bool, output_gate: bool) -> nn.Module:
    """A memory used as a mixer: attention (non-parametric) or linear / MLP."""
    if isinstance(mem, ir.AttentionMemory):
        from nestdsl.lower.attention import AttentionMixer

        return AttentionMixer(ctx, node, mem, name, conv=conv, qk_norm=qk_norm, output_gate=output_gate)
    return MemoryMixer(ctx, node, mem, name, conv=conv, qk_norm=qk_norm, output_gate=output_gate)


@register_layer("memory")
def build_memory_layer(ctx: BuildContext, node: ir.MemoryLayer, name: str) -> nn.Module:
    mem = ctx.memory(node.memory)
    return build_mixer(ctx, node, mem, f"{name} {node.memory}", conv=node.conv,
                       qk_norm=node.qk_norm, output_gate=node.output_gate)
