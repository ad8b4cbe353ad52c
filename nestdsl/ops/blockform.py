"""Closed-form algebra of the update family inside one block of L tokens.

Inside a block that starts from weight W_0 (one matrix, (…, Dout, Din)) and momentum S_0, every
rule of docs/design.md §3.1 has the form

    S_t = β_t S_{t−1} + d_t a_tᵀ                    (d_t = −η_t δ_t: the momentary surprise)
    W_t = α_t W_{t−1} + f_t k_tᵀ + S_t              (f_t = −ε_t W_{t−1} k_t: DGD, else 0)

(W_{t−1}(α_t I − ε_t k_t k_tᵀ) = α_t W_{t−1} + f_t k_tᵀ; ε_t is the erase rate, ``erase_rate``)

i.e. every change is a sum of rank-1 terms whose right factor is a known row (a_t, the layer
input, or k_t). Unrolling with the segment products D1[t,s] = ∏_{s<i≤t} α_i and
D2[t,s] = ∏_{s<i≤t} β_i (Titans Eq. 16–18, generalised to momentum *and* retention):

    W_t = γ_t W_0 + Z_t S_0 + Σ_{s≤t} D1[t,s] f_s k_sᵀ + Σ_{s≤t} Wc[t,s] d_s a_sᵀ
    S_t = ζ_t S_0 + Σ_{s≤t} D2[t,s] d_s a_sᵀ

with γ_t = ∏_{i≤t} α_i, ζ_t = ∏_{i≤t} β_i, Wc = D1·D2 (lower-triangular matrix product) and
Z = D1·ζ. Without momentum, Wc = D1 and Z = 0. Reads of the weights along the block become
masked L×L matrix products (the "dual form" of TTT / chunked linear attention).

The DGD term needs y_t = W_{t−1} k_t, which depends on earlier f_s: it is the unit lower-triangular
system (I − A) Y = h solved by ``solve_prefix`` — the UT/WY transform of the delta rule. When the
surprise itself depends on y (linear memory with exact chunk size 1 and an affine objective:
d_t = ψ_t y_t + δ_t, e.g. the delta rule with ψ = −η) the same solve covers it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from nestdsl.vocabulary import ERASE_RATES

__all__ = ["Decays", "ERASES", "block_decays", "decays", "erase_rate", "solve_prefix",
           "read_weights", "end_state"]

#: The erase rate ε_t of Delta Gradient Descent (docs/design.md §3.1), by spec name:
#: ``eta`` ε = η (NL paper Eq. 88, literally), ``normalized`` ε = η' = η/(1 + η‖k‖²) (Eq. 57),
#: ``retained`` ε = α·η (retention before the erase: Gated DeltaNet's αS(I − βkkᵀ)).
ERASES = ERASE_RATES


def erase_rate(erase: str, eta: Tensor, alpha: Tensor, k: Tensor) -> Tensor:
    """ε_t (…, L) for per-token η, α (…, L) and keys k (…, L, Dk)."""
    if erase == "eta":
        return eta
    if erase == "normalized":
        return eta / (1 + eta * (k * k).sum(-1))
    if erase == "retained":
        return alpha * eta
    raise ValueError(f"erase must be one of {ERASES}; got {erase!r}")


class Decays(NamedTuple):
    """Decay coefficients of one block; suffix ``m`` = indexed at t−1 ("before" reads).

    Shapes: matrices (…, L, L) with rows t and columns s; vectors (…, L).
    """

    D1: Tensor
    D1m: Tensor
    gamma: Tensor
    gamma_m: Tensor
    Wc: Tensor
    Wcm: Tensor
    Z: Tensor | None
    Zm: Tensor | None
    D2_last: Tensor | None      # D2[L, s]: weight of d_s in S_L
    zeta_last: Tensor | None    # ζ_L: weight of S_0 in S_L


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b; ``torch.bmm`` when both are 3-D with one batch size (fewer autograd nodes than
    matmul's expand/reshape wrapping — the fast forms run many tiny products per chunk)."""
    if a.dim() == 3 and b.dim() == 3 and a.shape[0] == b.shape[0]:
        return torch.bmm(a, b)
    return a @ b


_STRICT: dict[tuple[int, str], Tensor] = {}


def _strict_lower(n: int, device: torch.device) -> Tensor:
    """The strictly lower-triangular boolean n×n mask (cached per size and device in eager mode).

    Inside torch.compile the mask is built in the graph (a constant inductor folds): reading a
    module-level cache there installs a guard on the dict, which the first call then invalidates
    by filling it, costing a second full compile of every graph.
    """
    if torch.compiler.is_compiling():
        return torch.ones(n, n, dtype=torch.bool, device=device).tril(-1)
    key = (n, str(device))
    m = _STRICT.get(key)
    if m is None:
        m = _STRICT[key] = torch.ones(n, n, dtype=torch.bool, device=device).tril(-1)
    return m


