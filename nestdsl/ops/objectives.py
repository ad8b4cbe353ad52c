"""Inner objectives ("attentional bias", Miras) of associative memories.

An objective scores a memory prediction ``p = M(θ; k)`` against a target ``v``. Every update
rule in nestdsl only needs the *output gradient* ``∂ℓ/∂p`` in closed form: the chain rule
through the memory (linear map or MLP) is written out by hand in the fast forms, so no nested
``torch.autograd.grad`` is ever needed (docs/design.md §3.2; inductor cannot compile double
backward).

The registry is open: ``register_objective(Objective(...))`` adds e.g. an Lp or Huber loss.
An objective whose output gradient is *affine in the prediction*, ``∂ℓ/∂p = a·p + ∂ℓ/∂p|_{p=0}``,
declares ``affine=a``; linear memories with chunk size 1 then run the exact online recurrence
blockwise (delta-rule / linear-attention form). Other objectives still work everywhere, but a
linear memory with chunk size 1 then falls back to one token per block.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Objective", "OBJECTIVES", "register_objective", "get_objective", "soft_clipped_l2"]


@dataclass(frozen=True)
class Objective:
    """An inner objective ℓ(p, v).

    Attributes:
        name: registry key (the spec's ``objective:`` field).
        loss: ``(p, v) -> ℓ`` with p, v of shape (..., Dv) and ℓ of shape (...,); used by the
            reference oracle only (it differentiates ℓ with ``torch.func.grad``).
        grad: ``(p, v) -> ∂ℓ/∂p`` of shape (..., Dv), closed form; used by the fast forms.
        affine: ``a`` if ``grad(p, v) == a * p + grad(0, v)`` for all p, else ``None``.
    """

    name: str
    loss: Callable[[Tensor, Tensor], Tensor]
    grad: Callable[[Tensor, Tensor], Tensor]
    affine: float | None = None


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective, *, overwrite: bool = False) -> Objective:
    """Add ``objective`` to the registry (``overwrite=True`` to replace an existing name)."""
    if objective.name in OBJECTIVES and not overwrite:
        raise ValueError(f"objective {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str | Objective) -> Objective:
    """Look an objective up by name (an ``Objective`` instance is returned unchanged)."""
    if isinstance(name, Objective):
        return name
    try:
        return OBJECTIVES[name]
    except KeyError:
        known = ", ".join(sorted(OBJECTIVES))
        raise ValueError(f"unknown objective {name!r}; registered objectives: {known}") from None


# ℓ = −⟨p, v⟩ (Hebbian / linear attention); ∂ℓ/∂p = −v does not depend on p.
register_objective(
    Objective(
        name="dot",
        loss=lambda p, v: -(p * v).sum(-1),
        grad=lambda p, v: -v.expand_as(p),
        affine=0.0,
    )
)

# ℓ = ½‖p − v‖² (delta rule / TTT / Titans); ∂ℓ/∂p = p − v.
register_objective(
    Objective(
        name="l2",
        loss=lambda p, v: 0.5 * (p - v).pow(2).sum(-1),
        grad=lambda p, v: p - v,
        affine=1.0,
    )
)


def _huber_loss(p: Tensor, v: Tensor, delta: float = 1.0) -> Tensor:
    r = (p - v).abs()
    return torch.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).sum(-1)


# Huber (Miras/Yaad-style robust regression), δ = 1: ∂ℓ/∂p = clip(p − v, −1, 1). Not affine.
register_objective(
    Objective(
        name="huber",
        loss=_huber_loss,
        grad=lambda p, v: (p - v).clamp(-1.0, 1.0),
        affine=None,
    )
)


@functools.cache   # one instance per c: compiled steps guard on the object
def soft_clipped_l2(clip: float) -> Objective:
    """L2 with the surprise soft-clipped at ``clip`` (docs/design.md §3.1, "stable by construction").

    ∂ℓ/∂p = r · c·tanh(‖r‖/c)/‖r‖ with r = p − v: the l2 error for ‖r‖ ≪ c, a vector of norm c
    for ‖r‖ ≫ c, smooth in between. It is the gradient of ℓ = c² log cosh(‖r‖/c), which the
    reference oracle differentiates. Not affine: a linear memory with C = 1 runs token by token.
    """
    c = float(clip)
    if not c > 0:
        raise ValueError(f"clip must be > 0; got {clip!r}")
    eps2 = 1e-12   # ‖r‖ → sqrt(‖r‖² + 1e-12): finite gradient at r = 0 (there: ∂ℓ/∂p = r)

    def norm(r: Tensor) -> Tensor:
        return torch.sqrt(r.pow(2).sum(-1, keepdim=True) + eps2)

    def loss(p: Tensor, v: Tensor) -> Tensor:
        s = norm(p - v)[..., 0] / c
        return c * c * (s + torch.nn.functional.softplus(-2 * s) - math.log(2.0))  # log cosh

    def grad(p: Tensor, v: Tensor) -> Tensor:
        r = p - v
        s = norm(r)
        return r * (c * torch.tanh(s / c) / s)

    return Objective(name=f"l2(clip {c:g})", loss=loss, grad=grad, affine=None)
