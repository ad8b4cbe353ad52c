"""DMGD, Deep Momentum Gradient Descent: the momentum is an MLP memory trained by its own GD.

Paper: NeurIPS Eq. 23 / arXiv Eq. 50 (+ Eq. 52 for the non-linear output):

    W_{i+1} = W_i + m_{i+1}(u_i),   m_{i+1} = alpha m_i - eta grad L2(m_i; u_i),   u_i = grad L(W_i)

The paper leaves the memory and its inner objective open (arXiv Eq. 50). nestdsl's choice,
per parameter tensor (its own memory, kept in the optimizer state):

* **Rows.** The gradient G is viewed as n rows of width d (2-D: the longer side indexes rows,
  so d = min(out, in); > 2-D: (out, prod(in)) first; 1-D: n entries of width 1, i.e. an
  element-wise memory shared by the entries). Rows are the memory's tokens.
* **Memory.** m_phi(U) = M + F W2^T with F = tanh(U_hat W1^T) / sqrt(H), where
  U_hat = G / rms(G) (scale-free keys), W1 in R^{H x d}, W2 in R^{d x H}, H = hidden * d.
  M (parameter-shaped) is the residual, linear part: it is exactly heavy-ball momentum; the
  MLP part is a key-conditioned momentum: it stores past (normalised) gradient rows under
  learned features and recalls them by similarity to the current rows.
* **Inner objective** (the paper's dot-product similarity with the gradient as value, i.e. the
  objective of plain momentum, applied to the MLP's output):

      L2(phi; G) = <M, G> + <F W2^T, U_hat>

  minimised by one GD step per outer step, closed form (no autograd), with forget gate beta
  on the stored content (M, W2) and inner step eta_m = `momentum_lr` on the MLP:

      M  <- beta M  - G
      W2 <- beta W2 - eta_m U_hat^T F                                      (d/dW2 of L2)
      W1 <- W1      - eta_m [((U_hat W2) * (1 - tanh^2(U_hat W1^T))) / sqrt(H)]^T U_hat

  The key map W1 is *not* decayed: decaying it would shrink every key to zero and kill the
  MLP part (the decay of the paper's "alpha m" is applied to the memory's contents).
  W1 is initialised N(0, 1/d) with a fixed per-tensor seed (so runs are reproducible); W2 = 0,
  so the first step is exactly momentum and the MLP part grows from the data.
* **Read-out** with the updated memory (m_{i+1}(u_i)) and outer step:

      u = M + rms(G) * F' W2'^T              (F' from the updated W1; rms(G) puts the MLP's
                                              normalised read-out back in gradient units)
      W <- W + lr * u                       (output = identity)
      W <- W + lr * s * NS_k(u)             (output = newton_schulz, s as in Muon)

  With eta_m -> 0 this is heavy-ball momentum with the learning rate outside the buffer.

Cost: about 12 * hidden * n * d^2 flops and 2 * hidden * d^2 + n * d floats of state per
tensor (d = min side), i.e. a few times the parameter count for square matrices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import chain
from typing import Any, Literal

import torch
from torch import Tensor

from nestdsl.optim._base import DeepOptimizer, as_rows, check_output, zeros_f32

__all__ = ["DMGD", "mlp_rows"]

_TINY = 1e-12
_SEED = 20251  # base seed of the key maps W1 (offset by the tensor's index in the optimizer)


def mlp_rows(t: Tensor) -> tuple[Tensor, bool]:
    """The (n, d) row view of `t` the MLP memory reads (d = the short side) and whether it is
    transposed with respect to `as_rows(t)`."""
    if t.ndim < 2:
        return t.reshape(-1, 1), False
    r = as_rows(t)
    if r.shape[1] > r.shape[0]:
        return r.T, True
    return r, False


class DMGD(DeepOptimizer):
    """Deep momentum: W <- W + lr * m_phi(u), the MLP memory m_phi trained each step by GD on
    L2(phi; g) = <M, g> + <F W2^T, g_hat> (module doc; arXiv Eq. 50 / 52).

    State (float32): `M` (parameter shape), `W1` (H x d), `W2` (d x H), `step` (int).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = 0.9,
        momentum_lr: float = 0.1,
        hidden: int = 2,
        output: Literal["identity", "newton_schulz"] = "identity",
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or not 0.0 <= beta <= 1.0 or momentum_lr <= 0 or hidden < 1:
            raise ValueError(f"invalid hyper-parameters lr={lr} beta={beta} hidden={hidden}")
        check_output(output, ns_steps)
        super().__init__(
            params,
            dict(
                lr=lr,
                beta=beta,
                momentum_lr=momentum_lr,
                hidden=hidden,
                output=output,
                ns_steps=ns_steps,
                weight_decay=weight_decay,
            ),
        )

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        rows, _ = mlp_rows(p)
        d = rows.shape[1]
        h = group["hidden"] * d
        index = next(
            i
            for i, q in enumerate(chain.from_iterable(g["params"] for g in self.param_groups))
            if q is p
        )
        gen = torch.Generator().manual_seed(_SEED + index)
        w1 = torch.randn(h, d, generator=gen, dtype=torch.float32) / math.sqrt(d)
        state["M"] = zeros_f32(p)
        state["W1"] = w1.to(p.device)
        state["W2"] = torch.zeros(d, h, dtype=torch.float32, device=p.device)

    def _direction(
        self, p: Tensor, w: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Tensor:
        beta: float = group["beta"]
        eta_m: float = group["momentum_lr"]
        M, W1, W2 = state["M"], state["W1"], state["W2"]
        h = W1.shape[0]
        inv_sqrt_h = 1.0 / math.sqrt(h)

        G, transposed = mlp_rows(g)
        rms = G.square().mean().sqrt()  # 0-d tensor: stays on device
        U = G / (rms + _TINY)

        # one GD step on the inner objective at the current memory phi_i
        T = torch.tanh(U @ W1.T)  # (n, H)
        F = T * inv_sqrt_h
        dZ = (U @ W2) * (1.0 - T * T) * inv_sqrt_h  # dL2/d(U W1^T)
        grad_w1 = dZ.T @ U  # (H, d)
        grad_w2 = U.T @ F  # (d, H)
        M.mul_(beta).sub_(g)
        W2.mul_(beta).sub_(grad_w2, alpha=eta_m)
        W1.sub_(grad_w1, alpha=eta_m)

        # read the updated memory phi_{i+1} at the current gradient u_i
        F_new = torch.tanh(U @ W1.T) * inv_sqrt_h
        read = (F_new @ W2.T) * rms  # (n, d), gradient units
        if transposed:
            read = read.T
        u = M + read.reshape(p.shape)
        return u.mul_(group["lr"])      # `output: newton_schulz` is applied by the base class
