"""Muon: momentum with a non-linear (Newton-Schulz) output, the simplest "deep" optimizer.

Paper: arXiv Eq. 42 / Eq. 52, NeurIPS Eq. 24. With a linear momentum memory and
sigma = Newton-Schulz output the nested-memory view "is equivalent to Muon":

    m <- beta * m + g
    W <- W - lr * s * NS_k(m),     s = max(1, rows / cols)^0.5   (Jordan et al. shape scale)

The paper writes W <- W + NS(m) with the learning rate inside m; NS normalises its input, so
nestdsl applies the learning rate after NS (otherwise it would be lost). No Nesterov term (the
spec has no field for it). Tensors with > 2 dims use the (out, prod(in)) view; 1-D tensors are
treated as one row, for which NS reduces to normalising the vector (s = 1) -- route vectors to
AdamW with a spec `groups` entry for the usual Muon recipe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from nestdsl.optim._base import DeepOptimizer, zeros_f32

__all__ = ["Muon"]


class Muon(DeepOptimizer):
    """m <- beta m + g; W <- W - lr * s * NewtonSchulz_k(m) (arXiv Eq. 42).

    State (float32): `m` (parameter shape), `step` (int).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        beta: float = 0.95,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or not 0.0 <= beta <= 1.0 or ns_steps < 1:
            raise ValueError(f"invalid hyper-parameters lr={lr} beta={beta} ns_steps={ns_steps}")
        # Muon = this momentum memory + the Newton-Schulz output of the base class
        super().__init__(
            params, dict(lr=lr, beta=beta, ns_steps=ns_steps, weight_decay=weight_decay,
                         output="newton_schulz")
        )

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["m"] = zeros_f32(p)

    def _direction(
        self, p: Tensor, w: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Tensor:
        m: Tensor = state["m"]
        m.mul_(group["beta"]).add_(g)
        return -m        # the base applies -lr · s · NS_k(m) (`orthogonalized`)
