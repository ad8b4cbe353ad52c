"""Hope's self-modifying Titans (NL paper arXiv §8, Eqs. 83–97; docs/design.md §3.4).

Per head (width D split into H heads of d = D/H), memories □ ∈ {k, v, η, α} (+ q when listed in
`adaptive`) are residual MLPs M_□(x) = x + W_1 σ(W_2 x) (Eq. 89) with meta-learned initial states
θ_{□,0} (nn.Parameters, shared by every sequence of a batch); the main memory M_mem is built from
the `memory` spec. For token t with C_other-chunk start c(t) and C_mem-chunk start c_m(t):

    k_t, v_t = SiLU(conv(M_k(θ_{k,c(t)}; x_t))), SiLU(conv(M_v(θ_{v,c(t)}; x_t)))      (Eq. 83/90)
    q_t      = SiLU(conv(x_t W_q))                        (static; M_q(θ_{q,c(t)}; x_t) if adaptive)
    q_t, k_t = q_t/‖q_t‖, k_t/‖k_t‖                       (qk_norm)
    v_t      = v_t/‖v_t‖                                   (v_norm; off by default, not in the paper)
    (`values: shared` replaces every v̂ below by v_t: Eqs. 79–82, the non-self-modifying variant)
    η_t      = η_max · sigmoid(⟨w_η, M_η(θ_{η,c(t)}; x_t)⟩ + b_η)      (scale/init: rule.lr gate)
    α_t      = sigmoid(⟨w_α, M_α(θ_{α,c(t)}; x_t)⟩ + b_α)              (rule.retention gate)
    v̂_{□,t}  = M_□(θ_{□,c(t)}; v_t)                       self-generated targets (Eq. 84/95)
    every memory □ (and mem, at its own chunk start c_m(t)) takes the docs/design.md §3.1 step on
    ℓ = ½‖M_□(k_t) − v̂_{□,t}‖² (Eq. 85/88/96):
        S_t = β_t S_{t−1} − η_t ∇ℓ(θ_{□,c(t)}),   θ_t = α_t P_t(θ_{t−1}) + S_t
    o_t = M_mem(θ; q_t) read per the memory's `read`     (after: θ_t; before: θ_{t−1}; chunk: θ_{c(t)})
    y_t = W_o (RMSNorm_head(o_t) ⊙ sigmoid(x_t W_g))     (output_gate; else y_t = W_o o_t)

Semantics decisions (documented here and printed by `plan()`):

* **Per-head inputs.** x_t is split into heads before the memories: M_□ maps R^d → R^d so that
  the same map can generate k_t from x_t and its own target M_□(v_t) from v_t (Eq. 84 needs input
  and value spaces to agree). A projection *not* in `adaptive` is a static D×D linear map (the
  Table 6 "w/o inner-projection" ablation): k_t = x_t W_k.
* **Gates.** η, α, β are scalars per head and token. A memory group (the main memory, and the
  projection memories, which share the `projections` spec) whose rule gives a *constant* uses it;
  a `LearnedGate` becomes scale·squash(⟨w, M_η(x_t)⟩ + b) with the group's own w (H, d) and b (H,)
  fed by the generated features M_η(x_t) (M_α for retention) when η (α) is adaptive, or a static
  gate scale·squash(x_t W + b) otherwise. Momentum β is never generated (it is not one of the
  paper's memories): a learned β is a static gate. w starts at 0 and b at squash⁻¹(init/scale),
  so initial gates equal `init` (the convention of `common.LearnedGateModule`). If no group uses a
  learned η (α), M_η (M_α) would have no consumer and is not built (plan note).
* **Chunks.** Generation (k, v, q, η, α, targets) and the projection memories' writes advance
  every C_other tokens; M_mem every C_mem tokens with targets from θ_{mem,c_m(t)}. One of C_mem,
  C_other must divide the other; the per-chunk step covers max(C_mem, C_other) tokens (a fixed,
  small unroll of the smaller chunk inside), and a Python loop runs the steps, so the compiled
  graph does not grow with T. The projections must have `read: chunk` (generation reads the
  chunk-start state, Eq. 90; reading θ_t would need k_t to produce k_t).
* **Gradients.** Inner gradients are closed form (`nestdsl.ops.mlp_chunk_step`). The inner loss
  treats v̂ as a constant target (Eq. 85); the *outer* loss back-propagates through v̂, through
  every write (`writes: grad`) into θ_{□,0}, W_q, the gates and conv. `writes: stop` makes a
  group's state updates stop-gradient (θ ← θ + sg(Δθ)), keeping the initial state learnable
  through reads.
* **DGD** (rule `dgd`) erases on the key-multiplying weight (first layer) only:
  W ↦ W(α_t I − ε_t k_t k_tᵀ) − η_t ∇ℓ, the other weights α_t W − η_t ∇ℓ (docs/design.md §3.1). The
  erase rate ε is `rule.erase`: η (default: Eq. 88 exactly, M(αI − ηkkᵀ) − η∇ℓ), η/(1 + η‖k‖²)
  (Eq. 57) or αη. With the l2 objective the erase term appears twice, as Eq. 88 is written.
* **Inner norm** (`norm: true`): M(x) = x + LN(W_1 σ(W_2 x))·γ + b, γ, b outer-learned per
  memory and head: bounds every generated k, v, η, α and every self-generated target M(v_t).
* **Streaming state** = {"mems": {name: MemoryState}, "conv": {q|k|v: last K−1 inputs},
  "pos": tokens seen} (`HopeState`). Segments must be split at multiples of max(C_mem, C_other).
* **Checkpointing.** Under `CompileConfig.checkpoint_every` = G (and grad mode) the window loop
  keeps the state only every G windows and re-runs a group in backward (sequences of 2·G windows
  or more), like the memory scans: saved bytes drop from every window's intermediates to one
  state per group; values and gradients are the plain loop's.
* **Compilation.** The step is Python glue around three compiled pieces with eager twins
  (`common.Compiled`): `_generate` (one C_other chunk's q, k, v, gates, targets), the memories'
  `mlp_chunk_step` (one graph per configuration, shared by all memories and layers) and
  `_output`. Initial zero states require grad under grad mode and conv caches are made
  contiguous, so every chunk sees the same input signature (no recompiles after the first).
* **Step sizes.** All gradients of a chunk are taken at θ_{c(t)}, so one chunk moves θ by about
  η·C·‖a‖²/(1−β) along its top curvature direction (a: a layer input, ‖a‖² ≈ 11 for hidden 2·16):
  keep it below ~2. E.g. η_max 0.1, β 0.9, C 16 diverges within ~100 tokens; η ≤ 0.01 for
  M_mem and 0.002 for the projections (β 0.9, C 16) is stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nestdsl.graph.level_graph import update_equation
from nestdsl.lower import telemetry
from nestdsl.lower.common import (
    BuildContext,
    CompileConfig,
    Compiled,
    LearnedGateModule,
    RMSNorm,
    ShortConv,
    compile_status,
    describe_gate,
    merge_heads,
    split_heads,
)
from nestdsl.lower.inner import (
    LrWarmup,
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
from nestdsl.ops import MemoryState, MLPMemory, kernels, mlp_chunk_step, mlp_forward
from nestdsl.ops.objectives import Objective
from nestdsl.spec import ir
from nestdsl.vocabulary import PROJECTION_READ, EraseRate, ReadMode, RuleKind

__all__ = ["HopeState", "HopeWindowState", "InnerRule", "SelfModifyingTitans",
           "build_self_modifying"]

ROLES = ("q", "k", "v", "eta", "alpha")      # projections that can be memories
GATE_ROLES = ("lr", "retention", "momentum")  # η, α, β
GATE_SOURCE = {"lr": "eta", "retention": "alpha"}  # which generated memory feeds a learned gate


class HopeWindowState(TypedDict):
    """What the window loop carries from window to window (a plain dict at runtime)."""

    mems: dict[str, MemoryState]   # "mem" (M_mem) and each adaptive role (q, k, v, eta, alpha):
                                   # θ (and momentum) per weight, (B, H, out, in)
    conv: dict[str, Tensor]        # q | k | v: the short conv's last K−1 inputs (B, K−1, D);
                                   # empty without conv


class HopeState(HopeWindowState):
    """Streaming state of Hope's self-modifying layer (`SelfModifyingTitans`), a plain dict."""

    pos: int                       # tokens seen (a multiple of max(C_mem, C_other) to continue)


