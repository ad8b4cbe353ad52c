"""Delta momentum: momentum whose inner objective is l2 regression (a delta rule on gradients).

Paper: NeurIPS Eqs. 21-22 / arXiv Eqs. 48-49. Replacing the dot objective of momentum with
||m g^T - P||^2 gives a delta rule, i.e. a *gradient-dependent* forget gate. nestdsl uses the
right-multiplied (arXiv Eq. 49) form, the only one that is dimensionally valid for a
non-square W in R^{out x in} (g^T g is in x in), with a normalised key g_hat and an inner
step size eta_m (`momentum_lr`) on the erase term (arXiv Eq. 49):

    m <- m (beta I - eta_m g_hat^T g_hat) - lr * g
    W <- W + m

Key normalisation (`normalize` spec field), chosen so that ||g_hat^T g_hat||_2 <= 1 and the
recurrence is stable for any 0 < eta_m < 1 + beta:

* ``row``    : every row of g scaled to unit norm, then the whole matrix by 1/sqrt(rows) so
               ||g_hat||_F = 1 (each output unit's gradient direction is an equally weighted
               key; without the 1/sqrt(rows) the erase would scale with the layer width);
* ``global`` : g_hat = g / ||g||_F;
* ``none``   : g_hat = g (as printed in the paper; the user must keep eta_m ||g||^2 small).

Tensors with more than 2 dims use the (out, prod(in)) view. 1-D tensors (biases, norms) use
the element-wise analogue (the diagonal of g_hat^T g_hat):

    m <- m * (beta - eta_m * g_hat^2) - lr * g,   g_hat = g / ||g|| (row, global) or g (none)

With eta_m -> 0 this is heavy-ball momentum (`MomentumSGD`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from nestdsl.optim._base import DeepOptimizer, as_rows, check_output, zeros_f32

__all__ = ["DeltaMomentum", "normalize_keys"]

_TINY = 1e-12  # guards zero gradients (a zero key erases nothing)

Normalize = Literal["none", "row", "global"]


def normalize_keys(g: Tensor, mode: str) -> Tensor:
    """The erase key g_hat of a 2-D (rows, cols) gradient, per `mode` (see module doc)."""
    if mode == "none":
        return g
    if mode == "global":
        return g / (torch.linalg.vector_norm(g) + _TINY)
    if mode == "row":
        rows = g.shape[0]
        norms = torch.linalg.vector_norm(g, dim=1, keepdim=True)
        return g / (norms + _TINY) / rows**0.5
    raise ValueError(f"unknown normalize mode {mode!r}; expected none, row or global")


class DeltaMomentum(DeepOptimizer):
    """m <- m (beta I - eta_m g_hat^T g_hat) - lr g; W <- W + m (arXiv Eq. 49, right-multiplied).

    State (float32): `m` (parameter shape), `step` (int).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = 0.9,
        momentum_lr: float = 1.0,
        normalize: Normalize = "row",
        weight_decay: float = 0.0,
        output: str = "identity",
        ns_steps: int = 5,
    ) -> None:
        if lr <= 0 or not 0.0 <= beta <= 1.0 or momentum_lr <= 0:
            raise ValueError(f"invalid hyper-parameters lr={lr} beta={beta} eta_m={momentum_lr}")
        if normalize not in ("none", "row", "global"):
            raise ValueError(f"unknown normalize mode {normalize!r}")
        check_output(output, ns_steps)
        super().__init__(
            params,
            dict(
                lr=lr,
                beta=beta,
                momentum_lr=momentum_lr,
                normalize=normalize,
                weight_decay=weight_decay,
                output=output,
                ns_steps=ns_steps,
            ),
        )

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["m"] = zeros_f32(p)

    def _direction(
        self, p: Tensor, w: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Tensor:
        m: Tensor = state["m"]
        beta: float = group["beta"]
        eta_m: float = group["momentum_lr"]
        mode: str = group["normalize"]
        if g.ndim < 2:
            # element-wise analogue: a per-coordinate, gradient-dependent forget gate
            gh = g if mode == "none" else g / (torch.linalg.vector_norm(g) + _TINY)
            m.mul_(beta - eta_m * gh * gh)
        else:
            m2, gh = as_rows(m), normalize_keys(as_rows(g), mode)
            rows, cols = gh.shape
            # m (g_hat^T g_hat): pick the cheaper association order, never forming the
            # larger of the two Gram matrices.
            if rows <= cols:
                erase = (m2 @ gh.T) @ gh
            else:
                erase = m2 @ (gh.T @ gh)
            m2.mul_(beta).sub_(erase, alpha=eta_m)
        m.add_(g, alpha=-group["lr"])
        return m