def _segment_products_ext(a: Tensor) -> Tensor:
    """E[t', s'] = ∏_{s'<i'≤t'} ã_{i'} for t' ≥ s', else 0, with ã = (1, a_0, …, a_{L−1}).

    a: (…, L) → (…, L+1, L+1). With D[t, s] = ∏_{s<i≤t} a_i (t ≥ s) and γ_t = ∏_{i≤t} a_i:

        D = E[1:, 1:],   D shifted down one row ("before"; row 0 zero) = E[:L, 1:],
        γ = E[1:, 0],    γ shifted (γ_{−1} = 1) = E[:L, 0].

    One cumulative product down the rows gives all four (no logs or divisions, so a = 0 is
    fine; each column multiplies the same factors in the same order as a cumprod of a alone).
    """
    n = a.shape[-1] + 1
    col = torch.nn.functional.pad(a, (1, 0), value=1.0)[..., :, None]
    rep = torch.where(_strict_lower(n, a.device), col, 1.0)
    return torch.cumprod(rep, dim=-2).tril()


def _segment_products(a: Tensor) -> Tensor:
    """D[t, s] = ∏_{s<i≤t} a_i for t ≥ s, else 0. a: (…, L) → (…, L, L)."""
    return _segment_products_ext(a)[..., 1:, 1:]


def decays(alpha: Tensor, beta: Tensor | None) -> Decays:
    """Decay coefficients for per-token retention α (…, L) and momentum β (…, L) or None."""
    L = alpha.shape[-1]
    E = _segment_products_ext(alpha)
    D1, D1m, gamma, gamma_m = E[..., 1:, 1:], E[..., :L, 1:], E[..., 1:, 0], E[..., :L, 0]
    if beta is None:
        return Decays(D1, D1m, gamma, gamma_m, D1, D1m, None, None, None, None)
    F = _segment_products_ext(beta)
    # G[t'] = E[t', 1:] · F[1:, :]: row t+1 is (Z_t, Wc[t, :]) with Wc = D1·D2 and Z = D1·ζ;
    # row 0 is zero, so rows 0..L−1 are the "before" versions — one product for all four.
    G = _mm(E[..., :, 1:], F[..., 1:, :])
    return Decays(D1, D1m, gamma, gamma_m, G[..., 1:, 1:], G[..., :L, 1:], G[..., 1:, 0],
                  G[..., :L, 0], F[..., L, 1:], F[..., L, 0])


def block_decays(alpha: Tensor, beta: Tensor | None, size: int) -> list[Decays | None]:
    """``decays`` of every block of `size` tokens along the last dim, in one batched call.

    alpha, beta: (…, T). Returns one entry per block (the order of ``Tensor.split``): the full
    blocks' coefficients come from a single ``decays`` over (…, T // size, size) — a handful of
    kernels for the whole sequence instead of ~100 per block (forward + backward, most of them
    in the cumulative products) — and are views of it; a shorter last block gets None (its step
    computes its own). Each block's values are exactly those of ``decays`` on that block alone.
    """
    T = alpha.shape[-1]
    n, tail = divmod(T, size)
    out: list[Decays | None] = []
    if n:
        def blocks(g: Tensor | None) -> Tensor | None:
            return None if g is None else g[..., :n * size].unflatten(-1, (n, size))

        d = decays(blocks(alpha), blocks(beta))   # type: ignore[arg-type]
        # one unbind per field: its backward is a single stack (per-block slicing would write a
        # full-length zero tensor per block)
        at = alpha.dim() - 1                     # the block axis, after the leading dims
        fields: list[Any] = [f.unbind(at) if f is not None else [None] * n for f in d]
        out = [Decays(*(f[i] for f in fields)) for i in range(n)]
    if tail:
        out.append(None)
    return out


def solve_prefix(W0: Tensor, S0: Tensor | None, K: Tensor, dec: Decays, *,
                 phi: Tensor | None, psi: Tensor | None, delta: Tensor | None) -> Tensor:
    """Solve for y_t = W_{t−1} k_t when f_t = φ_t y_t and d_t = ψ_t y_t + δ_t (a_t = k_t).

    Args:
        W0: (…, Dout, Din); S0: same or None; K: (…, L, Din).
        phi, psi: (…, L) or None (= 0). delta: (…, L, Dout) or None (= 0).
    Returns:
        Y: (…, L, Dout).
    """
    h = dec.gamma_m[..., None] * _mm(K, W0.mT)
    if S0 is not None:
        assert dec.Zm is not None                  # a momentum state: the decays have Z
        h = h + dec.Zm[..., None] * _mm(K, S0.mT)
    KK = _mm(K, K.mT)
    if delta is not None:
        h = h + _mm(KK * dec.Wcm, delta)
    coef = torch.zeros_like(KK)
    if phi is not None:
        coef = coef + dec.D1m * phi[..., None, :]
    if psi is not None:
        coef = coef + dec.Wcm * psi[..., None, :]
    L = K.shape[-2]
    # (I − A) Y = h with A strictly lower triangular: the UT transform of the delta rule. In
    # ≥ float32: under bf16 autocast the matmuls above return bf16, which CPU's triangular
    # solve does not take (and a bf16 solve would lose the states' precision).
    cd = torch.promote_types(torch.promote_types(KK.dtype, h.dtype), torch.float32)
    eye = torch.eye(L, dtype=cd, device=K.device)
    Y = torch.linalg.solve_triangular(eye - (KK * coef).to(cd), h.to(cd), upper=False,
                                      unitriangular=True)
    return Y.to(h.dtype)


