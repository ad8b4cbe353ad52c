"""Fast form of linear (matrix) memories: M(k) = M k, M ∈ R^{Dv×Dk} per batch element and head.

With exact online learning (chunk size C = 1) the update family is the gated delta rule in
disguise. Writing y_t = M_{t−1} k_t and ``affine`` objectives ∂ℓ/∂p = a·p + c(v):

    M_t = α_t M_{t−1} − ε_t y_t k_tᵀ [dgd] + S_t,   S_t = β_t S_{t−1} − η_t (a·y_t + c(v_t)) k_tᵀ

  * linear/dot/gd, η = 1, α = 1: causal linear attention (M_t = Σ v_s k_sᵀ), no solve needed;
  * + α: gated linear attention / Mamba2-like;
  * linear/l2/gd: the delta rule (DeltaNet); dot/dgd with ε = αη: Gated DeltaNet;
  * linear/l2/dgd: the erase term appears twice (once in the erase, once in the gradient; Hope
    Eq. 88).

These are computed exactly, block by block (block size is an implementation choice that never
changes results), with the UT/WY triangular solve of ``blockform``. With C > 1 the gradient is
taken at the chunk-start state (TTT-Linear / Titans mini-batch form), so the surprise is known
for the whole chunk and only the DGD projection needs the triangular solve; blocks are then the
semantic chunks.
"""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor

from .blockform import (
    Decays,
    block_decays,
    decays,
    end_state,
    erase_rate,
    read_weights,
    scan_blocks,
    solve_prefix,
)
from .objectives import Objective, get_objective
from .state import MemoryState

__all__ = ["linear_chunk_step", "linear_scan_chunked", "DEFAULT_BLOCK"]

#: Block length of the exact (C = 1) fast form. Any value gives the same result.
DEFAULT_BLOCK = 64


@overload
def _gate(x: Tensor | float | None, like: Tensor, default: float) -> Tensor: ...
@overload
def _gate(x: Tensor | float | None, like: Tensor, default: float | None) -> Tensor | None: ...
def _gate(x: Tensor | float | None, like: Tensor, default: float | None) -> Tensor | None:
    """A gate as a (B, H, L) tensor (float constants are broadcast)."""
    if x is None:
        return None if default is None else torch.full_like(like, default)
    if isinstance(x, Tensor):
        return x.to(like.dtype).expand_as(like)
    return torch.full_like(like, float(x))


def linear_chunk_step(
    state: MemoryState,
    q_c: Tensor | None,
    k_c: Tensor,
    v_c: Tensor,
    lr_c: Tensor | float,
    retention_c: Tensor | float | None,
    momentum_c: Tensor | float | None,
    dec: Decays | None = None,
    *,
    objective: str | Objective = "l2",
    rule: str = "gd",
    read: str = "after",
    exact: bool = False,
    erase: str = "eta",
) -> tuple[Tensor | None, MemoryState]:
    """Advance a linear memory over one block of L tokens.

    Args:
        state: ``MemoryState((M,), (S,) | None)``, M and S of shape (B, H, Dv, Dk).
        q_c: (B, H, L, Dk) or None (no read); k_c: (B, H, L, Dk); v_c: (B, H, L, Dv).
        lr_c, retention_c, momentum_c: η, α, β as floats or (B, H, L); retention None → α = 1;
            momentum None → no momentum (then ``state.momentum`` is ignored and returned None).
        dec: this block's decay coefficients, precomputed for all blocks at once
            (``blockform.block_decays``); None computes them here.
        erase: DGD's erase rate ε (``blockform.ERASES``); ignored for gd.
        exact: True for chunk size 1 (the block is any run of tokens; requires an objective with
            ``affine`` set); False when the block is one semantic chunk (gradient at its start).
    Returns:
        (o_c (B, H, L, Dv) or None, state after the block).
    """
    obj = get_objective(objective)
    M0 = state.weights[0]
    gate_like = k_c[..., 0]
    eta = _gate(lr_c, gate_like, 1.0)
    alpha = _gate(retention_c, gate_like, 1.0)
    beta = _gate(momentum_c, gate_like, None)
    S0 = None
    if beta is not None:
        S0 = state.momentum[0] if state.momentum is not None else torch.zeros_like(M0)
    if dec is None:
        dec = decays(alpha, beta)

    phi = None
    if rule == "dgd":  # f_t = −ε_t y_t
        phi = -erase_rate(erase, eta, alpha, k_c)
    psi = None
    if exact:
        if obj.affine is None:
            raise ValueError(f"objective {obj.name!r} is not affine; exact blocks need affine")
        # d_t = −η_t (a·y_t + c(v_t)): the delta-rule coupling when a ≠ 0.
        delta = -eta[..., None] * obj.grad(torch.zeros_like(v_c), v_c)
        if obj.affine != 0.0:
            psi = -eta * obj.affine
    else:
        # gradient at the chunk-start state: the surprise of every token is known up front.
        delta = -eta[..., None] * obj.grad(k_c @ M0.mT, v_c)

    Ef, Ed = None, delta
    if phi is not None or psi is not None:
        Y = solve_prefix(M0, S0, k_c, dec, phi=phi, psi=psi, delta=delta)
        if phi is not None:
            Ef = phi[..., None] * Y
        if psi is not None:
            Ed = delta + psi[..., None] * Y

    o = None
    if q_c is not None:
        if read == "chunk" and not exact:
            o = q_c @ M0.mT                                        # θ_{c(t)}
        else:                                                      # chunk == before when C = 1
            o = read_weights(M0, S0, q_c, k_c, Ef, Ed, dec, after=(read == "after"))
    M, S = end_state(M0, S0, k_c, Ef, Ed, dec)
    return o, MemoryState((M,), None if S is None else (S,))


def linear_scan_chunked(
    q: Tensor, k: Tensor, v: Tensor, *, lr: Tensor, retention: Tensor | None,
    momentum: Tensor | None, state: MemoryState, objective: Objective, rule: str, read: str,
    chunk_size: int, erase: str = "eta", block_size: int = DEFAULT_BLOCK, step=linear_chunk_step,
    group: int | None = None,
) -> tuple[Tensor, MemoryState]:
    """Run a linear memory over (B, H, T, ·) blockwise; see ``linear_chunk_step``; `group`:
    checkpoint every G blocks (``scan_blocks``).

    ``step`` may be a ``torch.compile``'d ``linear_chunk_step``: the Python loop over blocks keeps
    the compiled graph one block long whatever T is.
    """
    exact = chunk_size == 1 and objective.affine is not None
    # Non-affine objective with C = 1: one token per block *is* the exact semantics.
    L = block_size if exact else chunk_size
    alpha = retention if retention is not None else k.new_ones(k.shape[:3])
    dec = block_decays(alpha, momentum, L)          # all blocks' decays in one batched call
    return scan_blocks(step, state, L, (q, k, v, lr, retention, momentum, dec), group=group,
                       objective=objective, rule=rule, read=read, exact=exact, erase=erase)
