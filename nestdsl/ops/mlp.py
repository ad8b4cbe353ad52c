"""MLP memories: description, forward pass and the closed-form backward used by inner updates.

An MLP memory of depth n maps a key x ∈ R^{Dk} to

    M(θ; x) = W_{n-1} σ( … σ(W_1 σ(W_0 x)) … )          (+ x if residual; Hope Eq. 89)

with no biases. Titans (arXiv:2501.00663 §3) and Hope (NL paper Eqs. 88–91) update θ by gradient
steps on an inner objective; ``mlp_backward`` gives the per-token gradients in closed form as
rank-1 factors ``∂ℓ/∂W_i = δ_i a_iᵀ`` (δ_i: gradient at layer i's output, a_i: layer i's input),
so the fast forms never call ``torch.autograd.grad`` and compile with inductor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .blockform import _mm

__all__ = ["MLPMemory", "ACTIVATIONS", "mlp_forward", "mlp_forward_cached", "mlp_backward"]

ACTIVATIONS = ("silu", "gelu", "relu", "tanh")


@dataclass(frozen=True)
class MLPMemory:
    """Description of an MLP memory (per head).

    Attributes:
        depth: number of weight matrices (≥ 2; use ``memory="linear"`` for depth 1).
        hidden: absolute hidden width per head.
        activation: one of ``silu``, ``gelu`` (exact, erf), ``relu``, ``tanh``.
        residual: ``M(x) = x + MLP(x)`` as in Hope (Eq. 89); requires Dk == Dv.
    """

    depth: int = 2
    hidden: int = 64
    activation: str = "silu"
    residual: bool = False

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError(f"MLPMemory.depth must be >= 2 (got {self.depth}); "
                             "use memory='linear' for a single matrix")
        if self.hidden < 1:
            raise ValueError(f"MLPMemory.hidden must be >= 1 (got {self.hidden})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLPMemory.activation must be one of {ACTIVATIONS} "
                             f"(got {self.activation!r})")

    def weight_shapes(self, d_key: int, d_value: int) -> list[tuple[int, int]]:
        """(out, in) of each weight, in application order."""
        dims = [d_key] + [self.hidden] * (self.depth - 1) + [d_value]
        return [(dims[i + 1], dims[i]) for i in range(self.depth)]

    def init_weights(self, heads: int, d_key: int, d_value: int, *, generator=None,
                     device=None, dtype=torch.float32) -> tuple[Tensor, ...]:
        """A convenience initial state: (H, out, in) weights with std 1/sqrt(in)."""
        return tuple(
            torch.randn(heads, o, i, generator=generator, device=device, dtype=dtype) / math.sqrt(i)
            for o, i in self.weight_shapes(d_key, d_value)
        )


def _act(z: Tensor, name: str) -> Tensor:
    if name == "silu":
        return torch.nn.functional.silu(z)
    if name == "gelu":
        return torch.nn.functional.gelu(z)
    if name == "relu":
        return torch.relu(z)
    return torch.tanh(z)


def _act_grad(z: Tensor, name: str) -> Tensor:
    """σ'(z) written with differentiable ops, so the outer backward gets σ'' for free."""
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if name == "gelu":
        cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
        pdf = torch.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))
        return cdf + z * pdf
    if name == "relu":
        return (z > 0).to(z.dtype)
    t = torch.tanh(z)
    return 1 - t * t


def mlp_forward(weights: Sequence[Tensor], x: Tensor, spec: MLPMemory) -> Tensor:
    """M(θ; x).

    Args:
        weights: W_i of shape (..., out_i, in_i) (batch dims broadcast against x's).
        x: inputs of shape (..., N, Dk).
        spec: the MLP description.
    Returns:
        (..., N, Dv).
    """
    h = x
    for i, w in enumerate(weights):
        h = _mm(h, w.mT)
        if i < len(weights) - 1:
            h = _act(h, spec.activation)
    return x + h if spec.residual else h


def mlp_forward_cached(weights: Sequence[Tensor], x: Tensor, spec: MLPMemory
                       ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Forward pass that also returns each layer's input a_i and pre-activation z_i.

    Returns:
        (output (..., N, Dv), inputs [a_0 = x, a_1, …], pre-activations [z_0, …, z_{n-2}]).
    """
    inputs, pre = [x], []
    h = x
    for i, w in enumerate(weights):
        z = _mm(h, w.mT)
        if i < len(weights) - 1:
            pre.append(z)
            h = _act(z, spec.activation)
            inputs.append(h)
        else:
            h = z
    out = x + h if spec.residual else h
    return out, inputs, pre


def mlp_backward(weights: Sequence[Tensor], pre: Sequence[Tensor], out_grad: Tensor,
                 spec: MLPMemory) -> list[Tensor]:
    """Closed-form backprop: the gradient δ_i at each layer's output (pre-activation).

    The per-token weight gradient is then ``∂ℓ/∂W_i = δ_i a_iᵀ`` (the residual skip carries no
    weight, so it does not change any weight gradient).

    Args:
        weights: W_i (..., out_i, in_i).
        pre: pre-activations z_0 … z_{n-2} from ``mlp_forward_cached``, each (..., N, out_i).
        out_grad: ∂ℓ/∂M(x), (..., N, Dv).
    Returns:
        [δ_0, …, δ_{n-1}], δ_i of shape (..., N, out_i).
    """
    deltas = [out_grad]
    for i in range(len(weights) - 1, 0, -1):
        back = _mm(deltas[0], weights[i])                       # ∂ℓ/∂a_i
        deltas.insert(0, back * _act_grad(pre[i - 1], spec.activation))
    return deltas