def read_weights(W0: Tensor, S0: Tensor | None, X: Tensor, A: Tensor, Ef: Tensor | None,
                 Ed: Tensor, dec: Decays, *, after: bool) -> Tensor:
    """x_t ↦ W_t x_t (``after``) or W_{t−1} x_t for every row t of X, without forming W_t.

    Args:
        W0: (…, Dout, Din); S0: same or None; X: (…, L, Din) inputs; A: (…, L, Din) the rows
            a_s (keys for the DGD term when Ef is given, they must be the same rows).
        Ef: (…, L, Dout) DGD factors f_s or None; Ed: (…, L, Dout) surprise factors d_s.
    Returns:
        (…, L, Dout).
    """
    g, D1, Wc, Z = ((dec.gamma, dec.D1, dec.Wc, dec.Z) if after
                    else (dec.gamma_m, dec.D1m, dec.Wcm, dec.Zm))
    out = g[..., None] * _mm(X, W0.mT)
    if S0 is not None:
        assert Z is not None                       # a momentum state: the decays have Z
        out = out + Z[..., None] * _mm(X, S0.mT)
    XA = _mm(X, A.mT)
    out = out + _mm(XA * Wc, Ed)
    if Ef is not None:
        out = out + _mm(XA * D1, Ef)
    return out


def end_state(W0: Tensor, S0: Tensor | None, A: Tensor, Ef: Tensor | None, Ed: Tensor,
              dec: Decays) -> tuple[Tensor, Tensor | None]:
    """(W_L, S_L) at the end of the block (shapes of W0 / S0)."""
    coef = Ed * dec.Wc[..., -1, :, None]
    if Ef is not None:
        coef = coef + Ef * dec.D1[..., -1, :, None]
    W = dec.gamma[..., -1, None, None] * W0 + _mm(coef.mT, A)
    if S0 is None:
        return W, None
    # a momentum state: the decays have the momentum terms
    assert dec.Z is not None and dec.zeta_last is not None and dec.D2_last is not None
    W = W + dec.Z[..., -1, None, None] * S0
    S = dec.zeta_last[..., None, None] * S0 + _mm((Ed * dec.D2_last[..., None]).mT, A)
    return W, S


def scan_blocks(
    step: Callable[..., tuple[Tensor | None, Any]], state: Any, size: int,
    inputs: tuple[Tensor | list[Any] | None, ...], *, group: int | None = None, **step_kwargs: Any,
) -> tuple[Tensor, Any]:
    """Run `step(state, *block_inputs, **step_kwargs)` over blocks of `size` tokens (dim 2).

    A Python loop over blocks, so a compiled `step` stays one block long whatever T is.
    torch.split (not slicing in the loop): its backward is one concatenation, whereas each
    slice's backward would write a full-length zero tensor (quadratic in T).

    `group` = G: under autograd, keep only the state every G blocks and recompute the blocks of a
    group in backward (activation checkpointing; a group saves its start state and its inputs,
    views of the full-length q, k, v, gates). The values and gradients are those of the plain
    loop (the recomputation repeats the same ops); the saved bytes per token drop from a few
    per-token intermediates plus one state per block to about one state per G blocks. Sequences
    shorter than two groups run plainly: there the recomputation would cost time and save little.
    """
    # an input is a (B, H, T, …) tensor split here, None, or a list already holding one entry
    # per block (e.g. ``block_decays``)
    pieces = [x if isinstance(x, list) else x.split(size, dim=2) if x is not None else None
              for x in inputs]
    assert pieces[0] is not None, "the first input (q) is a tensor"
    n = len(pieces[0])

    def run(state: Any, lo: int, hi: int) -> tuple[list[Tensor], Any]:
        outs: list[Tensor] = []
        for i in range(lo, hi):
            block = tuple(p[i] if p is not None else None for p in pieces)
            o, state = step(state, *block, **step_kwargs)
            outs.append(cast(Tensor, o))            # q is given: every block reads
        return outs, state

    if not group or n < 2 * group or not torch.is_grad_enabled():
        outs, state = run(state, 0, n)
        return torch.cat(outs, dim=2), state
    from torch.utils.checkpoint import checkpoint

    outs = []
    for lo in range(0, n, group):
        part, state = checkpoint(run, state, lo, min(lo + group, n), use_reentrant=False)
        outs.extend(part)
    return torch.cat(outs, dim=2), state
