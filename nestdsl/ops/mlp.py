"""MLP memories: description, forward pass and the closed-form backward used by inner updates.

An MLP memory of depth n maps a key x ∈ R^{Dk} to

    z(θ; x) = W_{n-1} σ( … σ(W_1 σ(W_0 x)) … )          (no biases; depth 1: z = W_0 x)
    M(θ; x) = [x +] [Norm](z)                           (residual: Hope Eq. 89; norm: design §3.1)

``Norm`` is the inner LayerNorm of TTT (Sun et al. 2024 §2.7, f(x) = x + LN(f_res(x))) and of
titans-pytorch's residual memory: LN(z)·γ + b with an outer-learned per-head gain γ and bias b
(not updated by the inner rule). It bounds the prediction whatever the weights grow to, which is
what keeps deep test-time memories finite. Titans (arXiv:2501.00663 §3) and Hope (NL paper Eqs. 88–91) update θ by gradient
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

__all__ = ["MLPMemory", "ACTIVATIONS", "NormParams", "mlp_forward", "mlp_forward_cached",
           "mlp_backward", "output_grad", "normalized_lrs", "NLMS_EPS", "renorm_rows"]

#: (gain, bias) of the inner LayerNorm per head: each (…, Dv), broadcastable to the leading dims
#: of the input without its token axis, e.g. (H, Dv) for x (B, H, N, Dk). None = (1, 0).
NormParams = tuple[Tensor, Tensor] | None


def _per_token(norm: NormParams) -> NormParams:
    """(…, Dv) → (…, 1, Dv): broadcast over the token axis."""
    return None if norm is None else (norm[0].unsqueeze(-2), norm[1].unsqueeze(-2))


LN_EPS = 1e-5
#: ε of the per-layer normalised step η/(ε + ‖a‖²): keeps a (near-)zero layer input finite
NLMS_EPS = 1e-6
#: ε² under the square root of the row renormalisation: a zero row stays finite (and zero)
RENORM_EPS = 1e-24

ACTIVATIONS = ("silu", "gelu", "relu", "tanh")


@dataclass(frozen=True)
class MLPMemory:
    """Description of an MLP memory (per head).

    Attributes:
        depth: number of weight matrices (≥ 1; depth 1 is a matrix, used for a linear memory
            with inner normalisation — TTT-Linear; a bare matrix is ``memory="linear"``).
        hidden: absolute hidden width per head (unused at depth 1).
        activation: one of ``silu``, ``gelu`` (exact, erf), ``relu``, ``tanh``.
        residual: ``M(x) = x + …`` as in Hope (Eq. 89) and TTT; requires Dk == Dv.
        norm: inner LayerNorm on the MLP output, before the residual (TTT, titans-pytorch).
        renorm: after each chunk, every weight's rows are rescaled to the norms they had at the
            chunk start — hence, by induction, to θ_0's (``renorm_rows``): the writes turn the
            fast weights but cannot grow them.
    """

    depth: int = 2
    hidden: int = 64
    activation: str = "silu"
    residual: bool = False
    norm: bool = False
    renorm: bool = False

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"MLPMemory.depth must be >= 1 (got {self.depth})")
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


def _layer_norm(z: Tensor, norm: NormParams) -> tuple[Tensor, Tensor, Tensor]:
    """LN(z)·γ + b over the last dim; also returns x̂ and 1/σ for the closed-form backward."""
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    rstd = torch.rsqrt(zc.pow(2).mean(-1, keepdim=True) + LN_EPS)
    xhat = zc * rstd
    y = xhat if norm is None else xhat * norm[0] + norm[1]
    return y, xhat, rstd


def _finish(x: Tensor, z: Tensor, spec: MLPMemory, norm: NormParams) -> Tensor:
    """M = [x +] [Norm](z): the part of the memory function after the last weight."""
    if spec.norm:
        z = _layer_norm(z, _per_token(norm))[0]
    return x + z if spec.residual else z


def mlp_forward(weights: Sequence[Tensor], x: Tensor, spec: MLPMemory,
                norm: NormParams = None) -> Tensor:
    """M(θ; x).

    Args:
        weights: W_i of shape (..., out_i, in_i) (batch dims broadcast against x's).
        x: inputs of shape (..., N, Dk).
        spec: the MLP description.
        norm: the inner norm's (gain, bias) per head when ``spec.norm``, each (..., Dv)
            (None: 1 and 0).
    Returns:
        (..., N, Dv).
    """
    h = x
    for i, w in enumerate(weights):
        h = _mm(h, w.mT)
        if i < len(weights) - 1:
            h = _act(h, spec.activation)
    return _finish(x, h, spec, norm)


def mlp_forward_cached(weights: Sequence[Tensor], x: Tensor, spec: MLPMemory
                       ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The weights' part of the forward pass, z(θ; x), with each layer's input and
    pre-activation (the norm and residual come after: ``output_grad``).

    Returns:
        (z (..., N, Dv), inputs [a_0 = x, a_1, …], pre-activations [z_0, …, z_{n-2}]).
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
    return h, inputs, pre


def output_grad(x: Tensor, z: Tensor, v: Tensor, spec: MLPMemory, norm: NormParams,
                objective_grad) -> Tensor:
    """∂ℓ/∂z for ℓ(M(x), v) with M = [x +] [Norm](z), in closed form.

    The residual passes the error through unchanged; the LayerNorm's backward is
    ∂ℓ/∂z = (1/σ)(g − mean(g) − x̂·mean(g ⊙ x̂)) with g = γ ⊙ ∂ℓ/∂M.
    """
    if not spec.norm:
        return objective_grad(x + z if spec.residual else z, v)
    norm = _per_token(norm)
    y, xhat, rstd = _layer_norm(z, norm)
    err = objective_grad(x + y if spec.residual else y, v)
    g = err if norm is None else err * norm[0]
    return rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))


def mlp_backward(weights: Sequence[Tensor], pre: Sequence[Tensor], out_grad: Tensor,
                 spec: MLPMemory) -> list[Tensor]:
    """Closed-form backprop: the gradient δ_i at each layer's output (pre-activation).

    The per-token weight gradient is then ``∂ℓ/∂W_i = δ_i a_iᵀ`` (the residual skip carries no
    weight, so it does not change any weight gradient).

    Args:
        weights: W_i (..., out_i, in_i).
        pre: pre-activations z_0 … z_{n-2} from ``mlp_forward_cached``, each (..., N, out_i).
        out_grad: ∂ℓ/∂z, (..., N, Dv) (``output_grad``).
    Returns:
        [δ_0, …, δ_{n-1}], δ_i of shape (..., N, out_i).
    """
    deltas = [out_grad]
    for i in range(len(weights) - 1, 0, -1):
        back = _mm(deltas[0], weights[i])                       # ∂ℓ/∂a_i
        deltas.insert(0, back * _act_grad(pre[i - 1], spec.activation))
    return deltas


def normalized_lrs(eta: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """Per-layer normalised steps η_{i,t} = η_t / (ε + ‖a_{i,t}‖²) (NL paper Eq. 57, normalised
    LMS, applied to each weight with its own input a_i; ``mlp_forward_cached``'s inputs).

    A gradient step on W_i is δ_i a_iᵀ, which moves that layer's output on its own input by
    δ_i ‖a_i‖²: dividing by ‖a_i‖² makes the write's size independent of the weights' and keys'
    scale, so η ∈ (0, 1) is the fraction of the error each layer corrects (DeltaNet's β).
    """
    return [eta / (NLMS_EPS + (a * a).sum(-1)) for a in inputs]


def renorm_rows(w: Tensor, like: Tensor) -> Tensor:
    """w with each row (last dim) rescaled to the norm of the same row of `like`:
    w_r · ‖like_r‖ / ‖w_r‖ (fast-weight norm control, ``MLPMemory.renorm``)."""
    target = like.pow(2).sum(-1, keepdim=True).sqrt()
    return w * (target * torch.rsqrt(w.pow(2).sum(-1, keepdim=True) + RENORM_EPS))
