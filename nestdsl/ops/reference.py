"""The sequential oracle: docs/design.md §3.1 token by token, written to read like the equations.

    g_t = ∇_θ ℓ(θ_{c(t)}; k_t, v_t)          gradient at the chunk-start state, c(t) = C⌊(t−1)/C⌋
    S_t = β_t S_{t−1} − η_t g_t              momentum (without momentum: S_t = −η_t g_t)
    θ_t = θ_{t−1}(α_t I − ε_t k_t k_tᵀ) + S_t on W_0 (the key-side weight); α_t θ_{t−1} + S_t on
                                             the others; ε_t = 0 (gd) or the DGD erase rate:
                                             η_t | η_t/(1 + η_t‖k_t‖²) | α_t η_t
    o_t = M(θ_t; q_t) | M(θ_{t−1}; q_t) | M(θ_{c(t)}; q_t)      read after | before | chunk

The inner gradient is taken with ``torch.func.grad`` of the objective's *loss*, independently of
the closed forms used by the fast paths, so the tests really check those closed forms. This is
slow (one step per token) and only meant for tests and as the definition of the semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor

from .mlp import NLMS_EPS, RENORM_EPS
from .objectives import Objective

__all__ = ["reference_scan"]

Forward = Callable[[Sequence[Tensor], Tensor], Tensor]


def reference_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    forward: Forward,
    objective: Objective,
    rule: str,
    lr: Tensor,
    retention: Tensor | None,
    momentum: Tensor | None,
    chunk_size: int,
    read: str,
    weights: Sequence[Tensor],
    moms: Sequence[Tensor] | None,
    erase: str = "eta",
    layer_inputs: Callable[[Sequence[Tensor], Tensor], list[Tensor]] | None = None,
    renorm: bool = False,
) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
    """Token-by-token scan.

    Args:
        q, k: (B, H, T, Dk); v: (B, H, T, Dv).
        forward: ``(weights, x (B, H, N, Dk)) -> (B, H, N, Dv)``, the memory M(θ; x).
        lr, retention, momentum: (B, H, T) per-token η, α, β (``None``: α = 1 / no momentum).
        weights: θ_0, each (B, H, out, in). moms: S_0 (same shapes) or None.
        layer_inputs: the per-layer normalised step (Eq. 57 per weight): ``(weights, x) ->
            [a_0, a_1, …]``, each weight's input at θ_{c(t)}; W_i then steps with
            η_t / (ε + ‖a_i‖²) (and DGD erases with W_0's). None: one η_t for every weight.
        renorm: after every chunk (the last, partial one included), each weight's rows are
            rescaled to the row norms of θ_0.
    Returns:
        (o (B, H, T, Dv), final weights, final momentum or None).
    """
    T = q.shape[2]
    theta = list(weights)
    S = list(cast(Sequence[Tensor], moms)) if momentum is not None else None   # moms given with it
    anchor = theta  # θ_{c(t)}
    norms0 = [w.norm(dim=-1, keepdim=True) for w in theta]      # ‖θ_0's rows‖ (renorm)

    def renormed(ws: list[Tensor]) -> list[Tensor]:
        return [w * n / (w.pow(2).sum(-1, keepdim=True) + RENORM_EPS).sqrt()
                for w, n in zip(ws, norms0, strict=True)]

    def loss(ws: tuple[Tensor, ...], kt: Tensor, vt: Tensor) -> Tensor:
        return objective.loss(forward(ws, kt[:, :, None]), vt[:, :, None]).sum()

    outs = []
    for t in range(T):
        if t % chunk_size == 0:
            if renorm and t > 0:                                   # end of the previous chunk
                theta = renormed(theta)
            anchor = theta
        qt, kt, vt = q[:, :, t], k[:, :, t], v[:, :, t]
        eta = lr[:, :, t, None, None]
        etas = [eta] * len(theta)
        if layer_inputs is not None:                               # η_{i,t} = η_t/(ε + ‖a_i‖²)
            etas = [eta / (NLMS_EPS + (a[:, :, 0] ** 2).sum(-1)[..., None, None])
                    for a in layer_inputs(anchor, kt[:, :, None])]
        if read == "before":
            outs.append(forward(theta, qt[:, :, None])[:, :, 0])
        elif read == "chunk":
            outs.append(forward(anchor, qt[:, :, None])[:, :, 0])

        g = torch.func.grad(loss)(tuple(anchor), kt, vt)          # g_t at θ_{c(t)}

        if S is not None:                                          # S_t = β_t S_{t−1} − η_t g_t
            assert momentum is not None                            # S exists only with momentum
            beta = momentum[:, :, t, None, None]
            S = [beta * s - e * gi for s, e, gi in zip(S, etas, g, strict=True)]
            step = S
        else:                                                      # S_t = −η_t g_t
            step = [-e * gi for e, gi in zip(etas, g, strict=True)]

        alpha = torch.ones_like(eta) if retention is None else retention[:, :, t, None, None]
        kept = [alpha * w for w in theta]                          # θ_{t−1} α_t
        if rule == "dgd":                                          # − ε_t θ_{t−1} k_t k_tᵀ on W_0
            eta0 = etas[0]
            if erase == "eta":
                eps = eta0
            elif erase == "normalized":
                eps = eta0 / (1 + eta0 * (kt * kt).sum(-1)[..., None, None])
            elif erase == "retained":
                eps = alpha * eta0
            else:
                raise ValueError(f"unknown erase {erase!r}")
            w0 = theta[0]
            kept[0] = kept[0] - eps * (w0 @ kt[..., None]) @ kt[..., None, :]
        theta = [w + s for w, s in zip(kept, step, strict=True)]   # θ_t
        if read == "after":
            outs.append(forward(theta, qt[:, :, None])[:, :, 0])

    if renorm:                                                     # end of the last chunk
        theta = renormed(theta)
    return torch.stack(outs, dim=2), theta, S
