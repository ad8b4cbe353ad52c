"""The lowered model: token embedding → `depth` blocks (cycling through `model.pattern`) →
final RMSNorm → head (tied to the embedding when `tie_embeddings`).

A block applies its layers in order, each as a pre-norm residual `x = x + layer(norm(x))`
(`residual: false` drops the `x +`; a layer with `owns_residual = True`, like MAL, gets the raw x
and adds its own). The streaming state is a list (blocks) of lists (layers) of layer states.

Two ways to carry a sequence across calls:
* `forward_stream(tokens, state)` — the layers' own states; a chunked memory continues only
  from a chunk boundary (its state is the chunk-start θ; a call must end on a boundary);
* `forward_incremental(tokens, state)` — any split, one token at a time included (generation):
  a layer whose memory learns per chunk of C tokens keeps its state at the last chunk boundary
  plus the < C inputs received since, and re-runs those with each call. Every position sees
  what the whole-sequence forward computes there (reads within a chunk are causal: gradients
  come from the chunk-start state); memory per token is bounded by C, never by the length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestdsl.lower.common import BuildContext, RMSNorm, compile_scope, count_params, make_norm
from nestdsl.lower.layer import Layer, LayerState, PlanRow
from nestdsl.lower.registry import get_builder
from nestdsl.spec import ir

#: `forward_stream`'s state: per block, per layer, the layer's state.
ModelState = list[list[LayerState]]
#: One slot's state in `forward_incremental`: a layer that continues anywhere keeps its plain
#: state; a chunked one (the state at the last chunk boundary, the inputs (B, < G, D) since).
IncrementalSlotState = LayerState | tuple[LayerState, Tensor]
#: `forward_incremental`'s state: per block, per layer.
IncrementalState = list[list[IncrementalSlotState]]


class LayerSlot(nn.Module):
    """One layer of a block with its pre-norm and residual."""

    # the layer's spec type; an instance attribute shadowing `nn.Module.type` (a method)
    type: str  # type: ignore[assignment]

    def __init__(self, ctx: BuildContext, node: Any, name: str) -> None:
        super().__init__()
        self.name, self.type = name, node.type
        self.layer = get_builder(node.type)(ctx, node, name)
        self.owns_residual = bool(getattr(self.layer, "owns_residual", False))
        self.norm = nn.Identity() if self.owns_residual else make_norm(node.norm, ctx.width)
        self.residual = node.residual
        # the lcm of the chunk sizes the layer's memories learn at (1: continues anywhere)
        self.stream_chunk = math.lcm(1, *(int(c) for m in self.layer.modules()
                                          if isinstance(c := getattr(m, "stream_chunk", None), int)))

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        if self.owns_residual:
            return self.layer(x, state)
        y, state = self.layer(self.norm(x), state)
        return (x + y if self.residual else y), state

    def incremental(self, x: Tensor, state: IncrementalSlotState
                    ) -> tuple[Tensor, IncrementalSlotState]:
        """`forward` continuing at any position: `state` = (the layer state at the last chunk
        boundary, the inputs received since), see the module docstring."""
        G = self.stream_chunk
        if G == 1:
            return self(x, state)
        boundary, pending = (cast("tuple[LayerState, Tensor]", state) if state is not None
                             else (None, x[:, :0]))
        xx = torch.cat([pending, x], dim=1)
        n_full = xx.shape[1] // G * G
        ys = []
        if n_full:
            y, boundary = self(xx[:, :n_full], boundary)
            ys.append(y)
        rest = xx[:, n_full:]
        if rest.shape[1]:
            ys.append(self(rest, boundary)[0])   # the mid-chunk state is recomputed next call
        return torch.cat(ys, dim=1)[:, pending.shape[1]:], (boundary, rest)

    def plan(self) -> list[PlanRow]:
        if hasattr(self.layer, "plan"):
            rows = list(cast(Layer, self.layer).plan())
        else:  # a registered layer without a plan: still account for its parameters
            rows = [PlanRow(name=self.name, kind=self.type, implementation=type(self.layer).__name__,
                            params=count_params(self.layer))]
        own = count_params(self) - sum(r.params for r in rows)
        if rows and own:
            rows[0].params += own       # the pre-norm (and anything the layer's rows left out)
        return rows


class Block(nn.Module):
    def __init__(self, ctx: BuildContext, block: ir.Block, name: str) -> None:
        super().__init__()
        self.slots = nn.ModuleList(
            LayerSlot(ctx, node, f"{name}.{j}") for j, node in enumerate(block.layers))

    @property
    def slot_modules(self) -> Sequence[LayerSlot]:
        """`slots` with its element type (an `nn.ModuleList` is typed as holding `nn.Module`)."""
        return cast("Sequence[LayerSlot]", self.slots)

    def forward(self, x: Tensor, state: list[LayerState] | None) -> tuple[Tensor, list[LayerState]]:
        state = state if state is not None else [None] * len(self.slots)
        new: list[LayerState] = []
        for slot, s in zip(self.slots, state, strict=True):
            x, s = slot(x, s)
            new.append(s)
        return x, new


class NestModel(nn.Module):
    """`model(tokens)` → logits (B, T, vocab); `forward_stream` carries memory state;
    `loss(tokens, targets, mask)` is the training objective."""

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__()
        m = ctx.model
        self._compile_config = ctx.compile
        self.vocab, self.width = m.vocab, m.width
        self.embed = nn.Embedding(m.vocab, m.width)
        nn.init.normal_(self.embed.weight, std=0.02)
        blocks = []
        for i in range(m.depth):
            bname = m.pattern[i % len(m.pattern)]
            blocks.append(Block(ctx, ctx.spec.blocks[bname], f"blocks.{i}"))
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = RMSNorm(m.width)
        self.head = None if m.tie_embeddings else nn.Linear(m.width, m.vocab, bias=False)
        # CMS stages with an in-context `task` signal train through the chunked task sweep.
        self.uses_task_sweep = any(getattr(layer, "uses_task_sweep", False) for _, layer in self.iter_layers())

    @property
    def block_modules(self) -> Sequence[Block]:
        """`blocks` with its element type (an `nn.ModuleList` is typed as holding `nn.Module`)."""
        return cast("Sequence[Block]", self.blocks)

    # -- forward

    def iter_layers(self) -> Iterator[tuple[str, nn.Module]]:
        for block in self.block_modules:
            for slot in block.slot_modules:
                yield slot.name, slot.layer

    def hidden(self, tokens: Tensor, state: ModelState | None = None) -> tuple[Tensor, ModelState]:
        """Embedding and blocks (no final norm/head): (B, T, D) and the new state."""
        x = self.embed(tokens)
        state = state if state is not None else cast(ModelState, [None] * len(self.blocks))
        new: ModelState = []
        with compile_scope(self._compile_config):   # torch settings of the compiled pieces, once
            for block, s in zip(self.blocks, state, strict=True):
                x, s = block(x, s)
                new.append(s)
        return x, new

    def logits(self, h: Tensor) -> Tensor:
        h = self.norm_f(h)
        return h @ self.embed.weight.mT if self.head is None else self.head(h)

    def forward_stream(self, tokens: Tensor, state: ModelState | None = None) -> tuple[Tensor, ModelState]:
        """Run a segment continuing from `state` (None: start of a sequence)."""
        h, state = self.hidden(tokens, state)
        return self.logits(h), state

    def forward_incremental(self, tokens: Tensor, state: IncrementalState | None = None
                            ) -> tuple[Tensor, IncrementalState]:
        """Like `forward_stream`, but a segment may end anywhere (one token at a time for
        generation): chunked layers keep their boundary state plus the inputs since."""
        x = self.embed(tokens)
        state = state if state is not None else [[None] * len(b.slots) for b in self.block_modules]
        new: IncrementalState = []
        with compile_scope(self._compile_config):
            for block, block_state in zip(self.block_modules, state, strict=True):
                states = []
                for slot, s in zip(block.slot_modules, block_state, strict=True):
                    x, s = slot.incremental(x, s)
                    states.append(s)
                new.append(states)
        return self.logits(x), new

    def forward(self, tokens: Tensor) -> Tensor:
        return self.forward_stream(tokens, None)[0]

    def loss(self, tokens: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy over the positions where `mask` is set (all if None;
        targets equal to -100 are ignored)."""
        if self.uses_task_sweep:
            from nestdsl.lower.sweep import task_sweep

            return task_sweep(self, tokens, targets, mask)
        return masked_cross_entropy(self(tokens), targets, mask)

    # -- reporting

    def plan(self) -> list[PlanRow]:
        tied = self.head is None
        rows = [PlanRow(name="embed", kind="embedding",
                        implementation=f"{self.vocab}×{self.width}" + (" (tied head)" if tied else ""),
                        params=count_params(self.embed), writes="—")]
        for block in self.block_modules:
            for slot in block.slot_modules:
                rows.extend(slot.plan())
        rows.append(PlanRow(name="norm_f + head", kind="head",
                            implementation="RMSNorm → " + ("embeddingᵀ (tied)" if tied else "linear"),
                            params=count_params(self.norm_f)
                            + (0 if self.head is None else count_params(self.head)),
                            writes="—"))
        return rows

    def set_compile(self, enabled: bool) -> None:
        """Switch every compiled piece to its eager twin (False) or back (True)."""
        self._compile_config.enabled = enabled


def masked_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor | None) -> Tensor:
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none",
                           ignore_index=-100)
    valid = (targets.flatten() != -100).to(loss.dtype)
    if mask is not None:
        valid = valid * mask.flatten().to(loss.dtype)
    return (loss * valid).sum() / valid.sum().clamp_min(1.0)


__all__ = ["NestModel", "Block", "LayerSlot", "masked_cross_entropy", "ModelState",
           "IncrementalState"]
