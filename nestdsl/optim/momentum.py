"""Gradient descent with momentum: momentum as a 2-level associative memory with a dot objective.

Paper: NeurIPS Eq. 17 / arXiv Eq. 33 (and Eq. 100). The momentum m is a memory with the
identity key whose inner objective is the dot product <m, g>; one GD step on it with forget
gate beta gives

    m <- beta * m - lr * g           (inner level: one step on  min_m <m, g> + decay)
    W <- W + m                       (outer level: the parameters read the memory)

`beta = 0` is plain SGD (spec type `sgd`). Note the learning rate sits *inside* the momentum
(paper convention), so a learning-rate schedule only rescales new gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from nestdsl.optim._base import DeepOptimizer, check_output, zeros_f32

__all__ = ["MomentumSGD", "sgd"]


class MomentumSGD(DeepOptimizer):
    """Heavy-ball momentum, m <- beta m - lr g; W <- W + m (arXiv Eq. 33).

    State (float32): `m` (same shape as the parameter), `step` (int).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        output: str = "identity",
        ns_steps: int = 5,
    ) -> None:
        if lr <= 0 or not 0.0 <= beta <= 1.0 or weight_decay < 0:
            raise ValueError(f"invalid hyper-parameters lr={lr} beta={beta} wd={weight_decay}")
        check_output(output, ns_steps)
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay, output=output,
                                      ns_steps=ns_steps))

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["m"] = zeros_f32(p)

    def _direction(
        self, p: Tensor, w: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Tensor:
        m: Tensor = state["m"]
        m.mul_(group["beta"]).add_(g, alpha=-group["lr"])
        return m


def sgd(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0) -> MomentumSGD:
    """Plain gradient descent (spec type `sgd`): momentum with beta = 0, W <- W - lr g."""
    return MomentumSGD(params, lr=lr, beta=0.0, weight_decay=weight_decay)
