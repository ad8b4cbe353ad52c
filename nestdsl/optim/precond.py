"""Preconditioned momentum: a more expressive association (values P g instead of g).

Paper: NeurIPS Eqs. 19-20 / arXiv Eqs. 46-47. The momentum memory maps the gradient key to the
preconditioned value P g (inner objective <m, P g>), giving

    m <- beta * m - lr * P g
    W <- W + m

The paper leaves P open ("any preconditioner ... e.g. a function of gradients"). nestdsl uses
the diagonal running-RMS preconditioner, itself an element-wise memory (arXiv App. B, Eq. 101:
Adam's second moment is the optimal element-wise l2 memory of g^2):

    v <- beta2 * v + (1 - beta2) * g^2        v_hat = v / (1 - beta2^t)   (bias-corrected)
    P g = g / (sqrt(v_hat) + eps)

So this is heavy-ball momentum on RMS-normalised gradients (RMSprop with momentum, Adam's
denominator without Adam's first-moment EMA/bias correction).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from nestdsl.optim._base import DeepOptimizer, zeros_f32

__all__ = ["PreconditionedMomentum"]


class PreconditionedMomentum(DeepOptimizer):
    """m <- beta m - lr g / (sqrt(v_hat) + eps); W <- W + m (arXiv Eq. 47 with forget gate).

    State (float32): `m`, `v` (parameter shape), `step` (int).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or not 0.0 <= beta <= 1.0 or not 0.0 <= beta2 < 1.0 or eps <= 0:
            raise ValueError(f"invalid hyper-parameters lr={lr} beta={beta} beta2={beta2}")
        super().__init__(
            params, dict(lr=lr, beta=beta, beta2=beta2, eps=eps, weight_decay=weight_decay)
        )

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["m"] = zeros_f32(p)
        state["v"] = zeros_f32(p)

    def _direction(
        self, p: Tensor, w: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Tensor:
        beta2: float = group["beta2"]
        v: Tensor = state["v"]
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        bias = 1.0 - beta2 ** state["step"]  # Python float: the step counter is an int
        precond_g = g / ((v / bias).sqrt_() + group["eps"])
        m: Tensor = state["m"]
        m.mul_(group["beta"]).add_(precond_g, alpha=-group["lr"])
        return m