@dataclass(frozen=True)
class InnerRule:
    """How one memory group learns in context (from an `ir.Memory`)."""

    objective: Objective
    kind: RuleKind                   # "gd" | "dgd"
    lr: ir.Gate
    retention: ir.Gate | None
    momentum: ir.Gate | None
    read: ReadMode                   # "after" | "before" | "chunk"
    writes: ir.WriteGrad             # "grad" | "stop"
    erase: EraseRate = "eta"         # DGD's ε (lower/inner.py)
    lr_divisor: float = 1.0          # η / d_head with `lr_per_dim`
    normalized_lr: bool = False      # per-layer η/(ε + ‖a_i‖²) (rule.normalized_lr)

    @classmethod
    def of(cls, mem: ir.ParametricMemory, head_dim: int = 1) -> InnerRule:
        rule = mem.rule or ir.Rule()
        return cls(objective_of(mem), rule.kind, rule.lr, rule.retention, rule.momentum,
                   mem.read, mem.writes, erase_of(mem), lr_divisor(mem, head_dim),
                   rule.normalized_lr)

    def gate(self, role: str) -> ir.Gate | None:
        return getattr(self, role)


class GeneratedGate(nn.Module):
    """g_t = scale · squash(⟨w_h, f_t⟩ + b_h) per head, f_t = M_η(x_t) (or M_α(x_t)), f: (B, H, L, d)."""

    def __init__(self, heads: int, head_dim: int, gate: ir.LearnedGate, role: str) -> None:
        super().__init__()
        self.squash, self.scale = gate.learned, float(gate.scale)
        # Same bias rule (init / library default, validation) as the static gates.
        ref = LearnedGateModule(1, heads, gate, role)
        self.weight = nn.Parameter(torch.zeros(heads, head_dim))
        self.bias = nn.Parameter(ref.proj.bias.detach().clone())

    def forward(self, feats: Tensor) -> Tensor:
        z = (feats * self.weight[:, None, :]).sum(-1) + self.bias[:, None]       # (B, H, L)
        return (torch.sigmoid(z) if self.squash == "sigmoid" else F.softplus(z)) * self.scale


