"""The exact in-context `task` signal of CMS levels: a chunked forward sweep (docs/design.md §3.3).

An in-context CMS stage with `signal: task` and period C learns inside the sequence from the
next-token loss of the chunk it just finished (NL paper Eq. 71 with f = ∇ of the task loss):

    θ_{j+1} = θ_j − lr · sg( Σ_{t ∈ chunk j} ∇_{θ_j} CE(logits_t, target_t) )

`task_sweep` runs the model segment by segment (segment = gcd of the task periods, i.e. the
smallest one when they nest) through `model.forward_stream(tokens_segment, state) -> (logits,
state)`, which carries every layer's state. At the end of each level's chunk it takes
g = torch.autograd.grad(loss over that chunk, the stage's current fast weights, retain_graph=True)
and writes θ − lr·g.detach() into the stage's state. Decisions:

* First order, stop-gradient writes: the write adds no graph (back-propagating through a
  gradient step would need double backward, which inductor cannot compile). Reads stay
  differentiable, and θ_{j+1} = θ_j − const keeps the identity path to θ_0, so the returned loss
  trains the meta-learned initial state (and every other outer parameter) by ordinary backprop.
* The chunk loss is the *sum* of the per-token losses of the chunk (Eq. 71 sums per-token
  gradients); each sequence of the batch has its own fast weights, so the gradient of the batch
  sum w.r.t. the (B, …) fast weights is per sequence. Masked tokens (mask = 0) contribute nothing.
* The returned loss is the mean next-token loss over the unmasked tokens of the whole sequence.
* Each CMS layer's state is found by walking the model state for dicts carrying "__cms__" (the
  layer's tag); its `state["fast"][stage]` holds the current fast weights.
* Positions are relative to the start of this call: with `scope: stream`, pass `state=` and use
  sequence lengths that are multiples of every task period (the checker already requires that
  in-context periods divide seq_len).

No Python branching on tensor values: the only conditions are on positions and periods.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal, Protocol, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves, tree_map

from nestdsl.lower.cms import CMSLayerModule, CMSState

__all__ = ["task_sweep", "task_periods", "find_cms_states"]


class _Streaming(Protocol):
    """What `task_sweep` needs of its model besides being an `nn.Module`."""

    def forward_stream(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]: ...


def find_cms_states(state: Any) -> Iterator[CMSState]:
    """Every CMS layer state (a dict with a "__cms__" tag) inside a model's streaming state."""
    if isinstance(state, dict):
        if "__cms__" in state:
            yield cast(CMSState, state)       # the tag marks a CMSLayerModule's state
            return
        for v in state.values():
            yield from find_cms_states(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from find_cms_states(v)


def task_periods(model: nn.Module) -> list[int]:
    """The distinct periods (tokens) of the model's in-context `task` CMS stages, ascending."""
    return sorted({lv.tokens for m in model.modules() if isinstance(m, CMSLayerModule)
                   for lv in m.task_stages() if lv.tokens is not None})


def _token_loss(logits: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
    """Σ_t weight_t · CE(logits_t, target_t) over the segment (B, l)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none", ignore_index=-100)
    return (ce.view_as(weight) * weight.to(ce.dtype)).sum()


@overload
def task_sweep(model: nn.Module, tokens: Tensor, targets: Tensor, mask: Tensor | None = None, *,
               state: Any = None, return_state: Literal[False] = False) -> Tensor: ...
@overload
def task_sweep(model: nn.Module, tokens: Tensor, targets: Tensor, mask: Tensor | None = None, *,
               state: Any = None, return_state: Literal[True]) -> tuple[Tensor, Any]: ...
@overload
def task_sweep(model: nn.Module, tokens: Tensor, targets: Tensor, mask: Tensor | None = None, *,
               state: Any = None, return_state: bool = False) -> Tensor | tuple[Tensor, Any]: ...
def task_sweep(model: nn.Module, tokens: Tensor, targets: Tensor, mask: Tensor | None = None, *,
               state: Any = None, return_state: bool = False) -> Tensor | tuple[Tensor, Any]:
    """Mean next-token loss of `model` on (tokens, targets), with in-context `task` writes.

    Args:
        model: has `forward_stream(tokens (B, l), state) -> (logits (B, l, V), state)`.
        tokens, targets: (B, T) int64 (targets −100 are ignored). mask: (B, T), 1 = count the
            token (None: all).
        state: the streaming state to start from (None: a fresh sequence).
        return_state: also return the final state (then the writes at the very end of the
            sequence are applied too, for `scope: stream`).
    Returns:
        the loss (differentiable w.r.t. every outer parameter), or (loss, state).
    """
    B, T = tokens.shape
    weight = (targets != -100).to(torch.float32)          # as `masked_cross_entropy`
    if mask is not None:
        weight = weight * mask.to(device=weight.device, dtype=torch.float32)
    periods = task_periods(model)
    layers = {m.tag: m for m in model.modules() if isinstance(m, CMSLayerModule)}
    segment = math.gcd(*periods) if periods else T
    piece = piece_length(periods) if periods else T

    def run(state: Any, a: int, b: int) -> tuple[Tensor, Any]:
        """Σ of the weighted token losses over [a, b), with the task writes due inside it."""
        total: Tensor | None = None
        chunk_loss: dict[int, Tensor] = {}
        starts: dict[tuple[str, int], tuple[Tensor, ...]] = {}
        for s in range(a, b, segment):
            e = min(s + segment, b)
            logits, state = cast(_Streaming, model).forward_stream(tokens[:, s:e], state)
            _note_chunk_starts(state, layers, starts)
            seg = _token_loss(logits, targets[:, s:e], weight[:, s:e])
            total = seg if total is None else total + seg
            for P in periods:
                chunk_loss[P] = chunk_loss[P] + seg if P in chunk_loss else seg
                if e % P == 0 and (e < T or return_state):
                    _write(state, layers, P, chunk_loss.pop(P), starts)
        assert total is not None, "empty sequence"
        return total, state

    with torch.enable_grad():
        if _piecewise(T, piece, state, return_state) and getattr(model, "sweep_pieces", True):
            params = [p for p in model.parameters() if p.requires_grad]
            total = _Pieces.apply(run, [(a, a + piece) for a in range(0, T, piece)], *params)
        else:
            total, state = run(state, 0, T)
    loss = total / weight.sum().clamp_min(1.0).to(total.dtype)
    return (loss, state) if return_state else loss


#: A piece is the smallest whole number of lcm(task periods) tokens that reaches this length:
#: forward keeps the whole model state (every memory's and CMS stage's fast weights) once per
#: piece, so short pieces keep more bytes per token (hope at width 1024: ~44 MiB of state per
#: layer and sequence, i.e. ~690 KiB per token and layer with 64-token pieces, ~170 with 256),
#: while inside a piece the walk of each write's backward grows with its length.
PIECE_TOKENS = 256


def piece_length(periods: list[int]) -> int:
    """Tokens per piece: a multiple of every task period (a piece boundary is a write)."""
    lcm = math.lcm(*periods)
    return lcm * max(1, -(-PIECE_TOKENS // lcm))


#: Run the sweep piece by piece (below) from this many pieces on. Measured on hope-tiny
#: (benchmarks/bench_sweep.py; one thread, fwd + bwd, seconds at T = 512 / 1024 / 2048): uncut
#: 1.87 / 7.52 / 21.4; pieces of 64 tokens 1.99 / 5.17 / 8.99, of 128 2.57 / 5.20 / 9.43, of 256
#: 2.27 / 6.54 / 11.1 (hope-sweep-piece-length-cpu-2026-11-28.json): with 256-token pieces the
#: recomputation pays for itself from 4 pieces (T = 1024) on, and they keep a quarter of the
#: 64-token pieces' state bytes for +24% time at T = 2048.
PIECEWISE_FROM = 4


def _piecewise(T: int, piece: int, state: Any, return_state: bool) -> bool:
    """Pieces pay one more forward (the recomputation) to make every write's backward and the
    kept activations independent of T: worth it for long sequences, under autograd, for a
    fresh sequence whose length is a whole number of pieces."""
    # A model may switch pieces off (`model.sweep_pieces = False`: FSDP2, whose hooks would run
    # inside the pieces' backward). Data parallelism without FSDP syncs gradients once after the
    # whole backward (`runtime/distributed.sync_gradients`), so the pieces' accumulation is fine.
    return (torch.is_grad_enabled() and state is None and not return_state and T % piece == 0
            and T // piece >= PIECEWISE_FROM)


def _leaves(state: Any) -> Any:
    """The state with every tensor that requires grad replaced by a fresh leaf (same values)."""
    return tree_map(lambda t: t.detach().requires_grad_() if isinstance(t, Tensor) and t.requires_grad
                    else t, state)


class _Pieces(torch.autograd.Function):
    """The sweep cut into pieces (`piece_length`: whole numbers of lcm(task periods) tokens), each
    its own autograd graph.

    Every task write of a piece differentiates a chunk loss that lies inside the piece, so its
    `autograd.grad` walks that piece's graph only, not everything since token 0 (which made the
    sweep O(T²)). Forward keeps just the (detached) model state at each piece start; backward
    recomputes the pieces last to first from those states, as leaves, and back-propagates each
    piece's loss together with the gradient its end state received from the next piece (the
    chain rule across the cut). The recomputation repeats the forward's ops on the same values,
    so the writes, the loss and every gradient are those of the uncut sweep (to rounding).
    """

    @staticmethod
    def forward(ctx: Any, run: Any, bounds: list[tuple[int, int]], *params: Tensor) -> Tensor:
        starts: list[Any] = []
        total, state = None, None
        for a, b in bounds:
            starts.append(state)
            with torch.enable_grad():
                loss, state = run(state, a, b)
            total = loss.detach() if total is None else total + loss.detach()
            state = _leaves(state)          # the graph of this piece is dropped here
        ctx.run, ctx.bounds, ctx.starts, ctx.n_params = run, bounds, starts, len(params)
        # the recomputation must see the forward's autocast (bf16 training)
        dev = params[0].device.type if params else "cpu"
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        return cast(Tensor, total)       # `bounds` is never empty (`_piecewise`)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, ...]:
        carry: list[Tensor | None] | None = None     # d loss / d (next piece's start state)
        for (a, b), start in zip(reversed(ctx.bounds), reversed(ctx.starts), strict=True):
            leaves = _leaves(start)
            dev, on, dtype = ctx.autocast
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=on):
                loss, end = ctx.run(leaves, a, b)
            outs, grads = [loss], [grad]
            if carry is not None:
                for t, g in zip(tree_leaves(end), carry, strict=True):
                    if g is not None and isinstance(t, Tensor) and t.requires_grad:
                        outs.append(t)
                        grads.append(g)
            torch.autograd.backward(outs, grads)
            carry = [t.grad if isinstance(t, Tensor) and t.requires_grad else None
                     for t in tree_leaves(leaves)]
        ctx.starts = None
        # the parameters' gradients were accumulated by the backward calls above
        return (None, None) + (None,) * ctx.n_params


def _note_chunk_starts(state: Any, layers: dict[str, CMSLayerModule],
                       starts: dict[tuple[str, int], tuple[Tensor, ...]]) -> None:
    """Keep each task stage's fast weights as the chunk's first segment left them: the write
    differentiates the chunk loss with respect to *those* tensors. A stage the chunk's later
    segments pass through unchanged is usually the same tensor, but a wrapper may hand the
    layer an identity-mapped copy per call (FSDP2 routes every tensor input of a unit through
    its post-backward hook function), and a gradient taken at the last copy would miss the
    chunk's earlier segments."""
    for cs in find_cms_states(state):
        for lv in layers[cs["__cms__"]].task_stages():
            starts.setdefault((cs["__cms__"], lv.index), cs["fast"][lv.index])


def _write(state: Any, layers: dict[str, CMSLayerModule], period: int, loss: Tensor,
           starts: dict[tuple[str, int], tuple[Tensor, ...]]) -> None:
    """θ ← θ − lr · sg(∇_θ loss) for every task stage of this period (one backward pass); θ is
    the stage's weights at the start of the chunk (`_note_chunk_starts`)."""
    sites = [(cs, lv.index, lv.lr, starts.pop((cs["__cms__"], lv.index)))
             for cs in find_cms_states(state)
             for lv in layers[cs["__cms__"]].task_stages() if lv.tokens == period]
    weights = [w for *_, start in sites for w in start]
    if not weights:
        return
    grads = torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
    it = iter(grads)
    for cs, i, lr, start in sites:
        fast = dict(cs["fast"])
        fast[i] = tuple(w if g is None else w - lr * g.detach()
                        for w, g in zip(start, it, strict=False))
        cs["fast"] = fast
