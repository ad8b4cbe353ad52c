"""Fast form of MLP memories (Titans LMM, TTT-MLP, the memories inside Hope).

Per chunk of C tokens (docs/design.md §3.1, Titans §3.2, NL paper Eqs. 90–93):

1. one forward pass of all the chunk's keys through the chunk-start weights θ_{c(t)} and the
   closed-form backward (``mlp.mlp_backward``) give every token's gradient as rank-1 factors
   ∂ℓ/∂W_i = δ_{i,t} a_{i,t}ᵀ — parallel over the chunk;
2. momentum S_t = β_t S_{t−1} − η_t g_t and retention θ_t = α_t P_t(θ_{t−1}) + S_t are linear
   recurrences; ``blockform`` unrolls them with segment products (a scan in matrix form);
3. the DGD projection on W_0 couples tokens through y_t = W_{0,t−1} k_t: one unit-triangular
   solve per chunk (the UT transform), never a token loop;
4. reads after/before the write use the dual form, layer by layer, without materialising the
   per-token weights.

``mlp_chunk_step`` is public: Hope's self-modifying block updates several memories jointly chunk
by chunk (targets v̂ = M(θ_{c(t)}; v_t) computed by the caller with ``mlp_forward``).
"""

from __future__ import annotations

from typing import cast

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
from .linear_chunked import _gate
from .mlp import (
    MLPMemory,
    NormParams,
    _act,
    _finish,
    mlp_backward,
    mlp_forward,
    mlp_forward_cached,
    normalized_lrs,
    output_grad,
    renorm_rows,
)
from .objectives import Objective, get_objective
from .state import MemoryState

__all__ = ["mlp_chunk_step", "mlp_scan_chunked"]