def _write(old: MemoryState, new: MemoryState, writes: str) -> MemoryState:
    """`writes: grad` keeps the new state; `stop` makes the change stop-gradient (reads stay
    differentiable w.r.t. the state the chunk started from)."""
    if writes == "grad":
        return new
    ws = tuple(o + (n - o).detach() for o, n in zip(old.weights, new.weights, strict=True))
    mom = None if new.momentum is None else tuple(m.detach() for m in new.momentum)
    return MemoryState(ws, mom)


def _zeros(shape: tuple[int, ...], device: torch.device | None, dtype: torch.dtype) -> Tensor:
    """Initial zero state. Under grad mode it requires grad like every later state does, so the
    compiled pieces see one input signature (no recompile after the first chunk)."""
    return torch.zeros(shape, device=device, dtype=dtype).requires_grad_(torch.is_grad_enabled())


def _slice_gate(g: Tensor | float | None, sl: slice) -> Tensor | float | None:
    return g[:, :, sl] if isinstance(g, Tensor) else g


def _cat_gates(gs: list[Tensor | float | None]) -> Tensor | float | None:
    return torch.cat(gs, dim=2) if isinstance(gs[0], Tensor) else gs[0]   # type: ignore[arg-type]


class SelfModifyingTitans(nn.Module):
    """Hope's self-modifying Titans layer: `y, state = layer(x, state)`, x, y: (B, T, D)."""

    def __init__(
        self,
        *,
        width: int,
        heads: int,
        mem_mlp: MLPMemory,
        proj_mlp: MLPMemory,
        mem_rule: InnerRule,
        proj_rule: InnerRule,
        adaptive: Sequence[str] = ("k", "v", "eta", "alpha"),
        c_mem: int = 16,
        c_other: int = 16,
        conv: int = 4,
        qk_norm: bool = True,
        v_norm: bool = False,
        output_gate: bool = True,
        values: str = "self",
        ctx: BuildContext | None = None,
        node: Any = None,
        name: str = "self_modifying",
        mem_ir: ir.MLPMemory | None = None,
        proj_ir: ir.MLPMemory | None = None,
        keys: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        ctx = ctx or BuildContext(ir.Spec(name=name), CompileConfig(enabled=False))
        self.name, self.width, self.heads, self.head_dim = name, width, heads, width // heads
        self.mem_mlp, self.proj_mlp = mem_mlp, proj_mlp
        self.mem_rule, self.proj_rule = mem_rule, proj_rule
        self.c_mem, self.c_other = c_mem, c_other
        self.window = max(c_mem, c_other)
        self.stream_chunk = self.window    # a stream continues from window-boundary states only
        self.qk_norm, self.v_norm, self.output_gate = qk_norm, v_norm, output_gate
        self.values = values
        self.conv_width = conv
        self.mem_ir, self.proj_ir = mem_ir, proj_ir
        # the spec's names of M_mem's and the projections' memories (`--kernel NAME=…`)
        self.keys = keys or {"mem": "mem", "proj": "projection"}
        self.notes: list[str] = []
        H, d = heads, self.head_dim

        # Which projections are memories. η / α memories exist only if a learned gate reads them.
        rules = {"mem": mem_rule, "proj": proj_rule}
        learned = {role: any(isinstance(r.gate(role), ir.LearnedGate) for r in rules.values())
                   for role in GATE_ROLES}
        self.roles: list[str] = []
        for r in ROLES:
            if r not in adaptive:
                continue
            gate_role = {"eta": "lr", "alpha": "retention"}.get(r)
            if gate_role is not None and not learned[gate_role]:
                self.notes.append(f"M_{r} not built: no rule uses a learned "
                                  f"{gate_role} (all constant or none), so it has no consumer")
                continue
            self.roles.append(r)

        # Meta-learned initial states θ_{□,0}: (H, out, in) per weight, shared over the batch.
        self.theta0 = nn.ModuleDict()
        self.theta0["mem"] = nn.ParameterList(
            nn.Parameter(w) for w in mem_mlp.init_weights(H, d, d))
        for r in self.roles:
            self.theta0[r] = nn.ParameterList(
                nn.Parameter(w) for w in proj_mlp.init_weights(H, d, d))
        # inner norms' gain and bias (outer parameters), one pair per memory that has a norm
        self.norms = nn.ModuleDict()
        gain = {g: 1.0 if m is None else m.norm_gain for g, m in (("mem", mem_ir), ("proj", proj_ir))}
        if mem_mlp.norm:
            self.norms["mem"] = NormParameters(H, d, gain["mem"])
        if proj_mlp.norm:
            for r in self.roles:
                self.norms[r] = NormParameters(H, d, gain["proj"])

        # inner-lr warm-ups (rule.lr_warmup): η · min(1, (s + 1)/N) at outer step s
        self.lr_warmups = nn.ModuleDict({g: w for g, m in (("mem", mem_ir), ("proj", proj_ir))
                                         if m is not None and (w := lr_warmup_of(m)) is not None})
        # read-path normalisation of M_mem (memory.read_norm): q + g RMSNorm(M(q) − q)
        self.read_norm = (ReadNorm(H, d, mem_ir.read_norm)
                          if mem_ir is not None and mem_ir.read_norm is not None else None)
        # Static projections (not adaptive): q by default; k / v in the ablations.
        self.static = nn.ModuleDict({r: nn.Linear(width, width, bias=False)
                                     for r in ("q", "k", "v") if r not in self.roles})
        self.conv = nn.ModuleDict({r: ShortConv(width, conv) for r in ("q", "k", "v")}) if conv else None

        # Gates per group ("mem" = M_mem, "proj" = the projection memories) and role.
        self.gates = nn.ModuleDict()
        for group, rule in rules.items():
            for role in GATE_ROLES:
                g = rule.gate(role)
                if not isinstance(g, ir.LearnedGate):
                    continue
                src = GATE_SOURCE.get(role)
                if src is not None and src in self.roles:
                    self.gates[f"{group}_{role}"] = GeneratedGate(H, d, g, role)
                else:
                    self.gates[f"{group}_{role}"] = LearnedGateModule(width, H, g, role)

        self.out_norm = RMSNorm(d) if output_gate else None
        self.gate_proj = nn.Linear(width, width, bias=False) if output_gate else None
        self.out_proj = nn.Linear(width, width, bias=False)

        self.probe = telemetry.NonFiniteProbe()       # first non-finite token of M_mem's reads
        self._inner_losses: list[tuple[Tensor, Tensor]] = []   # telemetry: M_mem before/after
        self._dynamics: list[tuple[Tensor, Tensor, Tensor]] = []   # M_mem write, norm, share
        cfg = ctx.compile
        self.compile_config = cfg
        self._gen = Compiled(self._generate, f"{name}.generate", cfg)
        self._out = Compiled(self._output, f"{name}.output", cfg)
        # one compiled chunk step for every MLP memory of every layer (shared dynamo cache)
        self._mlp_step = Compiled(mlp_chunk_step, "ops.mlp_chunk_step", cfg)

    # ------------------------------------------------------------------------------------------
    # construction from the IR

    @classmethod
    def from_spec(cls, layer_ir: ir.SelfModifyingLayer, spec: ir.Spec, width: int, heads: int, *,
                  compile_config: CompileConfig | None = None,
                  name: str = "self_modifying") -> SelfModifyingTitans:
        ctx = BuildContext(spec, compile_config or CompileConfig(enabled=False))
        mem, proj = ctx.memory(layer_ir.memory), ctx.memory(layer_ir.projections)
        # the checker's rules (check/checker.py `_check_layers`): asserted, not re-validated
        assert isinstance(mem, ir.MLPMemory) and isinstance(proj, ir.MLPMemory), \
            "self_modifying memories are mlps (checker)"
        H = mem.heads or heads
        assert proj.heads in (None, H) and width % H == 0, "heads agree and divide the width (checker)"
        d = width // H
        c_mem, c_other = ctx.chunk_size(layer_ir.memory), ctx.chunk_size(layer_ir.projections)
        assert max(c_mem, c_other) % min(c_mem, c_other) == 0, "chunk sizes nest (checker)"
        assert proj.read == PROJECTION_READ, "resolved and checked (spec/resolve.py, checker)"
        mem_rule, proj_rule = InnerRule.of(mem, d), InnerRule.of(proj, d)
        return cls(
            width=width, heads=H,
            mem_mlp=_mlp_of(mem, d), proj_mlp=_mlp_of(proj, d),
            mem_rule=mem_rule, proj_rule=proj_rule, adaptive=tuple(layer_ir.adaptive),
            c_mem=c_mem, c_other=c_other, conv=layer_ir.conv, qk_norm=layer_ir.qk_norm,
            v_norm=layer_ir.v_norm, values=layer_ir.values,
            output_gate=layer_ir.output_gate, ctx=ctx, node=layer_ir, name=name,
            mem_ir=mem, proj_ir=proj,
            keys={"mem": layer_ir.memory, "proj": layer_ir.projections},
        )

    # ------------------------------------------------------------------------------------------
    # state

    def initial_state(self, batch: int, device: torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> HopeState:
        """θ_{□,0} broadcast over the batch, zero momentum, zero conv caches, pos 0."""
        mems: dict[str, MemoryState] = {}
        for name, mod in self.theta0.items():
            plist = cast(nn.ParameterList, mod)
            rule = self.mem_rule if name == "mem" else self.proj_rule
            # materialised (not stride-0 views), so the compiled step sees one layout per call
            ws = tuple(p.to(dtype).expand(batch, *p.shape).contiguous() for p in plist)
            mom = (tuple(_zeros((batch, *p.shape), p.device, dtype) for p in plist)
                   if rule.momentum is not None else None)
            mems[name] = MemoryState(ws, mom)
        conv: dict[str, Tensor] = {}
        if self.conv is not None:
            dev = device if device is not None else self.out_proj.weight.device
            conv = {r: _zeros((batch, self.conv_width - 1, self.width), dev, dtype)
                    for r in ("q", "k", "v")}
        return {"mems": mems, "conv": conv, "pos": 0}

    # ------------------------------------------------------------------------------------------
    # forward

    def forward(self, x: Tensor, state: HopeState | None = None) -> tuple[Tensor, HopeState]:
        B, T, _ = x.shape
        if state is None:
            state = self.initial_state(B, x.device, x.dtype)
        elif state["pos"] % self.window:
            raise ValueError(f"{self.name}: cannot continue a stream {state['pos']} tokens in, in the "
                             f"middle of a chunk of {self.window}; split segments at multiples of "
                             f"max(C_mem, C_other) = {self.window} (the model's forward_incremental "
                             "continues anywhere)")
        st: HopeWindowState = {"mems": state["mems"], "conv": state["conv"]}
        self._inner_losses, self._dynamics = [], []
        windows = x.split(self.window, dim=1)   # one concatenation in backward (not T-long zeros)
        G = self.compile_config.checkpoint_every
        if G and len(windows) >= 2 * G and torch.is_grad_enabled():
            ys, outs = [], []
            for lo in range(0, len(windows), G):
                part = windows[lo:lo + G]
                y, st, o = checkpoint(self._windows, part, st, [True], use_reentrant=False)
                ys.append(y)
                outs.append(o)
            y, o = torch.cat(ys, dim=1), torch.cat(outs, dim=2)
        else:
            y, st, o = self._windows(windows, st, [True])
        self.probe.update(o)
        if telemetry.active():
            self._telemetry(state["mems"], st["mems"])
        return y, {**st, "pos": state["pos"] + T}

    def _windows(self, windows: Sequence[Tensor], st: HopeWindowState, first: list[bool]
                 ) -> tuple[Tensor, HopeWindowState, Tensor]:
        """Run consecutive windows from state `st` (a Python loop: the step graph is one window
        long). Under `checkpoint_every` = G the forward keeps only every G-th window's state and
        backward re-runs a group from it; `first` (a one-element flag, cleared after the forward)
        keeps that recomputation from recording telemetry twice."""
        ys, outs = [], []
        record, first[0] = first[0], False
        for xw in windows:
            y, st, o = self._chunk_step(xw, st, record=record)
            ys.append(y)
            outs.append(o)
        return torch.cat(ys, dim=1), st, torch.cat(outs, dim=2)

    @torch.no_grad()
    def _telemetry(self, first: dict[str, MemoryState], last: dict[str, MemoryState]) -> None:
        """State and update norms of every memory; M_mem's inner loss before/after each write."""
        for name, st in last.items():
            w0 = [w.expand_as(w1) for w, w1 in zip(first[name].weights, st.weights, strict=True)]
            stats: telemetry.MemoryStats = {
                "state_norm": telemetry.state_norm(st.weights).mean(),
                "update_norm": telemetry.state_norm(
                    [a - b for a, b in zip(st.weights, w0, strict=True)]).mean()}
            if name == "mem" and self._inner_losses:
                stats["loss_before"] = torch.stack([b for b, _ in self._inner_losses]).mean()
                stats["loss_after"] = torch.stack([a for _, a in self._inner_losses]).mean()
            if name == "mem" and self._dynamics:
                sizes, norms, shares = zip(*self._dynamics, strict=True)
                stats["write_size"] = telemetry.mean_finite(sizes)
                stats["state_growth"] = norms[-1] / norms[0].clamp_min(1e-12)
                if self.mem_mlp.residual:
                    stats["branch_share"] = torch.stack(shares).mean()
            telemetry.record(f"{self.name} M_{name}", stats)

    def _norm(self, name: str) -> tuple[Tensor, Tensor] | None:
        """(gain, bias) of memory `name`'s inner norm, or None (no norm)."""
        return self.norms[name]() if name in self.norms else None

    def _gate(self, group: str, role: str, xs: Tensor, feats: dict[str, Tensor]) -> Tensor | float | None:
        rule = self.mem_rule if group == "mem" else self.proj_rule
        g = rule.gate(role)
        if g is None:
            return None
        div = rule.lr_divisor if role == "lr" else 1.0        # η / d_head (lr_per_dim)
        warm = (cast(LrWarmup, self.lr_warmups[group]).factor
                if role == "lr" and group in self.lr_warmups else None)
        key = f"{group}_{role}"
        if key not in self.gates:
            if warm is None:
                return float(cast(float, g)) / div   # learned gates all have modules
            # a (B, H, l) gate, like a learned one: the chunk loop slices and concatenates it
            return warm.expand(xs.shape[0], self.heads, xs.shape[1]) * (float(cast(float, g)) / div)
        mod = self.gates[key]
        out = mod(feats[GATE_SOURCE[role]]) if isinstance(mod, GeneratedGate) else mod(xs)
        out = out / div if div != 1.0 else out
        return out if warm is None else out * warm

    def _target(self, v: Tensor, weights: tuple[Tensor, ...], mlp: MLPMemory, name: str) -> Tensor:
        """Memory `name`'s inner-loss target: v̂ = M(θ_c; v_t) (Eq. 84) or the shared v_t (Eq. 79)."""
        return mlp_forward(weights, v, mlp, self._norm(name)) if self.values == "self" else v

    def _proj_norms(self) -> tuple[Tensor, Tensor] | None:
        """The projection memories' inner-norm (gain, bias), stacked in `roles` order: (R, H, d)."""
        if not self.proj_mlp.norm:
            return None
        ps = [self.norms[r]() for r in self.roles]
        return torch.stack([p[0] for p in ps]), torch.stack([p[1] for p in ps])

    def _generate(self, xs: Tensor, stacked: tuple[Tensor, ...], conv: dict[str, Tensor]
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, list[Tensor | float | None],
                             list[Tensor | float | None], dict[str, Tensor]]:
        """Everything one C_other chunk generates from the chunk-start states (Eqs. 83–84, 90).

        xs: (B, l, D); stacked: the projection memories' θ_{□,c(t)} stacked along the batch in
        `roles` order, each weight (R·B, H, out, in) (empty without roles). Every memory reads
        the same x_t (and its target reads the same v_t), so one broadcast forward over the R
        stacked states computes all of them. Returns q, k, v (B, H, l, d), the targets
        v̂_□ = M_□(θ_{□,c(t)}; v_t) stacked like the states, (R·B, H, l, d) (None without roles),
        the gates (η, α, β) of M_mem and of the projection memories, and the new conv caches.
        """
        H, R = self.heads, len(self.roles)
        xh = split_heads(xs, H)                                              # (B, H, l, d)
        ws = tuple(w.unflatten(0, (R, -1)) for w in stacked)                 # (R, B, H, out, in)
        norm = self._proj_norms()
        norm = None if norm is None else (norm[0][:, None], norm[1][:, None])  # (R, 1, H, d)
        gen = dict(zip(self.roles, mlp_forward(ws, xh, self.proj_mlp, norm).unbind(0),
                       strict=True)) if R else {}                # M_□(θ_{□,c(t)}; x_t) (Eq. 83/90)
        conv = dict(conv)
        qkv = {}
        for r in ("q", "k", "v"):
            # adaptive: k_t = M_k(θ_{k,c(t)}; x_t); static: k_t = x_t W_k
            pre = merge_heads(gen[r]) if r in gen else self.static[r](xs)
            if self.conv is not None:
                pre, cache = self.conv[r](pre, conv[r])
                conv[r] = cache.contiguous()       # one layout for every call (no recompile)
            qkv[r] = split_heads(F.silu(pre), H)
        q, k, v = qkv["q"], qkv["k"], qkv["v"]
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if self.v_norm:      # bounded targets: every memory regresses onto M(v_t) with ‖v_t‖ = 1
            v = F.normalize(v, dim=-1)
        feats: dict[str, Tensor] = {r: gen[r] for r in ("eta", "alpha") if r in gen}  # M_η, M_α(x_t)
        mem_g = [self._gate("mem", role, xs, feats) for role in GATE_ROLES]
        proj_g = [self._gate("proj", role, xs, feats) for role in GATE_ROLES]
        targets = None
        if R:
            targets = (mlp_forward(ws, v, self.proj_mlp, norm) if self.values == "self"
                       else v.expand(R, *v.shape)).flatten(0, 1)
        return q, k, v, targets, mem_g, proj_g, conv

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """Output norm + gate + projection (Titans §4.4): o (B, H, L, d), x (B, L, D)."""
        if self.out_norm is not None and self.gate_proj is not None:
            y = merge_heads(self.out_norm(o)) * torch.sigmoid(self.gate_proj(x))
        else:
            y = merge_heads(o)
        return self.out_proj(y)

    def _stack_projections(self, mems: dict[str, MemoryState], B: int) -> MemoryState:
        """The projection memories' states stacked along the batch in `roles` order: (R·B, …)."""
        def stack(ts: list[Tensor]) -> Tensor:
            return torch.cat([t.expand(B, *t.shape[-3:]) for t in ts])

        old = [mems[r] for r in self.roles]
        return MemoryState(
            tuple(stack([m.weights[i] for m in old]) for i in range(len(old[0].weights))),
            None if old[0].momentum is None else
            tuple(stack([cast("tuple[Tensor, ...]", m.momentum)[i] for m in old])
                  for i in range(len(old[0].momentum))))

    def _write_projections(self, state: MemoryState, k: Tensor, targets: Tensor,
                           gates: list[Tensor | float | None]) -> dict[str, MemoryState]:
        """One C_other write of every projection memory (Eq. 88), as one batched chunk step.

        The memories share the keys k_t, the MLP shape, the rule and the gates, and differ only in
        their states and targets, so they run stacked along the batch dimension (`state`,
        `targets`: (R·B, …)): one call (one compiled graph launch) instead of one per memory,
        with identical per-memory values.
        """
        roles, B = self.roles, k.shape[0]
        R = len(roles)
        g = [x.repeat(R, 1, 1) if isinstance(x, Tensor) else x for x in gates]
        norm = self._proj_norms()     # per-memory gain/bias, stacked like the states: (R·B, H, d)
        if norm is not None:
            norm = cast("tuple[Tensor, Tensor]",
                        tuple(p[:, None].expand(R, B, *p.shape[1:]).flatten(0, 1) for p in norm))
        step = self._step_fn("proj", k.shape[2])
        _, new = step(state, None, k.repeat(R, 1, 1, 1), targets,
                                *g, spec=self.proj_mlp, objective=self.proj_rule.objective,
                                rule=self.proj_rule.kind, read=PROJECTION_READ, erase=self.proj_rule.erase,
                                norm=norm, normalized_lr=self.proj_rule.normalized_lr)
        new = _write(state, new, self.proj_rule.writes)
        ws = [w.split(B) for w in new.weights]
        ms = None if new.momentum is None else [m.split(B) for m in new.momentum]
        return {r: MemoryState(tuple(w[j] for w in ws), None if ms is None else tuple(m[j] for m in ms))
                for j, r in enumerate(roles)}

    def _chunk_step(self, x: Tensor, st: HopeWindowState, *, record: bool = True
                    ) -> tuple[Tensor, HopeWindowState, Tensor]:
        """One step of max(C_mem, C_other) tokens (fewer at the end): x (B, L, D).

        Glue in Python; the pieces (`_generate`, the memories' `mlp_chunk_step`, `_output`) are
        compiled separately. The chunk step graph is shared by every memory of a configuration
        and by every layer (dynamo caches per code object), so compile time does not grow with
        the depth either.
        """
        mems: dict[str, MemoryState] = dict(st["mems"])
        conv: dict[str, Tensor] = st["conv"]
        L = x.shape[1]
        qs, ks, vs = [], [], []
        mem_gates: list[list[Tensor | float | None]] = [[], [], []]

        # 1. projection memories, every C_other tokens: generate, then write (Eqs. 83–88)
        for s in range(0, L, self.c_other):
            stacked = self._stack_projections(mems, x.shape[0]) if self.roles else None
            q, k, v, targets, mem_g, proj_g, conv = self._gen(
                x[:, s:s + self.c_other], stacked.weights if stacked is not None else (), conv)
            if stacked is not None:
                mems.update(self._write_projections(stacked, k, targets, proj_g))
            qs.append(q)
            ks.append(k)
            vs.append(v)
            for i in range(3):
                mem_gates[i].append(mem_g[i])
        q, k, v = torch.cat(qs, dim=2), torch.cat(ks, dim=2), torch.cat(vs, dim=2)
        lr, ret, mom = (_cat_gates(g) for g in mem_gates)

        # 2. main memory, every C_mem tokens: v̂_mem = M_mem(θ_{mem,c_m(t)}; v_t), read o_t
        outs = []
        for s in range(0, L, self.c_mem):
            sl = slice(s, s + self.c_mem)
            norm = self._norm("mem")
            target = self._target(v[:, :, sl], mems["mem"].weights, self.mem_mlp, "mem")
            step = self._step_fn("mem", target.shape[2])
            o, new = step(mems["mem"], q[:, :, sl], k[:, :, sl], target,
                                    _slice_gate(lr, sl), _slice_gate(ret, sl), _slice_gate(mom, sl),
                                    spec=self.mem_mlp, objective=self.mem_rule.objective,
                                    rule=self.mem_rule.kind, read=self.mem_rule.read,
                                    erase=self.mem_rule.erase, norm=norm,
                                    normalized_lr=self.mem_rule.normalized_lr)
            if self.read_norm is not None:
                o = self.read_norm(o, q[:, :, sl])
            if record and telemetry.active():
                with torch.no_grad():
                    kc, obj = k[:, :, sl], self.mem_rule.objective
                    self._inner_losses.append(cast("tuple[Tensor, Tensor]", tuple(
                        obj.loss(mlp_forward(w, kc, self.mem_mlp, norm), target).mean()
                        for w in (mems["mem"].weights, new.weights))))
                    self._dynamics.append((telemetry.write_size(mems["mem"].weights, new.weights),
                                           telemetry.state_norm(new.weights).mean(),
                                           telemetry.branch_share(o, q[:, :, sl])))
            mems["mem"] = _write(mems["mem"], new, self.mem_rule.writes)
            outs.append(o)
        o = torch.cat(outs, dim=2).to(x.dtype)                                # (B, H, L, d)
        return self._out(o, x), {"mems": mems, "conv": conv}, o

    # ------------------------------------------------------------------------------------------
    # plan

    def in_context_levels(self) -> list[str]:
        """Levels whose state lives in this layer's streaming state (C_mem, C_other)."""
        names = [self.mem_ir.level if self.mem_ir else None, self.proj_ir.level if self.proj_ir else None]
        return list(dict.fromkeys(n or "token" for n in names))

    # ------------------------------------------------------------------------------------------
    # which kernel runs each memory group's chunk steps (ops/kernels.py)

    def kernel_call(self, group: str, L: int | None = None) -> kernels.MemoryCall:
        mlp, rule = (self.mem_mlp, self.mem_rule) if group == "mem" else (self.proj_mlp,
                                                                           self.proj_rule)
        C = self.c_mem if group == "mem" else self.c_other
        p = self.out_proj.weight
        return kernels.MemoryCall(
            memory=mlp, objective=rule.objective, rule=rule.kind, erase=rule.erase,
            read=rule.read if group == "mem" else PROJECTION_READ, chunk_size=L or C,
            retention=rule.retention is not None, momentum=rule.momentum is not None,
            d_key=self.head_dim, d_value=self.head_dim, device=p.device, dtype=p.dtype,
            compile=self.compile_config.enabled, training=torch.is_grad_enabled(),
            T=L, joint=True, normalized_lr=rule.normalized_lr)

    def forced_kernel(self, group: str) -> str | None:
        forced = self.compile_config.kernels
        return forced.get(self.keys[group], forced.get("*"))

    def kernel_rows(self) -> list[kernels.KernelChoice]:
        """The kernel choice of each memory group (`--explain`, the plan)."""
        return [kernels.explain(f"{self.name} ({label})", self.keys[group],
                                self.kernel_call(group), self.forced_kernel(group))
                for group, label in (("mem", "M_mem"), ("proj", "projections"))]

    def _step_fn(self, group: str, L: int) -> Any:
        """The chunk step for `group`'s memories on a chunk of L tokens: the chosen kernel's
        (joint calls only accept kernels with one). "compiled" runs through this layer's own
        wrapper (eager when compile is off; falling back to eager visibly when the compiler
        fails); a forced "chunked" under compile runs the eager step."""
        kernel = kernels.choose(self.kernel_call(group, L), self.forced_kernel(group))
        if kernel.name == "compiled" or (kernel.name == "chunked" and not self.compile_config.enabled):
            return self._mlp_step
        assert kernel.chunk_step is not None, "joint calls are refused by kernels without one"
        return kernel.chunk_step()

    def plan(self) -> list[PlanRow]:
        total = sum(p.numel() for p in self.parameters())
        proj_counts = {r: sum(p.numel() for p in cast(nn.ParameterList, self.theta0[r]))
                       for r in self.roles}
        status, why = compile_status(self.compile_config, [self._gen.name, self._mlp_step.name, self._out.name],
                                     "generation, memory chunk steps, output (Python loop over chunks)")
        static = sorted(self.static.keys())
        notes = [why,
                 f"memories: {', '.join(['mem'] + self.roles)}; static projections: "
                 f"{', '.join(static) or 'none'}",
                 ("targets v̂ = M(θ_c(t); v_t) (self-generated, Eq. 84)" if self.values == "self"
                  else "targets v_t shared by every memory (Eq. 79)") + f"; gates η {describe_gate(self.mem_rule.lr, '1')}, "
                 f"α {describe_gate(self.mem_rule.retention, 'none')}, β {describe_gate(self.mem_rule.momentum, 'none')}",
                 f"step = {self.window} tokens (C_mem {self.c_mem}, C_other {self.c_other})",
                 *self.notes]
        target = "v̂" if self.values == "self" else "v"
        mem_upd = _update(self.mem_ir, self.c_mem, target)
        kern = dict(zip(("mem", "proj"), (row.shown for row in self.kernel_rows()), strict=True))
        rows = [PlanRow(name=f"{self.name} (M_mem)", kind="self_modifying",
                        implementation="mlp chunk step (closed-form grads" +
                        (", UT solve for DGD)" if self.mem_rule.kind == "dgd" else ")"),
                        chunk_size=self.c_mem, read=self.mem_rule.read, writes=self.mem_rule.writes,
                        params=total - sum(proj_counts.values()), compiled=status, update=mem_upd,
                        kernel=kern["mem"], notes=notes)]
        for r in self.roles:
            rows.append(PlanRow(name=f"{self.name} (M_{r})", kind="self_modifying projection",
                                implementation="mlp chunk step, generated at the chunk start",
                                chunk_size=self.c_other, read=PROJECTION_READ, writes=self.proj_rule.writes,
                                params=proj_counts[r], compiled=status, kernel=kern["proj"],
                                update=_update(self.proj_ir, self.c_other, target)))
        return rows


def _mlp_of(mem: ir.MLPMemory, head_dim: int) -> MLPMemory:
    """The per-head MLP of a resolved memory spec (Hope's memories default to residual)."""
    spec = memory_function(mem, head_dim)
    assert isinstance(spec, MLPMemory)
    return _MLP_SPECS.setdefault(spec, spec)   # one object per description: shared compiled graphs


_MLP_SPECS: dict[MLPMemory, MLPMemory] = {}


def _update(mem: ir.Memory | None, C: int, target: str) -> str:
    """The memory's update with Hope's target (v̂ or the shared v; the one renderer, graph/)."""
    return "" if mem is None else update_equation(mem, C, target=target)


@register_layer("self_modifying")
def build_self_modifying(ctx: BuildContext, node: ir.SelfModifyingLayer, name: str) -> nn.Module:
    return SelfModifyingTitans.from_spec(node, ctx.spec, ctx.width, ctx.model.heads,
                                         compile_config=ctx.compile, name=name)
