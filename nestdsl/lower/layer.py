"""The protocol every lowered layer follows, so blocks, the model and the task sweep compose.

A layer maps the (pre-normed) block input to an output of the same shape and carries an explicit
streaming state. Blocks add the norm and the residual; the model threads states through blocks.

    y, new_state = layer(x, state)      # x, y: (B, T, D); state None = start of a sequence

Running a sequence in segments with the state passed along must equal running it at once
(streaming). A layer reports how it was lowered through `plan()` (rows for `nestdsl compile`).

Optional hooks, looked up with `getattr` (a layer without them gets the default):

    owns_residual: bool = False      the block passes the raw x and adds no norm/residual (MAL)
    uses_task_sweep: bool = False    `model.loss` trains through `nestdsl.lower.sweep.task_sweep`
    level_params() -> {level: [Parameter]}   parameters of persistent levels (updated by the
                                     outer optimizer every k steps); everything else is outer
    in_context_levels() -> [level]   levels whose state this layer updates inside the sequence
    explain() -> [str]               pseudo-code of the per-chunk step (`compile --explain`)

Builders register per layer type in `nestdsl.lower.registry` (`register_layer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import torch

#: A layer's streaming state: the TypedDict of the layer that owns it (each defined next to its
#: layer), or None (start of a sequence; stateless layers such as `mlp`). States stay plain dicts
#: at runtime (pytree handling, checkpointed streams and the generate loop rely on that). The
#: owning modules import this one, so the union exists for type checkers only; at runtime the
#: alias stays `Any` (usable in runtime annotations and unions as before).
if TYPE_CHECKING:
    from nestdsl.lower.attention import AttentionState
    from nestdsl.lower.cms import CMSState
    from nestdsl.lower.hope import HopeState
    from nestdsl.lower.memory import MemoryLayerState
    from nestdsl.lower.titans import HybridState

    LayerState: TypeAlias = (
        MemoryLayerState | AttentionState | HybridState | HopeState | CMSState | None)
else:
    LayerState = Any


@dataclass
class PlanRow:
    """One line of the compile plan: what a memory/level was lowered to and why."""

    name: str                     # e.g. "blocks.0.layers.1 (titans)"
    kind: str                     # memory kind / layer type
    implementation: str           # e.g. "chunked delta rule (WY)", "sdpa", "mlp chunk step"
    chunk_size: int | None = None
    read: str | None = None
    writes: str | None = None
    params: int = 0
    compiled: str = "eager"       # "compiled" | "eager (reason)"
    kernel: str | None = None     # memory scans: the ops.kernels implementation that runs
    update: str | None = None     # one-line update equation
    notes: list[str] = field(default_factory=list)


class Layer(Protocol):
    def __call__(self, x: torch.Tensor, state: LayerState = None) -> tuple[torch.Tensor, LayerState]: ...

    def plan(self) -> list[PlanRow]: ...