def mlp_chunk_step(
    state: MemoryState,
    q_c: Tensor | None,
    k_c: Tensor,
    v_c: Tensor,
    lr_c: Tensor | float,
    retention_c: Tensor | float | None,
    momentum_c: Tensor | float | None,
    dec: Decays | None = None,
    *,
    spec: MLPMemory,
    objective: str | Objective = "l2",
    rule: str = "gd",
    read: str = "after",
    erase: str = "eta",
    norm: NormParams = None,
    normalized_lr: bool = False,
) -> tuple[Tensor | None, MemoryState]:
    """Advance an MLP memory over one chunk of L ≤ C tokens (gradients at the chunk start).

    Args:
        state: weights W_i of shape (B, H, out_i, in_i) (or (H, out_i, in_i), shared over the
            batch) and momentum buffers of the same shapes or None (zeros).
        q_c: (B, H, L, Dk) or None (no read); k_c: (B, H, L, Dk); v_c: (B, H, L, Dv).
        lr_c, retention_c, momentum_c: η, α, β as floats or (B, H, L); retention None → α = 1,
            momentum None → no momentum.
        dec: this chunk's decay coefficients over the flattened (B·H, …) gates, precomputed for
            all chunks at once (``blockform.block_decays``); None computes them here.
        spec, objective, rule ("gd" | "dgd"), read ("after" | "before" | "chunk").
        erase: DGD's erase rate ε (``blockform.ERASES``); ignored for gd.
        norm: (gain, bias) of the inner norm when ``spec.norm``, each (H, Dv) (None: 1, 0).
        normalized_lr: each weight W_i steps with its own η_{i,t} = η_t / (ε + ‖a_{i,t}‖²), a_i
            its layer's input (``mlp.normalized_lrs``); DGD's erase uses W_0's η_{0,t}.
        ``spec.renorm``: the end-of-chunk weights' rows are rescaled to their chunk-start norms.
    Returns:
        (o_c (B, H, L, Dv) or None, state at the end of the chunk, weights (B, H, out, in)).
    """
    obj = get_objective(objective)
    B, H, L = k_c.shape[:3]
    N = B * H
    # Work on (B·H, …) tensors: the products below are plain bmm calls (fewer autograd nodes
    # than 4-D matmuls; identical values).

    def flat(x: Tensor) -> Tensor:
        return x.expand(B, H, *x.shape[-2:]).reshape(N, *x.shape[-2:])

    def flat_gate(x: Tensor | float | None) -> Tensor | float | None:
        return x.expand(B, H, L).reshape(N, L) if isinstance(x, Tensor) else x

    Ws = [flat(w) for w in state.weights]
    if norm is not None:   # (H, Dv) or (B, H, Dv) → (B·H, Dv)
        norm = cast("tuple[Tensor, Tensor]",
                    tuple(p.expand(B, H, p.shape[-1]).reshape(N, p.shape[-1]) for p in norm))
    k_c, v_c = flat(k_c), flat(v_c)
    if q_c is not None:
        q_c = flat(q_c)
    gate_like = k_c[..., 0]
    eta = _gate(flat_gate(lr_c), gate_like, 1.0)
    alpha = _gate(flat_gate(retention_c), gate_like, 1.0)
    beta = _gate(flat_gate(momentum_c), gate_like, None)
    Ss: list[Tensor | None] = [None] * len(Ws)
    if beta is not None:
        if state.momentum is None:
            Ss = [torch.zeros_like(w) for w in Ws]
        else:
            Ss = [flat(s) for s in state.momentum]
    if dec is None:
        dec = decays(alpha, beta)

    # 1. per-token gradients at θ_{c(t)}: ∂ℓ/∂W_i = δ_i a_iᵀ
    z, inputs, pre = mlp_forward_cached(Ws, k_c, spec)
    deltas = mlp_backward(Ws, pre, output_grad(k_c, z, v_c, spec, norm, obj.grad), spec)
    etas = normalized_lrs(eta, inputs) if normalized_lr else [eta] * len(Ws)
    Eds = [-e[..., None] * d for e, d in zip(etas, deltas, strict=True)]   # d_{i,t} = −η_{i,t} δ_{i,t}

    # 3. DGD on the key-multiplying weight: f_t = −ε_t W_{0,t−1} k_t
    Ef0 = None
    if rule == "dgd":
        phi = -erase_rate(erase, etas[0], alpha, k_c)
        Y = solve_prefix(Ws[0], Ss[0], k_c, dec, phi=phi, psi=None, delta=Eds[0])
        Ef0 = phi[..., None] * Y
    Efs = [Ef0] + [None] * (len(Ws) - 1)

    # 4. reads
    o = None
    if q_c is not None:
        if read == "chunk":
            o = mlp_forward(Ws, q_c, spec, norm)
        else:
            h = q_c
            for i in range(len(Ws)):
                h = read_weights(Ws[i], Ss[i], h, inputs[i], Efs[i], Eds[i], dec,
                                 after=(read == "after"))
                if i < len(Ws) - 1:
                    h = _act(h, spec.activation)
            o = _finish(q_c, h, spec, norm)

    # 2. state at the chunk end
    new_w, new_s = [], []
    for i in range(len(Ws)):
        w, s = end_state(Ws[i], Ss[i], inputs[i], Efs[i], Eds[i], dec)
        if spec.renorm:       # rows back to their chunk-start norms (= θ_0's, by induction)
            w = renorm_rows(w, Ws[i])
        new_w.append(w.reshape(B, H, *w.shape[-2:]))
        new_s.append(None if s is None else s.reshape(B, H, *s.shape[-2:]))
    if o is not None:
        o = o.reshape(B, H, L, o.shape[-1])
    # with momentum (beta) every end state has its S
    return o, MemoryState(tuple(new_w),
                          cast("tuple[Tensor, ...]", tuple(new_s)) if beta is not None else None)


def mlp_scan_chunked(
    q: Tensor, k: Tensor, v: Tensor, *, lr: Tensor, retention: Tensor | None,
    momentum: Tensor | None, state: MemoryState, spec: MLPMemory, objective: Objective,
    rule: str, read: str, chunk_size: int, erase: str = "eta", norm: NormParams = None,
    step=mlp_chunk_step, group: int | None = None, normalized_lr: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Run an MLP memory over (B, H, T, ·) chunk by chunk (a Python loop over chunks, so a
    compiled ``step`` stays one chunk long whatever T is); `group`: see ``scan_blocks``. The
    decay coefficients of all chunks come from one batched call (``block_decays``)."""
    B, H, T = k.shape[:3]
    alpha = retention.reshape(B * H, T) if retention is not None else k.new_ones(B * H, T)
    beta = momentum.reshape(B * H, T) if momentum is not None else None
    dec = block_decays(alpha, beta, chunk_size)     # over the step's flattened (B·H, …) gates
    return scan_blocks(step, state, chunk_size, (q, k, v, lr, retention, momentum, dec),
                       group=group, objective=objective, rule=rule, read=read, spec=spec,
                       erase=erase, norm=norm, normalized_lr=normalized_lr)
