"""Continuum Memory System layer (NL paper arXiv §7.1, Eqs. 70–74; docs/design.md §3.3).

Stages MLP^(1..k), each MLP(x) = W_out σ(W_in x) (no biases, hidden = `hidden` × width), with its
own level. Wiring (`mode`):

    chain:       h_1 = MLP_1(x);  h_s = h_{s−1} + MLP_s(RMSNorm_s(h_{s−1}))  (s ≥ 2);  y = h_k
                 (Eq. 70 with the omitted normalisations as pre-norm residual blocks; x is
                 already pre-normed by the block, so one stage is exactly a Transformer MLP)
    independent: y = Σ_s softmax(w)_s MLP_s(x)             (Eq. 74, learned weighted sum)
    nested:      chain wiring; stage s is reset to its meta-learned initial state every period of
                 stage s+1 (stages go fastest → slowest, as the checker requires; §3.2 "Nested
                 CMS": the slower level owns and re-initialises the faster one)

Each stage's level is classified from its period (`nestdsl.spec.periods.classify`, with seq_len
and tokens per step = batch × seq_len from the spec's `data`, or the ir._Data defaults):

* **persistent** (period in steps, or a multiple of tokens per step): the weights are ordinary
  parameters; `persistent_levels()` lists them with k so the runtime steps them every k optimizer
  steps with the accumulated gradient (MultiSteps, docs/design.md §3.3).
* **in-context** (period C < seq_len tokens): the weights are *fast* state per sequence,
  starting from the stage's meta-learned initial weights (nn.Parameters; reads are
  differentiable, so they learn by backprop). Reads inside a chunk use the chunk-start state
  θ_{c(t)} (Eq. 71: θ changes only every C tokens). Update signal:
  - `task`: θ ← θ − lr · Σ_{t ∈ finished chunk} ∇_θ CE_t (the exact next-token-loss gradient, a
    stop-gradient write) — done by `nestdsl.lower.sweep.task_sweep`; a plain forward call keeps
    θ fixed (it has no targets).
  - `local`: an associative memory on the stage's own input u_t (chain: the normed stage input):
    ℓ_t = ½‖MLP(θ_{c(t)}; u_t) − u_t W_v‖², W_v a learned projection initialised to the identity,
    θ ← θ − lr · Σ_{t ∈ chunk} ∇ℓ_t every C tokens — exactly `memory_scan(u, u, u W_v,
    memory=MLPMemory(...), objective="l2", rule="gd", lr=lr, chunk_size=C, read="chunk")` with
    one head; writes are differentiable (closed-form inner gradients).
  The state resets per sequence (state None) unless the stage has `scope: stream`: `carry(state)`
  gives the state to pass to the next sequence (stream stages kept, the others dropped).

Compilation: the stage MLPs run eagerly (two matmuls, nothing to fuse). A model with `task`
stages needs compiled graphs that can be back-propagated through twice (`task_sweep` uses
retain_graph): such a layer sets `CompileConfig.repeated_backward`, which turns off AOTAutograd's
donated buffers and inductor's in-place buffer reuse for this model's compiled functions only.

Streaming state (`CMSState`): {"__cms__": tag, "pos": tokens seen, "fast": {stage: (W_in,
W_out)} current fast weights (B, out, in) of in-context stages, "anchor": {stage: chunk-start
weights} of local stages}; segments may be split anywhere (local stages accumulate the partial chunk exactly: with plain GD
the chunk update is a sum of per-token gradients at θ_{c(t)}).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict, cast

import torch
from torch import Tensor, nn

from nestdsl.graph.schedule import Level
from nestdsl.lower.common import BuildContext, CompileConfig, RMSNorm
from nestdsl.lower.layer import PlanRow
from nestdsl.lower.registry import register_layer
from nestdsl.ops import MemoryState, MLPMemory, mlp_chunk_step, mlp_forward
from nestdsl.ops.mlp import _act
from nestdsl.spec import ir
from nestdsl.spec.periods import LevelKind

__all__ = ["CMSState", "StageLevel", "CMSLayerModule", "build_cms"]

_TAGS = itertools.count()


class CMSState(TypedDict):
    """Streaming state of a CMS layer (`CMSLayerModule`), a plain dict at runtime."""

    __cms__: str                           # the owning layer's tag (`task_sweep` finds it by it)
    pos: int                               # tokens seen
    fast: dict[int, tuple[Tensor, ...]]    # in-context stage index → current (W_in, W_out),
                                           # (B, hidden·D, D) and (B, D, hidden·D)
    anchor: dict[int, tuple[Tensor, ...]]  # local stages: the chunk-start weights θ_{c(t)}


@dataclass(frozen=True)
class StageLevel:
    """How one stage was lowered: its level (the spec's, classified once) and in-context update."""

    index: int
    clock: Level                 # in-context or persistent (the checker's rule)
    signal: str = "task"         # in-context: "task" | "local"
    scope: str = "sequence"
    lr: float = 0.01
    reset_every: int | None = None   # nested: tokens between resets to the initial state

    @property
    def level(self) -> str:
        return self.clock.name

    @property
    def kind(self) -> LevelKind:
        return self.clock.kind

    @property
    def tokens(self) -> int | None:
        """In-context chunk size C."""
        return self.clock.tokens_every

    @property
    def every_k(self) -> int:
        """Persistent: optimizer steps between updates."""
        return self.clock.every_k


def gated_mlp_forward(weights: Sequence[Tensor], x: Tensor, *, activation: str) -> Tensor:
    """W_out (σ(W_in x) ⊙ W_gate x): a gated stage (SwiGLU for silu), weights (..., out, in)."""
    w_in, w_gate, w_out = weights
    h = _act(torch.matmul(x, w_in.mT), activation) * torch.matmul(x, w_gate.mT)
    return torch.matmul(h, w_out.mT)


class CMSStageModule(nn.Module):
    """One MLP stage: weights (W_in (hidden·D, D), W_out (D, hidden·D)) — with `gated`,
    (W_in, W_gate, W_out) — = its persistent weights or its in-context initial state; optional
    pre-norm and (local) value projection."""

    def __init__(self, width: int, hidden: int, activation: str, *, norm: bool, local: bool,
                 gated: bool = False) -> None:
        super().__init__()
        self.mlp = MLPMemory(depth=2, hidden=hidden * width, activation=activation, residual=False)
        self.gated = gated
        w_in, w_out = self.mlp.init_weights(1, width, width)
        gate = [nn.Parameter(self.mlp.init_weights(1, width, width)[0][0])] if gated else []
        self.weights = nn.ParameterList([nn.Parameter(w_in[0]), *gate, nn.Parameter(w_out[0])])
        self.norm = RMSNorm(width) if norm else None
        self.value = nn.Linear(width, width, bias=False) if local else None
        if self.value is not None:
            with torch.no_grad():
                self.value.weight.copy_(torch.eye(width))


def _pieces(pos: int, T: int, periods: list[int]) -> list[tuple[int, int]]:
    """Split [0, T) at every absolute position pos + t that is a multiple of one of `periods`."""
    cuts = {0, T}
    for p in periods:
        first = (-pos) % p
        cuts.update(range(first, T, p))
    edges = sorted(c for c in cuts if 0 <= c <= T)
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


class CMSLayerModule(nn.Module):
    """A CMS layer: `y, state = layer(x, state)`, x, y: (B, T, D)."""

    def __init__(self, width: int, stages: list[ir.CMSStage], levels: list[StageLevel], *,
                 mode: str = "chain", name: str = "cms",
                 compile_config: CompileConfig | None = None) -> None:
        super().__init__()
        self.name, self.width, self.mode = name, width, mode
        self.levels = levels
        self.tag = f"cms{next(_TAGS)}"            # identifies this layer's state for task_sweep
        self.stages = nn.ModuleList(
            CMSStageModule(width, s.hidden, s.activation,
                           norm=(mode != "independent" and i > 0),
                           local=(lv.kind == LevelKind.IN_CONTEXT and lv.signal == "local"),
                           gated=s.gated)
            for i, (s, lv) in enumerate(zip(stages, levels, strict=True)))
        self.mix = nn.Parameter(torch.zeros(len(stages))) if mode == "independent" else None
        # the model's loss must go through nestdsl.lower.sweep.task_sweep when this is set
        self.uses_task_sweep = bool(self.task_stages())
        cfg = compile_config or CompileConfig(enabled=False)
        self.compile_config = cfg
        if self.uses_task_sweep:
            cfg.repeated_backward = True     # compiled graphs are back-propagated through twice
        # Stage MLPs run eagerly: two matmuls each, nothing for inductor to fuse, and compiling
        # them would cost one graph per (stage, weight layout) — persistent, broadcast initial
        # and written fast weights — for no measurable gain.
        self._mlp = [functools.partial(gated_mlp_forward, activation=s.mlp.activation) if s.gated
                     else functools.partial(mlp_forward, spec=s.mlp) for s in self._stage_modules]

    @property
    def _stage_modules(self) -> Sequence[CMSStageModule]:
        """`stages` with its element type (an `nn.ModuleList` is typed as holding `nn.Module`)."""
        return cast("Sequence[CMSStageModule]", self.stages)

    @classmethod
    def from_spec(cls, layer_ir: ir.CMSLayer, ctx: BuildContext, *, name: str = "cms") -> CMSLayerModule:
        # the rules (known cms and levels, in-context or persistent periods, nested periods that
        # nest) are the checker's (check/checker.py `_check_periods`, `_check_nested`): asserted
        cms = ctx.spec.cms[layer_ir.cms]
        clocks = [ctx.level(st.level) for st in cms.stages]
        ok = (LevelKind.IN_CONTEXT, LevelKind.PERSISTENT)
        assert all(c.kind in ok for c in clocks), "cms periods are in-context or persistent (checker)"
        levels = []
        for i, (st, c) in enumerate(zip(cms.stages, clocks, strict=True)):
            reset = None
            if cms.mode == "nested" and i + 1 < len(cms.stages) and clocks[i + 1].kind == LevelKind.IN_CONTEXT:
                reset = clocks[i + 1].tokens_every
                assert c.kind == LevelKind.IN_CONTEXT and reset is not None and c.tokens_every is not None
                assert reset % c.tokens_every == 0, "nested periods nest (checker)"
            levels.append(StageLevel(i, c, st.signal, st.scope, st.lr, reset))
        return cls(ctx.width, list(cms.stages), levels, mode=cms.mode, name=name,
                   compile_config=ctx.compile)

    # ------------------------------------------------------------------------------------------
    # levels for the runtime and the sweep

    def persistent_levels(self) -> list[tuple[str, list[nn.Parameter], int]]:
        """(level name, its parameters, k): update every k optimizer steps (MultiSteps)."""
        return [(lv.level, list(self._stage_modules[lv.index].weights), int(lv.every_k or 1))
                for lv in self.levels if lv.kind == LevelKind.PERSISTENT]

    def level_params(self) -> dict[str, list[nn.Parameter]]:
        """The persistent levels as the compiler collects them: level name → parameters."""
        out: dict[str, list[nn.Parameter]] = {}
        for lvl, params, _ in self.persistent_levels():
            out.setdefault(lvl, []).extend(params)
        return out

    def in_context_levels(self) -> list[str]:
        """Levels whose (fast) state lives in this layer's streaming state."""
        return list(dict.fromkeys(lv.level for lv in self.levels if lv.kind == LevelKind.IN_CONTEXT))

    def task_stages(self) -> list[StageLevel]:
        """In-context stages updated by the next-token loss (`task_sweep` writes them)."""
        return [lv for lv in self.levels if lv.kind == LevelKind.IN_CONTEXT and lv.signal == "task"]

    # ------------------------------------------------------------------------------------------
    # state

    def init_fast(self, i: int, batch: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """Stage i's meta-learned initial weights, one copy per sequence: (B, out, in)."""
        ws = []
        for p in self._stage_modules[i].weights:
            w = p.to(dtype).expand(batch, *p.shape).contiguous()   # dense: one compiled layout
            if not w.requires_grad:          # the task sweep differentiates the loss w.r.t. it
                w = w.detach().clone().requires_grad_(True)
            ws.append(w)
        return tuple(ws)

    def initial_state(self, batch: int, dtype: torch.dtype = torch.float32) -> CMSState:
        fast = {lv.index: self.init_fast(lv.index, batch, dtype)
                for lv in self.levels if lv.kind == LevelKind.IN_CONTEXT}
        anchor = {lv.index: fast[lv.index] for lv in self.levels
                  if lv.kind == LevelKind.IN_CONTEXT and lv.signal == "local"}
        return {"__cms__": self.tag, "pos": 0, "fast": fast, "anchor": anchor}

    def carry(self, state: CMSState) -> CMSState | None:
        """The state to start the next sequence with: `scope: stream` stages continue, the
        others restart from their initial state."""
        keep = [lv.index for lv in self.levels if lv.kind == LevelKind.IN_CONTEXT and lv.scope == "stream"]
        if not keep:
            return None
        B = next(iter(state["fast"].values()))[0].shape[0]
        dtype = next(iter(state["fast"].values()))[0].dtype
        new = self.initial_state(B, dtype)
        for i in keep:
            new["fast"][i] = state["fast"][i]
            if i in state["anchor"]:
                new["anchor"][i] = state["anchor"][i]
        new["pos"] = state["pos"]
        return new

    # ------------------------------------------------------------------------------------------
    # forward

    def forward(self, x: Tensor, state: CMSState | None = None) -> tuple[Tensor, CMSState]:
        B, T, _ = x.shape
        if state is None:
            state = self.initial_state(B, x.dtype)
        pos = state["pos"]
        fast, anchor = dict(state["fast"]), dict(state["anchor"])
        h, outs = x, []
        for i, (stage, lv) in enumerate(zip(self._stage_modules, self.levels, strict=True)):
            u = stage.norm(h) if stage.norm is not None else h
            if lv.kind == LevelKind.PERSISTENT:
                out = self._mlp[i](tuple(stage.weights), u)
            elif lv.signal == "task":
                out, fast[i] = self._task_stage(lv, u, fast[i], pos)
            else:
                out, fast[i], anchor[i] = self._local_stage(lv, u, fast[i], anchor[i], pos)
            if self.mode == "independent":
                outs.append(out)
            else:
                h = out if i == 0 else h + out
        if self.mix is not None:
            w = torch.softmax(self.mix, dim=0).to(x.dtype)
            h = cast(Tensor, sum(w[i] * o for i, o in enumerate(outs)))
        return h, {"__cms__": self.tag, "pos": pos + T, "fast": fast, "anchor": anchor}

    def _reset_due(self, lv: StageLevel, p: int) -> bool:
        return lv.reset_every is not None and p > 0 and p % lv.reset_every == 0

    def _task_stage(self, lv: StageLevel, u: Tensor, ws: tuple[Tensor, ...], pos: int
                    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Read with the current fast weights (written between calls by `task_sweep`)."""
        outs = []
        for a, b in _pieces(pos, u.shape[1], [lv.reset_every] if lv.reset_every else []):
            if self._reset_due(lv, pos + a):
                ws = self.init_fast(lv.index, u.shape[0], u.dtype)
            outs.append(self._mlp[lv.index](ws, u[:, a:b]))
        return torch.cat(outs, dim=1), ws

    def _local_stage(self, lv: StageLevel, u: Tensor, cur: tuple[Tensor, ...], anchor: tuple[Tensor, ...],
                     pos: int) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Associative L2 memory on (u_t, u_t W_v) with GD every C tokens, read at θ_{c(t)}."""
        stage = self._stage_modules[lv.index]
        assert stage.value is not None and lv.tokens is not None
        C = lv.tokens
        outs = []
        for a, b in _pieces(pos, u.shape[1], [C] + ([lv.reset_every] if lv.reset_every else [])):
            if self._reset_due(lv, pos + a):
                cur = anchor = self.init_fast(lv.index, u.shape[0], u.dtype)
            uc = u[:, None, a:b]                                        # (B, 1, l, D)
            o, new = mlp_chunk_step(MemoryState(tuple(w[:, None] for w in anchor)), uc, uc,
                                    stage.value(uc), lv.lr, None, None, spec=stage.mlp,
                                    objective="l2", rule="gd", read="chunk")
            assert o is not None                                        # q was given: a read
            # the partial chunk's update Δ = Σ_t −lr ∇ℓ_t(θ_{c(t)}) accumulates onto cur
            ends = tuple(n[:, 0] for n in new.weights)
            cur = ends if cur is anchor else tuple(
                c + n - an for c, n, an in zip(cur, ends, anchor, strict=True))
            if (pos + b) % C == 0:
                anchor = cur
            outs.append(o[:, 0])
        return torch.cat(outs, dim=1), cur, anchor

    # ------------------------------------------------------------------------------------------
    # plan

    def plan(self) -> list[PlanRow]:
        rows = []
        status, why = "eager", "eager: stage MLPs are two matmuls (nothing to fuse)"
        shared = sum(p.numel() for p in self.parameters()) - sum(
            p.numel() for s in self._stage_modules for p in s.weights)
        for lv, stage in zip(self.levels, self._stage_modules, strict=True):
            n = sum(p.numel() for p in stage.weights) + (shared if lv.index == 0 else 0)
            name = f"{self.name}.stages.{lv.index} ({lv.level})"
            mode = f"mode {self.mode}" + (f", reset every {lv.reset_every} tokens" if lv.reset_every else "")
            if lv.kind == LevelKind.PERSISTENT:
                rows.append(PlanRow(name, "cms stage", f"persistent {'gated ' if stage.gated else ''}MLP, "
                                    f"outer optimizer every {lv.every_k} "
                                    "step(s) with accumulated gradients (MultiSteps)", params=n,
                                    compiled=status, update="θ ← outer optimizer step every k steps",
                                    notes=[mode, why]))
            elif lv.signal == "task":
                rows.append(PlanRow(name, "cms stage", f"in-context{' gated' if stage.gated else ''}, "
                                    "task signal: stop-gradient write by "
                                    "task_sweep (chunked forward sweep)", lv.tokens, "chunk", "stop", n, status,
                                    update=f"θ ← θ − {lv.lr:g}·Σ_{{t∈chunk}} ∇_θ CE_t (first-order)",
                                    notes=[mode, f"scope {lv.scope}", "initial state meta-learned through reads",
                                           why]))
            else:
                rows.append(PlanRow(name, "cms stage", "in-context, local L2 signal: mlp chunk step",
                                    lv.tokens, "chunk", "grad", n, "eager (chunk step)",
                                    update=f"θ ← θ − {lv.lr:g}·Σ_{{t∈chunk}} ∇_θ ½‖MLP(θ_{{c(t)}}; u_t) − u_t W_v‖²",
                                    notes=[mode, f"scope {lv.scope}"]))
        return rows


@register_layer("cms")
def build_cms(ctx: BuildContext, node: ir.CMSLayer, name: str) -> nn.Module:
    return CMSLayerModule.from_spec(node, ctx, name=name)
