"""M3, Multi-scale Momentum Muon: Adam + Muon + a 2-level (independent) CMS of momenta.

Paper: arXiv §7.2, Algorithm 1 and Eq. 75. Per parameter, at step t:

    M1 <- beta  * M1 + (1 - beta)  * g_t                      fast momentum, every step
    V  <- beta2 * V  + (1 - beta2) * g_t^2                    second moment, every step
    A  <- A + g_t                                             gradient accumulator
    O1 =  NS_T(M1)
    W  <- W - lr * (O1 + alpha * O2) / (sqrt(V / (1 - beta2^t)) + eps)
    every f = `slow_every` steps (t = 0 mod f), after the update:
        M2 <- beta_slow * M2 + (1 - beta_slow) * A;   A <- 0;   O2 = NS_T(M2)

Decisions (the paper prints pure sums and no decays, Algorithm 1): EMAs with the spec's
`beta`, `beta2`, `beta_slow` are the default; the second moment is bias-corrected as in Adam;
the slow level is fed the *sum* of the gradients of its last f steps ("Σ g_i" of Eq. 75) and
fires after the update of step f, so O2 first acts at step f + 1 (Algorithm 1's outer loop
computes O2 before the inner f steps); O2 is kept in the state so that the slow phase
(accumulator, slow momentum and its orthogonalised output) round-trips through
`state_dict`. NS is applied before dividing by sqrt(V) exactly as printed, so, unlike Muon,
the update size scales like 1 / |g| and the learning rate must be tuned for it. There is no
Muon shape factor (not printed). 1-D tensors are treated as one row (see `Muon`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from nestdsl.optim._base import DeepOptimizer, as_rows, newton_schulz, zeros_f32

__all__ = ["M3"]


class M3(DeepOptimizer):
    """(NS(M1) + alpha NS(M2)) / (sqrt(V_hat) + eps) with M2 firing every `slow_every` steps.

    State (float32): `m_fast`, `m_slow`, `acc`, `o_slow`, `v` (parameter shape), `step` (int).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = 0.9,
        beta2: float = 0.999,
        beta_slow: float = 0.99,
        alpha: float = 1.0,
        slow_every: int = 8,
        ns_steps: int = 5,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or slow_every < 1 or ns_steps < 1 or not 0.0 <= beta2 < 1.0:
            raise ValueError(f"invalid hyper-parameters lr={lr} slow_every={slow_every}")
        super().__init__(
            params,
            dict(
                lr=lr,
                beta=beta,
                beta2=beta2,
                beta_slow=beta_slow,
                alpha=alpha,
                slow_every=slow_every,
                ns_steps=ns_steps,
                eps=eps,
                weight_decay=weight_decay,
            ),
        )

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        for key in ("m_fast", "m_slow", "acc", "o_slow", "v"):
            state[key] = zeros_f32(p)

    def _direction(
        self, p: Tensor, w: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Tensor:
        beta, beta2, t = group["beta"], group["beta2"], state["step"]
        steps: int = group["ns_steps"]
        m1, v, acc = state["m_fast"], state["v"], state["acc"]
        m1.mul_(beta).add_(g, alpha=1.0 - beta)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        acc.add_(g)
        o1 = newton_schulz(as_rows(m1), steps).reshape(p.shape)
        num = o1.add_(state["o_slow"], alpha=group["alpha"])
        denom = (v / (1.0 - beta2**t)).sqrt_().add_(group["eps"])
        delta = num.div_(denom).mul_(-group["lr"])
        if t % group["slow_every"] == 0:  # Python ints: the slow level's clock
            bs: float = group["beta_slow"]
            m2 = state["m_slow"]
            m2.mul_(bs).add_(acc, alpha=1.0 - bs)
            acc.zero_()
            state["o_slow"].copy_(newton_schulz(as_rows(m2), steps).reshape(p.shape))
        return delta
