"""A Triton chunk scan for depth-2 MLP memories (Titans LMM, TTT-MLP, Hope's memories).

One program per (batch, head) walks the sequence chunk by chunk with the memory state — W_0
(hidden × Dk), W_1 (Dv × hidden) and their momenta — held on chip from the first chunk to the
last; each chunk is the closed form of ``mlp_chunked.mlp_chunk_step`` (docs/design.md §3.1):

1. the chunk-start forward z = W_1 σ(W_0 k) and the analytic inner gradients
   δ_1 = ∂ℓ/∂z (objective, inner LayerNorm, residual), δ_0 = (W_1ᵀ δ_1) ⊙ σ'(W_0 k);
2. the decay coefficients of the chunk from cumulative sums of log-gates:
   D1[t, s] = exp(Σ_{s<i≤t} log α_i), D2 likewise from β, Wc = D1·D2, Z = D1·ζ (blockform);
3. DGD's prefix solve (I − A) Y = h on W_0 with (I − A)⁻¹ = (I + A)(I + A²)(I + A⁴)…: A is
   strictly lower triangular, so A^C = 0 and log₂ C products are exact;
4. reads after / before the writes in the dual form, layer by layer, or at the chunk start;
5. the state at the chunk end.

The kernel computes in float32 (``tl.dot`` with IEEE precision: no TF32) and writes the state
at the start of every group of G chunks; nothing per chunk is kept for backward.

Backward (``TritonMLPScan``) is a second kernel, ``_mlp_scan_bwd``: per group, last group
first, it recomputes the chunk-start states from the group's saved state into a scratch buffer,
then runs the chunks' closed-form adjoints last chunk first, carrying the state gradients from
chunk to chunk — through the end state, the dual-form reads (and the output norm), DGD's prefix
solve ((I − Aᵀ)⁻¹ by the same product of powers), the inner gradient (the objective's Jacobian,
the inner LayerNorm's backward differentiated once more, σ'' of the activation) and the decays
back to the gates (D[t, s] = exp(l_t − l_s) gives ∂l_t = Σ_s P[t, s] − Σ_s P[s, t] with
P = ∂D ⊙ D, then a reversed cumulative sum of the log-gates).

Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set before
``triton`` is imported): slow, but it is how CI holds the kernel equal to the reference.
"""

from __future__ import annotations

import math
import os
from typing import Any, cast, overload

import torch
from torch import Tensor

from nestdsl.vocabulary import READ_MODES

from .mlp import MLPMemory, NormParams, renorm_rows
from .objectives import Objective, get_objective
from .state import MemoryState

try:  # an optional dependency: the registry refuses this kernel without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = None
    tl = None

__all__ = ["available", "interpreted", "objective_code", "supports", "triton_mlp_scan"]

#: Kernel launches in this process (benchmarks count them beside torch's dispatched ops).
LAUNCHES = 0

ACT_CODES = {"silu": 0, "gelu": 1, "relu": 2, "tanh": 3}
READ_CODES = {mode: code for code, mode in enumerate(READ_MODES)}   # the kernels' READ constexpr
ERASE_CODES = {"eta": 0, "normalized": 1, "retained": 2}
#: why the kernel refuses the per-layer normalised step (the torch chunk step computes it)
NO_NORMALIZED_LR = "normalized_lr: the kernel steps every weight with one η (no per-layer ‖a‖²)"


def available() -> bool:
    """Triton is importable."""
    return triton is not None


def interpreted() -> bool:
    """Kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def objective_code(obj: Objective) -> tuple[int, float] | None:
    """(code, clip) of an objective the kernel computes in closed form, else None.

    0: dot, ∂ℓ/∂p = −v; 1: l2, p − v; 2: huber, clip(p − v, ±1); 3: soft-clipped l2,
    r·c·tanh(‖r‖/c)/‖r‖ (``objectives.soft_clipped_l2``).
    """
    from .objectives import soft_clipped_l2

    fixed = {"dot": 0, "l2": 1, "huber": 2}
    if obj.name in fixed:
        return fixed[obj.name], 0.0
    if obj.name.startswith("l2(clip ") and obj.name.endswith(")"):
        try:
            c = float(obj.name[len("l2(clip "):-1])
        except ValueError:
            return None
        if soft_clipped_l2(c) is obj:   # the registry's own instance, not a look-alike
            return 3, c
    return None


def _pow2(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def supports(*, spec: MLPMemory, objective: Objective, d_key: int, d_value: int, T: int,
             chunk_size: int, dtype: torch.dtype, device: torch.device,
             one_chunk: bool = False) -> str | None:
    """None if the kernel computes this memory exactly, else why not (shown by ``--explain``).
    `one_chunk`: called one chunk at a time (``triton_chunk_step``), where the rows'
    renormalisation of ``spec.renorm`` is applied to the kernel's end state in torch."""
    if triton is None:
        return "triton is not installed (pip install triton)"
    if device.type != "cuda" and not interpreted():
        return f"needs a CUDA device (got {device.type}); TRITON_INTERPRET=1 runs it on CPU"
    if spec.depth != 2:
        return f"MLP depth {spec.depth}: the kernel holds exactly two weight matrices"
    if spec.renorm and not one_chunk:
        return "renorm: the kernel does not rescale the weights' rows between chunks"
    if objective_code(objective) is None:
        return f"objective {objective.name!r} has no closed form in the kernel"
    if dtype == torch.float64:
        return "float64: the kernel computes in float32"
    for what, n in (("d_key", d_key), ("d_value", d_value), ("hidden", spec.hidden),
                    ("chunk size", chunk_size)):
        if not _pow2(n):
            return f"{what} {n}: the kernel needs a power of two ≥ 16 (tl.dot tiles)"
    if T % chunk_size:
        return f"T = {T} is not a multiple of the chunk size {chunk_size} (no partial chunks)"
    return None


if triton is not None:

    @triton.jit
    def _act(z, ACT: tl.constexpr):
        if ACT == 0:
            out = z * tl.sigmoid(z)
        elif ACT == 1:
            out = 0.5 * z * (1 + tl.math.erf(z * 0.7071067811865476))
        elif ACT == 2:
            out = tl.maximum(z, 0.0)
        else:
            out = 2 * tl.sigmoid(2 * z) - 1
        return out

    @triton.jit
    def _act_grad(z, ACT: tl.constexpr):
        if ACT == 0:
            s = tl.sigmoid(z)
            out = s * (1 + z * (1 - s))
        elif ACT == 1:
            cdf = 0.5 * (1 + tl.math.erf(z * 0.7071067811865476))
            pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
            out = cdf + z * pdf
        elif ACT == 2:
            out = (z > 0).to(tl.float32)
        else:
            t = 2 * tl.sigmoid(2 * z) - 1
            out = 1 - t * t
        return out

    @triton.jit
    def _mm(a, b):
        return tl.dot(a, b, input_precision="ieee")

    @triton.jit
    def _finish(x, z, gain, bias, DV: tl.constexpr, NORM: tl.constexpr, RESIDUAL: tl.constexpr):
        """M = [x +] [LN(z)·γ + b] (mlp._finish)."""
        if NORM:
            mu = tl.sum(z, 1) / DV
            zc = z - mu[:, None]
            rstd = tl.math.rsqrt(tl.sum(zc * zc, 1) / DV + 1e-5)
            z = zc * rstd[:, None] * gain[None, :] + bias[None, :]
        if RESIDUAL:
            z = z + x
        return z

    @triton.jit
    def _read(X, Wt, St, A, Ed, Ef, g, Zv, Dw, Dwc,
              HAS_MOM: tl.constexpr, HAS_EF: tl.constexpr):
        """x_t ↦ W_t x_t without forming W_t (blockform.read_weights)."""
        out = g[:, None] * _mm(X, tl.trans(Wt))
        if HAS_MOM:
            out += Zv[:, None] * _mm(X, tl.trans(St))
        XA = _mm(X, tl.trans(A))
        out += _mm(XA * Dwc, Ed)
        if HAS_EF:
            out += _mm(XA * Dw, Ef)
        return out

    @triton.jit
    def _act_grad2(z, ACT: tl.constexpr):
        """σ''(z)."""
        if ACT == 0:
            s = tl.sigmoid(z)
            out = s * (1 - s) * (2 + z * (1 - 2 * s))
        elif ACT == 1:
            out = tl.exp(-0.5 * z * z) * 0.3989422804014327 * (2 - z * z)
        elif ACT == 2:
            out = z * 0.0
        else:
            t = 2 * tl.sigmoid(2 * z) - 1
            out = -2 * t * (1 - t * t)
        return out

    @triton.jit
    def _decays(log_a, log_b, lower, strict, HAS_MOM: tl.constexpr):
        """Step 2: the chunk's decay coefficients (blockform.decays), the products of
        docs/design.md §3.1's α (retention) and β (momentum) between tokens s ≤ t, from
        cumulative sums of the log-gates: D1[t, s] = Π_{s<i≤t} α_i (D1m: through t − 1),
        γ_t = Π_{i≤t} α_i from the chunk start, D2 and ζ likewise from β, the matrix product
        Wc = D1 D2 and Z = D1 ζ (momentum's writes decayed by both). Returns the bundle
        ``decays`` = (D1, D1m, γ, γ_m, D2, ζ, Wc, Wcm, Z, Z_m), with zero momentum parts
        (Wc = D1) without momentum."""
        la = tl.cumsum(log_a, 0)
        lam = la - log_a
        D1 = tl.where(lower, tl.exp(la[:, None] - la[None, :]), 0.0)
        D1m = tl.where(strict, tl.exp(lam[:, None] - la[None, :]), 0.0)
        gam = tl.exp(la)
        gam_m = tl.exp(lam)
        if HAS_MOM:
            lb = tl.cumsum(log_b, 0)
            D2 = tl.where(lower, tl.exp(lb[:, None] - lb[None, :]), 0.0)
            zeta = tl.exp(lb)
            Wc = _mm(D1, D2)
            Wcm = _mm(D1m, D2)
            Zv = tl.sum(D1 * zeta[None, :], 1)
            Zm = tl.sum(D1m * zeta[None, :], 1)
        else:
            D2 = D1 * 0.0
            zeta = gam * 0.0
            Wc = D1
            Wcm = D1m
            Zv = gam * 0.0
            Zm = gam * 0.0
        return D1, D1m, gam, gam_m, D2, zeta, Wc, Wcm, Zv, Zm

    @triton.jit
    def _last_row(M, last):
        return tl.sum(tl.where(last[:, None], M, 0.0), 0)

    @triton.jit
    def _last(x, last):
        return tl.sum(tl.where(last, x, 0.0), 0)

    @triton.jit
    def _ln(z, DV: tl.constexpr):
        """x̂ and 1/σ of the LayerNorm over the last dim."""
        mu = tl.sum(z, 1) / DV
        zc = z - mu[:, None]
        rstd = tl.math.rsqrt(tl.sum(zc * zc, 1) / DV + 1e-5)
        return zc * rstd[:, None], rstd

    @triton.jit
    def _ln_bwd(xhat, rstd, g, DV: tl.constexpr):
        """∂ℓ/∂z from g = ∂ℓ/∂x̂ (mlp.output_grad's LayerNorm backward)."""
        return rstd[:, None] * (g - (tl.sum(g, 1) / DV)[:, None]
                                - xhat * (tl.sum(g * xhat, 1) / DV)[:, None])

    @triton.jit
    def _objective_grad(p, v, CLIP, OBJ: tl.constexpr):
        """∂ℓ/∂p in closed form (docs/design.md §3.1, objectives; codes as ``objective_code``),
        with what its adjoint reuses: r = p − v and, for the soft-clipped l2, s = ‖r‖,
        th = tanh(s/c), f = c·th/s (zeros for the other objectives)."""
        r = p - v
        if OBJ == 3:
            s = tl.sqrt(tl.sum(r * r, 1) + 1e-12)
            th = 2 * tl.sigmoid(2 * s / CLIP) - 1
            f = CLIP * th / s
        else:
            s = tl.sum(r, 1) * 0.0
            th = s
            f = s
        if OBJ == 0:
            d = -v + p * 0.0
        elif OBJ == 1:
            d = r
        elif OBJ == 2:
            d = tl.minimum(tl.maximum(r, -1.0), 1.0)
        else:
            d = r * f[:, None]
        return d, r, s, th, f

    @triton.jit
    def _inner(k, v, W0, W1, eta, gain, bias, CLIP, DV: tl.constexpr, ACT: tl.constexpr,
               OBJ: tl.constexpr, RESIDUAL: tl.constexpr, NORM: tl.constexpr):
        """Step 1: the chunk-start forward p = f_{θ_{c(t)}}(k_t) and the inner gradients g_t
        at the chunk-start state (docs/design.md §3.1; closed form, §3.2): δ_1 = ∂ℓ/∂z through
        the inner norm, δ_0 = (δ_1 W_1) ⊙ σ'(z_0), and the writes' factors Ed = −η δ.
        Returns the bundle ``inner`` = (z0, a1, x̂, 1/σ, ∂ℓ/∂p, r, s, th, f, δ_1, δ_1 W_1, δ_0,
        Ed0, Ed1); the backward's adjoint reads all of it."""
        z0 = _mm(k, tl.trans(W0))
        a1 = _act(z0, ACT)
        z = _mm(a1, tl.trans(W1))
        if NORM:
            xhat, rstd = _ln(z, DV)
            p = xhat * gain[None, :] + bias[None, :]
        else:
            xhat = z
            rstd = tl.sum(z, 1) * 0.0
            p = z
        if RESIDUAL:
            p = p + k
        err, r, s, th, f = _objective_grad(p, v, CLIP, OBJ)
        d1 = err
        if NORM:
            d1 = _ln_bwd(xhat, rstd, err * gain[None, :], DV)
        u = _mm(d1, W1)
        d0 = u * _act_grad(z0, ACT)
        Ed1 = -eta[:, None] * d1
        Ed0 = -eta[:, None] * d0
        return z0, a1, xhat, rstd, err, r, s, th, f, d1, u, d0, Ed0, Ed1

    @triton.jit
    def _erase_rate(eta, k, log_a, ERASE: tl.constexpr):
        """DGD's erase rate ε_t (docs/design.md §3.1, erase rate): η (`eta`), η/(1 + η‖k_t‖²)
        (`normalized`, Eq. 57) or α_t η_t (`retained`)."""
        if ERASE == 0:
            eps = eta
        elif ERASE == 1:
            eps = eta / (1 + eta * tl.sum(k * k, 1))
        else:
            eps = eta * tl.exp(log_a)
        return eps

    @triton.jit
    def _solve_nilpotent(A, h, LOG2C: tl.constexpr):
        """(I − A)⁻¹ h for a strictly triangular C × C matrix A: A^C = 0, so the product
        (I + A)(I + A²)(I + A⁴)… of log₂ C factors is exact (module docstring, step 3)."""
        Y = h
        P = A
        for _ in tl.static_range(LOG2C):
            Y = Y + _mm(P, Y)
            P = _mm(P, P)
        return Y

    @triton.jit
    def _dgd(k, W0, S0, Ed0, eta, log_a, gam_m, Zm, Wcm, D1m,
             LOG2C: tl.constexpr, ERASE: tl.constexpr, HAS_MOM: tl.constexpr):
        """Step 3, DGD's erase on W_0 (docs/design.md §3.1: θ_t = θ_{t−1}(α_t I − ε_t k_t k_tᵀ)
        + S_t, the Eq. 88 form; blockform.solve_prefix). Y_t = W_{0,t−1} k_t depends on the
        chunk's earlier erases, so the chunk solves (I − A) Y = h with h the part known at the
        chunk start; f = −ε Y is the erase's write factor Ef0. Returns the bundle
        ``erase`` = (Y, Ef0, ε, A, k kᵀ)."""
        eps = _erase_rate(eta, k, log_a, ERASE)
        KK = _mm(k, tl.trans(k))
        h = gam_m[:, None] * _mm(k, tl.trans(W0)) + _mm(KK * Wcm, Ed0)
        if HAS_MOM:
            h += Zm[:, None] * _mm(k, tl.trans(S0))
        A = KK * D1m * (-eps)[None, :]
        Y = _solve_nilpotent(A, h, LOG2C)
        return Y, -eps[:, None] * Y, eps, A, KK

    @triton.jit
    def _gates(ETA, ALPHA, BETA, off, HAS_RET: tl.constexpr, HAS_MOM: tl.constexpr):
        """The gates of one chunk: η, α, β (α, β = 1 when absent) and log α, log β, the
        ``gates`` bundle (docs/design.md §3.1's η_t, α_t, β_t)."""
        eta = tl.load(ETA + off)
        alpha = eta * 0.0 + 1.0
        beta = eta * 0.0 + 1.0
        if HAS_RET:
            alpha = tl.load(ALPHA + off)
        if HAS_MOM:
            beta = tl.load(BETA + off)
        return eta, alpha, beta, tl.log(tl.maximum(alpha, 1e-30)), tl.log(tl.maximum(beta, 1e-30))

    @triton.jit
    def _end_state(W0, W1, S0, S1, write, decays, last,
                   HAS_MOM: tl.constexpr, DGD: tl.constexpr):
        """Step 5: (W0, W1, S0, S1) at the chunk end, docs/design.md §3.1's S_t and θ_t at the
        chunk's last token (blockform.end_state): W' = γ_L W + Z_L S + (Ed ⊙ Wc_L)ᵀ x
        [+ (Ef0 ⊙ D1_L)ᵀ k on W_0], S' = ζ_L S + (Ed ⊙ D2_L)ᵀ x, x = k for W_0, a1 for W_1."""
        k, a1, Ed0, Ed1, Ef0 = write
        D1, D1m, gam, gam_m, D2, zeta, Wc, Wcm, Zv, Zm = decays
        WcL = _last_row(Wc, last)
        gL = _last(gam, last)
        coef0 = Ed0 * WcL[:, None]
        if DGD:
            coef0 += Ef0 * _last_row(D1, last)[:, None]
        W0n = gL * W0 + _mm(tl.trans(coef0), k)
        W1n = gL * W1 + _mm(tl.trans(Ed1 * WcL[:, None]), a1)
        if HAS_MOM:
            ZL = _last(Zv, last)
            D2L = _last_row(D2, last)
            zL = _last(zeta, last)
            W0n += ZL * S0
            W1n += ZL * S1
            S0 = zL * S0 + _mm(tl.trans(Ed0 * D2L[:, None]), k)
            S1 = zL * S1 + _mm(tl.trans(Ed1 * D2L[:, None]), a1)
        return W0n, W1n, S0, S1

    @triton.jit
    def _load_state(ptrs, i, w0_off, w1_off, HID: tl.constexpr, DK: tl.constexpr,
                    DV: tl.constexpr, HAS_MOM: tl.constexpr):
        """Entry i of the state arrays `ptrs` = (W0, W1, S0, S1): (…, HID, DK), (…, DV, HID)
        matrices; the momenta are zeros without momentum (their pointers are then dummies)."""
        W0 = tl.load(ptrs[0] + i * HID * DK + w0_off)
        W1 = tl.load(ptrs[1] + i * DV * HID + w1_off)
        S0 = tl.zeros((HID, DK), dtype=tl.float32)
        S1 = tl.zeros((DV, HID), dtype=tl.float32)
        if HAS_MOM:
            S0 = tl.load(ptrs[2] + i * HID * DK + w0_off)
            S1 = tl.load(ptrs[3] + i * DV * HID + w1_off)
        return W0, W1, S0, S1

    @triton.jit
    def _store_state(ptrs, i, W0, W1, S0, S1, w0_off, w1_off, HID: tl.constexpr,
                     DK: tl.constexpr, DV: tl.constexpr, HAS_MOM: tl.constexpr):
        """``_load_state`` reversed."""
        tl.store(ptrs[0] + i * HID * DK + w0_off, W0)
        tl.store(ptrs[1] + i * DV * HID + w1_off, W1)
        if HAS_MOM:
            tl.store(ptrs[2] + i * HID * DK + w0_off, S0)
            tl.store(ptrs[3] + i * DV * HID + w1_off, S1)

    @triton.jit
    def _scratch_slot(SCR, slot, HID: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr):
        """The state pointers (W0, W1, S0, S1) of one slot of the backward's scratch buffer,
        the four matrices back to back (``_load_state`` / ``_store_state`` with i = 0)."""
        base = SCR + slot * (2 * HID * DK + 2 * DV * HID)
        return base, base + HID * DK, base + HID * DK + DV * HID, base + 2 * HID * DK + DV * HID

    @triton.jit
    def _chunk_write(K, V, ETA, ALPHA, BETA, pid, T, rows, W0, W1, S0, gain, bias, CLIP,
                     lower, strict, DK: tl.constexpr, DV: tl.constexpr, LOG2C: tl.constexpr,
                     ACT: tl.constexpr, OBJ: tl.constexpr, DGD: tl.constexpr,
                     ERASE: tl.constexpr, HAS_RET: tl.constexpr, HAS_MOM: tl.constexpr,
                     NORM: tl.constexpr, RESIDUAL: tl.constexpr):
        """Steps 1–3 of one chunk from its start state: what the chunk writes (docs/design.md
        §3.1: g_t at θ_{c(t)}, S_t with momentum and retention, DGD's erase on W_0). The one
        sequence gates → decays → inner gradients → erase that the forward kernel, the
        backward's recompute and its adjoint all run. Returns five bundles:
        write = (k, a1, Ed0, Ed1, Ef0), the writes' factors (W_0's rows against k, W_1's
        against a1: Ed = −η δ from ``_inner``, Ef0 = −ε Y from ``_dgd``, zeros without DGD);
        gates = ``_gates``'s (η, α, β, log α, log β); decays = ``_decays``'s; inner = ``_inner``'s;
        erase = ``_dgd``'s (Y, Ef0, ε, A, k kᵀ), zeros without DGD (nothing reads it then)."""
        dk = tl.arange(0, DK)
        dv = tl.arange(0, DV)
        k = tl.load(K + pid * T * DK + rows[:, None] * DK + dk[None, :])
        v = tl.load(V + pid * T * DV + rows[:, None] * DV + dv[None, :])
        gates = _gates(ETA, ALPHA, BETA, pid * T + rows, HAS_RET, HAS_MOM)
        eta, alpha, beta, log_a, log_b = gates
        decays = _decays(log_a, log_b, lower, strict, HAS_MOM)
        D1, D1m, gam, gam_m, D2, zeta, Wc, Wcm, Zv, Zm = decays
        inner = _inner(k, v, W0, W1, eta, gain, bias, CLIP, DV, ACT, OBJ, RESIDUAL, NORM)
        z0, a1, xhat, rstd, err, r, s, th, f, d1, u, d0, Ed0, Ed1 = inner
        Ef0 = Ed0 * 0.0
        Y = Ef0
        eps = tl.zeros(eta.shape, dtype=tl.float32)
        A = tl.zeros(D1m.shape, dtype=tl.float32)
        KK = A
        if DGD:
            Y, Ef0, eps, A, KK = _dgd(k, W0, S0, Ed0, eta, log_a, gam_m, Zm, Wcm, D1m,
                                      LOG2C, ERASE, HAS_MOM)
        return (k, a1, Ed0, Ed1, Ef0), gates, decays, inner, (Y, Ef0, eps, A, KK)

    @triton.jit
    def _read_decays(decays, READ: tl.constexpr):
        """The decays (γ, Z, D1, Wc) of a dual-form read: through token t for a read after the
        write (READ 0), through t − 1 before it (READ 1) (docs/design.md §3.1, read modes)."""
        D1, D1m, gam, gam_m, D2, zeta, Wc, Wcm, Zv, Zm = decays
        if READ == 0:
            g = gam
            Z = Zv
            Dw = D1
            Dwc = Wc
        else:
            g = gam_m
            Z = Zm
            Dw = D1m
            Dwc = Wcm
        return g, Z, Dw, Dwc

    @triton.jit
    def _read_out(q, W0, W1, S0, S1, write, decays, gain, bias, DV: tl.constexpr,
                  ACT: tl.constexpr, READ: tl.constexpr, HAS_MOM: tl.constexpr,
                  DGD: tl.constexpr, NORM: tl.constexpr, RESIDUAL: tl.constexpr):
        """Step 4: o_t = f_θ(q_t) at θ_t, θ_{t−1} or θ_{c(t)} (docs/design.md §3.1, read modes
        after | before | chunk); the first two in the dual form, layer by layer, from the
        chunk-start state and the chunk's writes (``_read``) without forming θ_t."""
        k, a1, Ed0, Ed1, Ef0 = write
        if READ == 2:
            hq = _act(_mm(q, tl.trans(W0)), ACT)
            zq = _mm(hq, tl.trans(W1))
        else:
            g, Z, Dw, Dwc = _read_decays(decays, READ)
            hq = _act(_read(q, W0, S0, k, Ed0, Ef0, g, Z, Dw, Dwc, HAS_MOM, DGD), ACT)
            zq = _read(hq, W1, S1, a1, Ed1, Ed1, g, Z, Dw, Dwc, HAS_MOM, False)
        return _finish(q, zq, gain, bias, DV, NORM, RESIDUAL)

    @triton.jit
    def _mlp_scan_fwd(
        Q, K, V, ETA, ALPHA, BETA, GAIN, BIAS,
        W0_in, W1_in, S0_in, S1_in,
        OUT, W0_out, W1_out, S0_out, S1_out,
        CK_W0, CK_W1, CK_S0, CK_S1,
        n_chunks, n_groups, CLIP,
        DK: tl.constexpr, HID: tl.constexpr, DV: tl.constexpr, C: tl.constexpr,
        LOG2C: tl.constexpr, G: tl.constexpr,
        ACT: tl.constexpr, OBJ: tl.constexpr, DGD: tl.constexpr, ERASE: tl.constexpr,
        READ: tl.constexpr, HAS_RET: tl.constexpr, HAS_MOM: tl.constexpr,
        NORM: tl.constexpr, RESIDUAL: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        T = n_chunks * C
        t = tl.arange(0, C)
        dk = tl.arange(0, DK)
        hd = tl.arange(0, HID)
        dv = tl.arange(0, DV)
        lower = t[:, None] >= t[None, :]          # s ≤ t
        strict = t[:, None] > t[None, :]          # s < t
        last = t == C - 1

        w0_off = hd[:, None] * DK + dk[None, :]   # (HID, DK)
        w1_off = dv[:, None] * HID + hd[None, :]  # (DV, HID)
        W0, W1, S0, S1 = _load_state((W0_in, W1_in, S0_in, S1_in), pid, w0_off, w1_off,
                                     HID, DK, DV, HAS_MOM)
        gain = tl.zeros((DV,), dtype=tl.float32) + 1.0
        bias = tl.zeros((DV,), dtype=tl.float32)
        if NORM:
            gain = tl.load(GAIN + pid * DV + dv)
            bias = tl.load(BIAS + pid * DV + dv)

        for c in range(0, n_chunks):
            if c % G == 0:   # the group's start state, where the backward recomputes from
                _store_state((CK_W0, CK_W1, CK_S0, CK_S1), pid * n_groups + c // G,
                             W0, W1, S0, S1, w0_off, w1_off, HID, DK, DV, HAS_MOM)
            rows = c * C + t
            # 1.–3. gates, decays, inner gradients and DGD's erase: the chunk's writes
            write, gates, decays, inner, erase = _chunk_write(
                K, V, ETA, ALPHA, BETA, pid, T, rows, W0, W1, S0, gain, bias, CLIP, lower,
                strict, DK, DV, LOG2C, ACT, OBJ, DGD, ERASE, HAS_RET, HAS_MOM, NORM, RESIDUAL)
            # 4. reads
            q = tl.load(Q + pid * T * DK + rows[:, None] * DK + dk[None, :])
            o = _read_out(q, W0, W1, S0, S1, write, decays, gain, bias, DV, ACT, READ, HAS_MOM,
                          DGD, NORM, RESIDUAL)
            tl.store(OUT + pid * T * DV + rows[:, None] * DV + dv[None, :], o)
            # 5. state at the chunk end
            W0, W1, S0, S1 = _end_state(W0, W1, S0, S1, write, decays, last, HAS_MOM, DGD)

        _store_state((W0_out, W1_out, S0_out, S1_out), pid, W0, W1, S0, S1, w0_off, w1_off,
                     HID, DK, DV, HAS_MOM)

    # The backward's helpers: each is the adjoint of the forward helper it names. The
    # gradients they accumulate are passed in and handed back (not summed by the caller),
    # which keeps every sum in the order of the kernel's first, single-body version.

    @triton.jit
    def _decays_zeros(C: tl.constexpr):
        """A zero ``ddecays``: the decays' adjoint, one entry per entry of ``_decays``'s
        bundle (C × C matrices, C vectors), accumulated by the adjoints below."""
        m = tl.zeros((C, C), dtype=tl.float32)
        v = tl.zeros((C,), dtype=tl.float32)
        return m, m, v, v, m, v, m, m, v, v

    @triton.jit
    def _end_state_bwd(gW0, gW1, gS0, gS1, W0, W1, S0, S1, write, decays, ddecays, last,
                       HAS_MOM: tl.constexpr, DGD: tl.constexpr):
        """Adjoint of ``_end_state`` (docs/design.md §3.1's θ_t, S_t at the chunk end). From
        the end state's gradients: the start state's through γ_L W, Z_L S, ζ_L S (the reads and
        the inner gradients add the rest), ``dwrite`` (the gradients of ``write``, the first
        contributions to each) and ``ddecays`` updated."""
        k, a1, Ed0, Ed1, Ef0 = write
        D1, D1m, gam, gam_m, D2, zeta, Wc, Wcm, Zv, Zm = decays
        dD1, dD1m, dgam, dgam_m, dD2, dzeta, dWc, dWcm, dZv, dZm = ddecays
        WcL = _last_row(Wc, last)
        D2L = _last_row(D2, last)
        D1L = _last_row(D1, last)
        dgL = tl.sum(tl.sum(gW0 * W0, 1), 0) + tl.sum(tl.sum(gW1 * W1, 1), 0)
        dgam += tl.where(last, dgL, 0.0)
        dc0 = _mm(k, tl.trans(gW0))                       # (C, HID)
        dc1 = _mm(a1, tl.trans(gW1))                      # (C, DV)
        dk_ = _mm(Ed0 * WcL[:, None], gW0)
        da1 = _mm(Ed1 * WcL[:, None], gW1)
        dEd0 = dc0 * WcL[:, None]
        dEd1 = dc1 * WcL[:, None]
        dEf0 = Ed0 * 0.0
        dWcL = tl.sum(dc0 * Ed0, 1) + tl.sum(dc1 * Ed1, 1)
        if DGD:   # W0' += (Ef0 ⊙ D1_L)ᵀ k
            dk_ += _mm(Ef0 * D1L[:, None], gW0)
            dEf0 += dc0 * D1L[:, None]
            dD1 += tl.where(last[:, None], tl.sum(dc0 * Ef0, 1)[None, :], 0.0)
        gL = _last(gam, last)
        nW0 = gL * gW0
        nW1 = gL * gW1
        nS0 = gS0 * 0.0
        nS1 = gS1 * 0.0
        if HAS_MOM:
            ZL = _last(Zv, last)
            zL = _last(zeta, last)
            dZL = tl.sum(tl.sum(gW0 * S0, 1), 0) + tl.sum(tl.sum(gW1 * S1, 1), 0)
            dzL = tl.sum(tl.sum(gS0 * S0, 1), 0) + tl.sum(tl.sum(gS1 * S1, 1), 0)
            dZv += tl.where(last, dZL, 0.0)
            dzeta += tl.where(last, dzL, 0.0)
            ds0 = _mm(k, tl.trans(gS0))
            ds1 = _mm(a1, tl.trans(gS1))
            dk_ += _mm(Ed0 * D2L[:, None], gS0)
            da1 += _mm(Ed1 * D2L[:, None], gS1)
            dEd0 += ds0 * D2L[:, None]
            dEd1 += ds1 * D2L[:, None]
            dD2L = tl.sum(ds0 * Ed0, 1) + tl.sum(ds1 * Ed1, 1)
            dD2 += tl.where(last[:, None], dD2L[None, :], 0.0)
            nS0 = ZL * gW0 + zL * gS0
            nS1 = ZL * gW1 + zL * gS1
        dWc += tl.where(last[:, None], dWcL[None, :], 0.0)
        return (nW0, nW1, nS0, nS1, (dk_, da1, dEd0, dEd1, dEf0),
                (dD1, dD1m, dgam, dgam_m, dD2, dzeta, dWc, dWcm, dZv, dZm))

    @triton.jit
    def _finish_bwd(go, z, gain, dgain, dbias, DV: tl.constexpr):
        """Adjoint of ``_finish``'s output LayerNorm LN(z)·γ + b: ∂/∂z from ∂/∂o, and γ's and
        b's gradients accumulated (the residual's ∂q = ∂o is the caller's)."""
        xhat, rstd = _ln(z, DV)
        dgain += tl.sum(go * xhat, 0)
        dbias += tl.sum(go, 0)
        return _ln_bwd(xhat, rstd, go * gain[None, :], DV), dgain, dbias

    @triton.jit
    def _read_bwd(dout, X, Wt, St, XA, A, Ed, Ef, g, Zv, Dw, Dwc,
                  dX, gWt, gSt, dA, dEd, dEf, dg, dZv, dDw, dDwc,
                  HAS_MOM: tl.constexpr, HAS_EF: tl.constexpr):
        """Adjoint of one layer of ``_read``, out = g ⊙ (X Wtᵀ) + Z ⊙ (X Stᵀ) + (XA ∘ Dwc) Ed
        [+ (XA ∘ Dw) Ef] with XA = X Aᵀ: ∂out → the gradients of each input, accumulated
        into the d*/g* given (the same names, ∂ of X, Wt, St, A, Ed, Ef, g, Z, Dw, Dwc)."""
        dg += tl.sum(dout * _mm(X, tl.trans(Wt)), 1)
        dX += _mm(g[:, None] * dout, Wt)
        gWt += _mm(tl.trans(g[:, None] * dout), X)
        if HAS_MOM:
            dZv += tl.sum(dout * _mm(X, tl.trans(St)), 1)
            dX += _mm(Zv[:, None] * dout, St)
            gSt += _mm(tl.trans(Zv[:, None] * dout), X)
        dM = _mm(dout, tl.trans(Ed))
        dEd += _mm(tl.trans(XA * Dwc), dout)
        dXA = dM * Dwc
        dDwc += dM * XA
        if HAS_EF:
            dMf = _mm(dout, tl.trans(Ef))
            dEf += _mm(tl.trans(XA * Dw), dout)
            dXA += dMf * Dw
            dDw += dMf * XA
        dX += _mm(dXA, A)
        dA += _mm(tl.trans(dXA), X)
        return dX, gWt, gSt, dA, dEd, dEf, dg, dZv, dDw, dDwc

    @triton.jit
    def _read_chunk_start_bwd(go, q, W0, W1, gain, dq, gW0, gW1, dgain, dbias,
                              DV: tl.constexpr, ACT: tl.constexpr, NORM: tl.constexpr):
        """Adjoint of ``_read_out`` at θ_{c(t)} (READ 2): o = [q +] [LN](W1 σ(W0 q))."""
        hq = _mm(q, tl.trans(W0))
        aq = _act(hq, ACT)
        if NORM:
            go, dgain, dbias = _finish_bwd(go, _mm(aq, tl.trans(W1)), gain, dgain, dbias, DV)
        gW1 += _mm(tl.trans(go), aq)
        dh = _mm(go, W1) * _act_grad(hq, ACT)
        gW0 += _mm(tl.trans(dh), q)
        dq += _mm(dh, W0)
        return dq, gW0, gW1, dgain, dbias

    @triton.jit
    def _read_dual_bwd(go, q, W0, W1, S0, S1, write, decays, gain,
                       dq, gW0, gW1, gS0, gS1, dwrite, ddecays, dgain, dbias,
                       DV: tl.constexpr, ACT: tl.constexpr, READ: tl.constexpr,
                       HAS_MOM: tl.constexpr, DGD: tl.constexpr, NORM: tl.constexpr):
        """Adjoint of ``_read_out``'s dual form (READ 0, 1): layer 1, then layer 0, each by
        ``_read_bwd``; the read's decays' gradients go back to ``ddecays`` by READ."""
        k, a1, Ed0, Ed1, Ef0 = write
        dk_, da1, dEd0, dEd1, dEf0 = dwrite
        gR, ZR, D1R, WcR = _read_decays(decays, READ)
        # the forward's pre-activations again; the terms are summed in another order than
        # ``_read``'s (the last bits can differ from the forward's), left as they were so the
        # gradients round as before
        QK = _mm(q, tl.trans(k))
        hq = (gR[:, None] * _mm(q, tl.trans(W0)) + _mm(QK * WcR, Ed0))
        if DGD:
            hq += _mm(QK * D1R, Ef0)
        if HAS_MOM:
            hq += ZR[:, None] * _mm(q, tl.trans(S0))
        aq = _act(hq, ACT)
        AA = _mm(aq, tl.trans(a1))
        if NORM:   # o = [q +] LN(zq)·γ + b
            zq = gR[:, None] * _mm(aq, tl.trans(W1)) + _mm(AA * WcR, Ed1)
            if HAS_MOM:
                zq += ZR[:, None] * _mm(aq, tl.trans(S1))
            go, dgain, dbias = _finish_bwd(go, zq, gain, dgain, dbias, DV)
        # the read's own gradients of its decays, summed over both layers
        dgR = tl.zeros(gR.shape, dtype=tl.float32)
        dZR = tl.zeros(ZR.shape, dtype=tl.float32)
        dD1R = tl.zeros(D1R.shape, dtype=tl.float32)
        dWcR = tl.zeros(WcR.shape, dtype=tl.float32)
        daq = tl.zeros(aq.shape, dtype=tl.float32)
        # layer 1: zq = gR ⊙ (aq W1ᵀ) + ZR ⊙ (aq S1ᵀ) + (AA ∘ WcR) Ed1 (no erase term on W_1:
        # the Ef / Dw slots get Ed1 / dWcR, unread, and their returns are dropped)
        daq, gW1, gS1, da1, dEd1, _, dgR, dZR, _, dWcR = _read_bwd(
            go, aq, W1, S1, AA, a1, Ed1, Ed1, gR, ZR, D1R, WcR,
            daq, gW1, gS1, da1, dEd1, dEd1, dgR, dZR, dWcR, dWcR, HAS_MOM, False)
        dh = daq * _act_grad(hq, ACT)
        # layer 0: hq = gR ⊙ (q W0ᵀ) + ZR ⊙ (q S0ᵀ) + (QK ∘ WcR) Ed0 [+ (QK ∘ D1R) Ef0]
        dq, gW0, gS0, dk_, dEd0, dEf0, dgR, dZR, dD1R, dWcR = _read_bwd(
            dh, q, W0, S0, QK, k, Ed0, Ef0, gR, ZR, D1R, WcR,
            dq, gW0, gS0, dk_, dEd0, dEf0, dgR, dZR, dD1R, dWcR, HAS_MOM, DGD)
        dD1, dD1m, dgam, dgam_m, dD2, dzeta, dWc, dWcm, dZv, dZm = ddecays
        if READ == 0:
            if DGD:
                dD1 += dD1R
            dgam += dgR
            dZv += dZR
            dWc += dWcR
        else:
            if DGD:
                dD1m += dD1R
            dgam_m += dgR
            dZm += dZR
            dWcm += dWcR
        return (dq, gW0, gW1, gS0, gS1, (dk_, da1, dEd0, dEd1, dEf0),
                (dD1, dD1m, dgam, dgam_m, dD2, dzeta, dWc, dWcm, dZv, dZm), dgain, dbias)

    @triton.jit
    def _erase_rate_bwd(deps, eta, k, log_a, deta, dk_, dalpha_e, ERASE: tl.constexpr):
        """Adjoint of ``_erase_rate``: ∂ε into ∂η, ∂k (`normalized`) and ∂α (`retained`;
        `dalpha_e`, the part of ∂α apart from the decays')."""
        if ERASE == 0:
            deta += deps
        elif ERASE == 1:
            den = 1 + eta * tl.sum(k * k, 1)
            deta += deps / (den * den)
            dk_ += (deps * (-eta * eta) / (den * den) * 2)[:, None] * k
        else:
            a_t = tl.exp(log_a)
            deta += deps * a_t
            dalpha_e += deps * eta
        return deta, dk_, dalpha_e

    @triton.jit
    def _dgd_bwd(erase, write, decays, gates, W0, S0, gW0, gS0, deta, dalpha_e, dwrite,
                 ddecays, LOG2C: tl.constexpr, ERASE: tl.constexpr, HAS_MOM: tl.constexpr):
        """Adjoint of ``_dgd`` (DGD's erase, docs/design.md §3.1, Eq. 88 form): f = −ε Y,
        Y = (I − A)⁻¹ h, A = (k kᵀ ∘ D1m) diag(−ε), h = γ_m ⊙ (k W0ᵀ) + (k kᵀ ∘ Wcm) Ed0
        [+ Z_m ⊙ (k S0ᵀ)]; (I − A)⁻ᵀ by the same product of powers (``_solve_nilpotent``)."""
        Y, Ef0, eps, A, KK = erase
        k, a1, Ed0, Ed1, Ef0 = write
        eta, alpha, beta, log_a, log_b = gates
        D1, D1m, gam, gam_m, D2, zeta, Wc, Wcm, Zv, Zm = decays
        dk_, da1, dEd0, dEd1, dEf0 = dwrite
        dD1, dD1m, dgam, dgam_m, dD2, dzeta, dWc, dWcm, dZv, dZm = ddecays
        dY = -eps[:, None] * dEf0
        deps = -tl.sum(dEf0 * Y, 1)
        dhh = _solve_nilpotent(tl.trans(A), dY, LOG2C)
        dA = _mm(dhh, tl.trans(Y))
        dKK = dA * D1m * (-eps)[None, :]
        dD1m += dA * KK * (-eps)[None, :]
        deps -= tl.sum(dA * KK * D1m, 0)
        dgam_m += tl.sum(dhh * _mm(k, tl.trans(W0)), 1)
        dk_ += _mm(gam_m[:, None] * dhh, W0)
        gW0 += _mm(tl.trans(gam_m[:, None] * dhh), k)
        if HAS_MOM:
            dZm += tl.sum(dhh * _mm(k, tl.trans(S0)), 1)
            dk_ += _mm(Zm[:, None] * dhh, S0)
            gS0 += _mm(tl.trans(Zm[:, None] * dhh), k)
        dMh = _mm(dhh, tl.trans(Ed0))
        dKK += dMh * Wcm
        dWcm += dMh * KK
        dEd0 += _mm(tl.trans(KK * Wcm), dhh)
        dk_ += _mm(dKK + tl.trans(dKK), k)
        deta, dk_, dalpha_e = _erase_rate_bwd(deps, eta, k, log_a, deta, dk_, dalpha_e, ERASE)
        return (gW0, gS0, deta, dalpha_e, (dk_, da1, dEd0, dEd1, dEf0),
                (dD1, dD1m, dgam, dgam_m, dD2, dzeta, dWc, dWcm, dZv, dZm))

    @triton.jit
    def _objective_grad_bwd(dd, r, s, th, f, OBJ: tl.constexpr):
        """Adjoint of ``_objective_grad``: (∂p, ∂v) from the gradient of ∂ℓ/∂p (the
        objective's Jacobian; the soft-clipped l2's from f(s) = c·tanh(s/c)/s)."""
        if OBJ == 0:
            dp = dd * 0.0
            dvv = -dd
        elif OBJ == 1:
            dp = dd
            dvv = -dd
        elif OBJ == 2:
            m = ((r > -1.0) & (r < 1.0)).to(tl.float32)
            dp = dd * m
            dvv = -dp
        else:
            fp = ((1 - th * th) - f) / (s * s)        # f'(s)/s
            dp = f[:, None] * dd + (fp * tl.sum(r * dd, 1))[:, None] * r
            dvv = -dp
        return dp, dvv

    @triton.jit
    def _ln_bwd_bwd(dd1, err, xhat, rstd, d1, gain, dgain, DV: tl.constexpr):
        """Adjoint of ``_inner``'s δ_1 = ``_ln_bwd``(x̂, 1/σ, ∂ℓ/∂p · γ): from ∂δ_1, the
        gradients of ∂ℓ/∂p, x̂ and 1/σ, and γ's accumulated."""
        # d1 = (1/σ) Π(g), g = err·γ, Π(g) = g − mean g − x̂ mean(g x̂) (symmetric)
        gv = err * gain[None, :]
        m2 = tl.sum(gv * xhat, 1) / DV
        dgv = _ln_bwd(xhat, rstd, dd1, DV)
        dxhat = -rstd[:, None] * (dd1 * m2[:, None]
                                  + gv * (tl.sum(dd1 * xhat, 1) / DV)[:, None])
        drstd = tl.sum(dd1 * d1, 1) / rstd
        dgain += tl.sum(dgv * err, 0)
        return dgv * gain[None, :], dxhat, drstd, dgain

    @triton.jit
    def _inner_norm_bwd(dp, xhat, rstd, dxhat, drstd, gain, dgain, dbias, DV: tl.constexpr):
        """Adjoint of ``_inner``'s p = LN(z)·γ + b (x̂ = (z − μ)/σ): ∂z from ∂p and the x̂, 1/σ
        gradients that δ_1's adjoint already sent (``_ln_bwd_bwd``); γ's, b's accumulated."""
        dgain += tl.sum(dp * xhat, 0)
        dbias += tl.sum(dp, 0)
        dxhat += dp * gain[None, :]
        # x̂ = zc·r, r = (mean zc² + ε)^(−½): ∂zc = ∂x̂·r + zc·(−r³/D)·(∂r + Σ ∂x̂·zc)
        zc = xhat / rstd[:, None]
        drt = drstd + tl.sum(dxhat * zc, 1)
        dzc = dxhat * rstd[:, None] - zc * (rstd * rstd * rstd * drt / DV)[:, None]
        return dzc - (tl.sum(dzc, 1) / DV)[:, None], dgain, dbias

    @triton.jit
    def _inner_bwd(inner, write, dwrite, eta, W0, W1, gain, deta, gW0, gW1, dgain, dbias,
                   DV: tl.constexpr, ACT: tl.constexpr, OBJ: tl.constexpr,
                   NORM: tl.constexpr, RESIDUAL: tl.constexpr):
        """Adjoint of ``_inner`` (docs/design.md §3.2: the inner gradients are closed form, so
        this differentiates them once more: σ'', the objective's Jacobian, the inner
        LayerNorm's backward): from the writes' gradients ``dwrite``, ∂k and ∂v of the chunk,
        with ∂η, the start weights' and the norm's gradients accumulated."""
        z0, a1, xhat, rstd, err, r, s, th, f, d1, u, d0, Ed0, Ed1 = inner
        k, a1, Ed0, Ed1, Ef0 = write
        dk_, da1, dEd0, dEd1, dEf0 = dwrite
        # Ed = −η δ, δ_0 = (δ_1 W1) ⊙ σ'(z0), δ_1 = ∂ℓ/∂z
        deta += -tl.sum(dEd1 * d1, 1) - tl.sum(dEd0 * d0, 1)
        dd1 = -eta[:, None] * dEd1
        dd0 = -eta[:, None] * dEd0
        du = dd0 * _act_grad(z0, ACT)
        dz0 = dd0 * u * _act_grad2(z0, ACT)
        dd1 += _mm(du, tl.trans(W1))
        gW1 += _mm(tl.trans(d1), du)
        if NORM:
            dd1, dxhat, drstd, dgain = _ln_bwd_bwd(dd1, err, xhat, rstd, d1, gain, dgain, DV)
        dp, dvv = _objective_grad_bwd(dd1, r, s, th, f, OBJ)
        if RESIDUAL:
            dk_ += dp
        if NORM:
            dz, dgain, dbias = _inner_norm_bwd(dp, xhat, rstd, dxhat, drstd, gain, dgain,
                                               dbias, DV)
        else:
            dz = dp
        da1 += _mm(dz, W1)
        gW1 += _mm(tl.trans(dz), a1)
        dz0 += da1 * _act_grad(z0, ACT)
        dk_ += _mm(dz0, W0)
        gW0 += _mm(tl.trans(dz0), k)
        return deta, dk_, dvv, gW0, gW1, dgain, dbias

    @triton.jit
    def _decays_bwd(decays, ddecays, HAS_MOM: tl.constexpr):
        """Adjoint of ``_decays``: ∂ log α and ∂ log β from ``ddecays``. D[t, s] = exp(l_t − l_s)
        gives ∂l_t = Σ_s P[t, s] − Σ_s P[s, t] with P = ∂D ⊙ D, and l = cumsum(log α) turns
        that into a reversed cumulative sum (module docstring; blockform.decays)."""
        D1, D1m, gam, gam_m, D2, zeta, Wc, Wcm, Zv, Zm = decays
        dD1, dD1m, dgam, dgam_m, dD2, dzeta, dWc, dWcm, dZv, dZm = ddecays
        if HAS_MOM:
            dD1 += _mm(dWc, tl.trans(D2)) + dZv[:, None] * zeta[None, :]
            dD1m += _mm(dWcm, tl.trans(D2)) + dZm[:, None] * zeta[None, :]
            dD2 += _mm(tl.trans(D1), dWc) + _mm(tl.trans(D1m), dWcm)
            dzeta += tl.sum(D1 * dZv[:, None], 0) + tl.sum(D1m * dZm[:, None], 0)
        else:
            dD1 += dWc
            dD1m += dWcm
        P1 = dD1 * D1
        P1m = dD1m * D1m
        dla = tl.sum(P1, 1) - tl.sum(P1, 0) - tl.sum(P1m, 0) + dgam * gam
        dlam = tl.sum(P1m, 1) + dgam_m * gam_m
        dla += dlam
        dlog_a = tl.sum(dla, 0) - tl.cumsum(dla, 0) + dla - dlam
        dlog_b = tl.zeros(dlog_a.shape, dtype=tl.float32)
        if HAS_MOM:
            P2 = dD2 * D2
            dlb = tl.sum(P2, 1) - tl.sum(P2, 0) + dzeta * zeta
            dlog_b = tl.sum(dlb, 0) - tl.cumsum(dlb, 0) + dlb
        return dlog_a, dlog_b

    @triton.jit
    def _mlp_scan_bwd(
        Q, K, V, ETA, ALPHA, BETA,
        CK_W0, CK_W1, CK_S0, CK_S1, SCR,
        GO, GW0, GW1, GS0, GS1, GAIN, BIAS,
        DQ, DK_, DV_, DETA, DALPHA, DBETA, DGAIN, DBIAS,
        n_chunks, n_groups, CLIP,
        DK: tl.constexpr, HID: tl.constexpr, DV: tl.constexpr, C: tl.constexpr,
        G: tl.constexpr, ACT: tl.constexpr, OBJ: tl.constexpr, READ: tl.constexpr,
        HAS_RET: tl.constexpr, HAS_MOM: tl.constexpr, RESIDUAL: tl.constexpr,
        DGD: tl.constexpr, ERASE: tl.constexpr, LOG2C: tl.constexpr, NORM: tl.constexpr,
    ):
        """Backward of ``_mlp_scan_fwd``: groups in reverse; each group's
        chunk-start states are recomputed into SCR, then the chunks' closed-form adjoints run
        in reverse with the state gradients carried from chunk to chunk. GW*/GS* hold the
        final-state gradients on entry and the initial-state gradients on exit."""
        pid = tl.program_id(0).to(tl.int64)
        T = n_chunks * C
        t = tl.arange(0, C)
        dk = tl.arange(0, DK)
        hd = tl.arange(0, HID)
        dv = tl.arange(0, DV)
        lower = t[:, None] >= t[None, :]
        strict = t[:, None] > t[None, :]
        last = t == C - 1
        w0_off = hd[:, None] * DK + dk[None, :]
        w1_off = dv[:, None] * HID + hd[None, :]
        gW0, gW1, gS0, gS1 = _load_state((GW0, GW1, GS0, GS1), pid, w0_off, w1_off,
                                         HID, DK, DV, HAS_MOM)
        gain = tl.zeros((DV,), dtype=tl.float32) + 1.0
        bias = tl.zeros((DV,), dtype=tl.float32)
        if NORM:
            gain = tl.load(GAIN + pid * DV + dv)
            bias = tl.load(BIAS + pid * DV + dv)
        dgain = tl.zeros((DV,), dtype=tl.float32)
        dbias = tl.zeros((DV,), dtype=tl.float32)

        for gr in range(0, n_groups):
            gi = n_groups - 1 - gr
            c0 = gi * G
            c1 = tl.minimum(c0 + G, n_chunks)
            # 1. the group's chunk-start states, from its saved start, into the scratch slots
            W0, W1, S0, S1 = _load_state((CK_W0, CK_W1, CK_S0, CK_S1), pid * n_groups + gi,
                                         w0_off, w1_off, HID, DK, DV, HAS_MOM)
            for c in range(c0, c1):
                _store_state(_scratch_slot(SCR, pid * G + (c - c0), HID, DK, DV), 0,
                             W0, W1, S0, S1, w0_off, w1_off, HID, DK, DV, HAS_MOM)
                # the forward's chunk without its reads: only the end state is needed here
                rows = c * C + t
                write, gates, decays, inner, erase = _chunk_write(
                    K, V, ETA, ALPHA, BETA, pid, T, rows, W0, W1, S0, gain, bias, CLIP,
                    lower, strict, DK, DV, LOG2C, ACT, OBJ, DGD, ERASE, HAS_RET, HAS_MOM, NORM,
                    RESIDUAL)
                W0, W1, S0, S1 = _end_state(W0, W1, S0, S1, write, decays, last, HAS_MOM, DGD)

            # 2. the chunks' adjoints, last chunk first
            for cr in range(0, c1 - c0):
                c = c1 - 1 - cr
                W0, W1, S0, S1 = _load_state(_scratch_slot(SCR, pid * G + (c - c0), HID, DK, DV),
                                             0, w0_off, w1_off, HID, DK, DV, HAS_MOM)
                rows = c * C + t
                q = tl.load(Q + pid * T * DK + rows[:, None] * DK + dk[None, :])
                go = tl.load(GO + pid * T * DV + rows[:, None] * DV + dv[None, :])
                write, gates, decays, inner, erase = _chunk_write(
                    K, V, ETA, ALPHA, BETA, pid, T, rows, W0, W1, S0, gain, bias, CLIP,
                    lower, strict, DK, DV, LOG2C, ACT, OBJ, DGD, ERASE, HAS_RET, HAS_MOM, NORM,
                    RESIDUAL)
                eta, alpha, beta, log_a, log_b = gates
                # the forward's steps in reverse: end state, reads, DGD's erase, inner
                # gradients, decays. dwrite (∂ of write, from _end_state_bwd on) and ddecays
                # (∂ of decays) collect what each stage sends back to the chunk's shared terms.
                ddecays = _decays_zeros(C)
                gW0, gW1, gS0, gS1, dwrite, ddecays = _end_state_bwd(
                    gW0, gW1, gS0, gS1, W0, W1, S0, S1, write, decays, ddecays, last, HAS_MOM,
                    DGD)
                dq = tl.zeros((C, DK), dtype=tl.float32)
                if RESIDUAL:
                    dq += go
                if READ == 2:
                    dq, gW0, gW1, dgain, dbias = _read_chunk_start_bwd(
                        go, q, W0, W1, gain, dq, gW0, gW1, dgain, dbias, DV, ACT, NORM)
                else:
                    dq, gW0, gW1, gS0, gS1, dwrite, ddecays, dgain, dbias = _read_dual_bwd(
                        go, q, W0, W1, S0, S1, write, decays, gain, dq, gW0, gW1, gS0, gS1,
                        dwrite, ddecays, dgain, dbias, DV, ACT, READ, HAS_MOM, DGD, NORM)
                deta = eta * 0.0
                dalpha_e = eta * 0.0          # ∂ε/∂α of erase "retained", apart from the decays
                if DGD:
                    gW0, gS0, deta, dalpha_e, dwrite, ddecays = _dgd_bwd(
                        erase, write, decays, gates, W0, S0, gW0, gS0, deta, dalpha_e, dwrite,
                        ddecays, LOG2C, ERASE, HAS_MOM)
                deta, dk_, dvv, gW0, gW1, dgain, dbias = _inner_bwd(
                    inner, write, dwrite, eta, W0, W1, gain, deta, gW0, gW1, dgain, dbias,
                    DV, ACT, OBJ, NORM, RESIDUAL)
                dlog_a, dlog_b = _decays_bwd(decays, ddecays, HAS_MOM)
                tl.store(DQ + pid * T * DK + rows[:, None] * DK + dk[None, :], dq)
                tl.store(DK_ + pid * T * DK + rows[:, None] * DK + dk[None, :], dk_)
                tl.store(DV_ + pid * T * DV + rows[:, None] * DV + dv[None, :], dvv)
                tl.store(DETA + pid * T + rows, deta)
                if HAS_RET:
                    tl.store(DALPHA + pid * T + rows, dlog_a / alpha + dalpha_e)
                if HAS_MOM:
                    tl.store(DBETA + pid * T + rows, dlog_b / beta)

        _store_state((GW0, GW1, GS0, GS1), pid, gW0, gW1, gS0, gS1, w0_off, w1_off,
                     HID, DK, DV, HAS_MOM)
        if NORM:
            tl.store(DGAIN + pid * DV + dv, dgain)
            tl.store(DBIAS + pid * DV + dv, dbias)


def _host_only() -> Any:
    """Under Triton's CPU interpreter, hide the interpreter's own tensor copies from torch
    dispatch modes (an op counter would charge them to the model; on a GPU they do not exist)."""
    from contextlib import nullcontext

    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes() if interpreted() else nullcontext()


def _warps(hidden: int, d: int) -> int:
    """Warps per program: the state (hidden × d matrices and their momenta) lives in registers,
    and more warps spread it thinner (d = 64, hidden 256: 16K floats per matrix)."""
    return 16 if hidden * d >= 16384 else 8 if hidden * d >= 4096 else 4


def _launch(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, alpha: Tensor | None,
            beta: Tensor | None, norm: NormParams, W: list[Tensor], S: list[Tensor] | None,
            cfg: dict[str, Any], G: int
            ) -> tuple[Tensor, list[Tensor], list[Tensor] | None, list[Tensor]]:
    """Run the forward kernel on flattened (N = B·H, …) tensors with groups of G chunks.
    Returns (o, final weights, final momenta, group-start states [W0, W1(, S0, S1)] each
    (N, n_groups, …)), all float32."""
    N, T, DK = k.shape
    DV = v.shape[-1]
    HID = W[0].shape[-2]
    C = cfg["chunk_size"]
    n_chunks = T // C
    n_groups = -(-n_chunks // G)

    @overload
    def c32(x: Tensor) -> Tensor: ...
    @overload
    def c32(x: Tensor | None) -> Tensor | None: ...
    def c32(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.to(torch.float32).contiguous()

    q, k, v, eta = map(c32, (q, k, v, eta))
    alpha, beta = map(c32, (alpha, beta))
    W = [c32(w) for w in W]
    S = None if S is None else [c32(s) for s in S]
    o = torch.empty(N, T, DV, dtype=torch.float32, device=k.device)
    W_out = [torch.empty_like(w) for w in W]
    S_out = [torch.empty_like(w) for w in W] if S is not None else None
    ck = [w.new_empty(N, n_groups, *w.shape[1:]) for w in W + (S or [])]
    gain = bias = None
    if norm is not None:
        gain, bias = (c32(p) for p in norm)

    def arg(x: Tensor | None) -> Tensor:
        return k if x is None else x      # never read: the constexpr flags switch those loads off

    global LAUNCHES
    LAUNCHES += 1
    with _host_only():
        _launch_fwd(N, q, k, v, eta, arg(alpha), arg(beta), arg(gain), arg(bias),
                    W[0], W[1], arg(S[0] if S else None), arg(S[1] if S else None),
                    o, W_out[0], W_out[1], arg(S_out[0] if S_out else None),
                    arg(S_out[1] if S_out else None),
                    ck[0], ck[1], arg(ck[2] if S else None), arg(ck[3] if S else None),
                    n_chunks, n_groups, cfg["clip"],
                    DK=DK, HID=HID, DV=DV, C=C, LOG2C=int(math.log2(C)), G=G,
                    ACT=ACT_CODES[cfg["activation"]], OBJ=cfg["obj_code"],
                    DGD=cfg["rule"] == "dgd", ERASE=ERASE_CODES[cfg["erase"]],
                    READ=READ_CODES[cfg["read"]], HAS_RET=alpha is not None,
                    HAS_MOM=S is not None, NORM=norm is not None,
                    RESIDUAL=cfg["residual"], num_warps=_warps(HID, DK))
    return o, W_out, S_out, ck


def _launch_fwd(N: int, *args: Any, **kw: Any) -> None:
    _mlp_scan_fwd[(N,)](*args, **kw)


def _launch_bwd(N: int, *args: Any, **kw: Any) -> None:
    _mlp_scan_bwd[(N,)](*args, **kw)


class TritonMLPScan(torch.autograd.Function):
    """``_mlp_scan_fwd`` forward, ``_mlp_scan_bwd`` backward (from the saved group states)."""

    @staticmethod
    def forward(ctx, cfg: dict[str, Any], n_w: int, has_mom: bool, *tensors: Tensor):
        q, k, v, eta, alpha, beta, gain, bias, *rest = tensors
        W = list(rest[:n_w])
        S = list(rest[n_w:]) if has_mom else None
        B, H, T, DK = k.shape
        N = B * H

        @overload
        def flat(x: Tensor) -> Tensor: ...
        @overload
        def flat(x: Tensor | None) -> Tensor | None: ...
        def flat(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.reshape(N, *x.shape[2:])

        norm = None if gain is None else (gain.expand(B, H, -1).reshape(N, -1),
                                          bias.expand(B, H, -1).reshape(N, -1))
        # without gradients one group: only the initial state is kept
        training = any(isinstance(x, Tensor) and x.requires_grad for x in tensors)
        G = (cfg["group"] if training else None) or T // cfg["chunk_size"]
        o, W_out, S_out, ck = _launch(flat(q), flat(k), flat(v), flat(eta), flat(alpha),
                                      flat(beta), norm, [flat(w) for w in W],
                                      None if S is None else [flat(s) for s in S], cfg, G)
        ctx.cfg, ctx.n_w, ctx.has_mom, ctx.G, ctx.shape = cfg, n_w, has_mom, G, (B, H)
        ctx.save_for_backward(*tensors[:8], *ck)
        DV = v.shape[-1]
        outs = [o.view(B, H, T, DV)]
        outs += [w.view(B, H, *w.shape[1:]) for w in W_out]
        outs += [s.view(B, H, *s.shape[1:]) for s in (S_out or [])]
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        return _backward_kernel(ctx, grads)


def _backward_kernel(ctx: Any, grads: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
    cfg, n_w, has_mom, G = ctx.cfg, ctx.n_w, ctx.has_mom, ctx.G
    B, H = ctx.shape
    saved = ctx.saved_tensors
    q, k, v, eta, alpha, beta, gain, bias = saved[:8]
    ck = [c.contiguous() for c in saved[8:]]
    N, T, DK, DV = B * H, k.shape[2], k.shape[3], v.shape[3]
    HID = ck[0].shape[2]
    C = cfg["chunk_size"]
    n_chunks = T // C
    n_groups = -(-n_chunks // G)

    @overload
    def flat(x: Tensor) -> Tensor: ...
    @overload
    def flat(x: Tensor | None) -> Tensor | None: ...
    def flat(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.reshape(N, *x.shape[2:]).to(torch.float32).contiguous()

    qf, kf, vf, ef, af, bf = map(flat, (q, k, v, eta, alpha, beta))
    go = flat(grads[0])
    # final-state gradients in, initial-state gradients out (in place)
    gW = [flat(g).clone() for g in grads[1:1 + n_w]]
    gS = [flat(g).clone() for g in grads[1 + n_w:]] if has_mom else None
    dq, dk, dv = torch.empty_like(qf), torch.empty_like(kf), torch.empty_like(vf)
    deta = torch.empty_like(ef)
    dalpha = torch.empty_like(ef) if af is not None else None
    dbeta = torch.empty_like(ef) if bf is not None else None
    scr = torch.empty(N, G, 2 * HID * DK + 2 * DV * HID, dtype=torch.float32, device=k.device)
    norm = gain is not None
    gn = bn = dgain = dbias = None
    if norm:
        gn = gain.expand(B, H, DV).reshape(N, DV).float().contiguous()
        bn = bias.expand(B, H, DV).reshape(N, DV).float().contiguous()
        dgain, dbias = torch.empty_like(gn), torch.empty_like(bn)

    def arg(x: Tensor | None) -> Tensor:
        return kf if x is None else x

    global LAUNCHES
    LAUNCHES += 1
    with _host_only():
        _launch_bwd(
            N, qf, kf, vf, ef, arg(af), arg(bf), ck[0], ck[1],
            arg(ck[2] if has_mom else None), arg(ck[3] if has_mom else None), scr,
            go, gW[0], gW[1], arg(gS[0] if gS else None), arg(gS[1] if gS else None), arg(gn),
            arg(bn), dq, dk, dv, deta, arg(dalpha), arg(dbeta), arg(dgain), arg(dbias),
            n_chunks, n_groups, cfg["clip"],
            DK=DK, HID=HID, DV=DV, C=C, G=G, ACT=ACT_CODES[cfg["activation"]],
            OBJ=cfg["obj_code"], READ=READ_CODES[cfg["read"]], HAS_RET=af is not None,
            HAS_MOM=has_mom, RESIDUAL=cfg["residual"], DGD=cfg["rule"] == "dgd",
            ERASE=ERASE_CODES[cfg["erase"]], LOG2C=int(math.log2(C)), NORM=norm,
            num_warps=_warps(HID, DK))

    def back(x: Tensor | None, like: Tensor | None) -> Tensor | None:
        return None if x is None or like is None else x.view(like.shape).to(like.dtype)

    seq = [back(dq, q), back(dk, k), back(dv, v), back(deta, eta), back(dalpha, alpha),
           back(dbeta, beta)]
    states = [g.view(B, H, *g.shape[1:]) for g in gW + (gS or [])]

    def per_head(d: Tensor | None, like: Tensor | None) -> Tensor | None:
        """(N, DV) per program → the norm parameter's own shape ((H, DV): summed over B)."""
        if d is None or like is None or not like.requires_grad:
            return None
        d = d.view(B, H, DV)
        return (d.sum(0) if like.dim() == 2 else d).to(like.dtype)

    return (None, None, None, *seq, per_head(dgain, gain), per_head(dbias, bias), *states)


def triton_mlp_scan(q: Tensor, k: Tensor, v: Tensor, *, lr: Tensor, retention: Tensor | None,
                    momentum: Tensor | None, state: MemoryState, spec: MLPMemory,
                    objective: Objective, rule: str, read: str, chunk_size: int, erase: str,
                    norm: NormParams = None, group: int | None = None
                    ) -> tuple[Tensor, MemoryState]:
    """``mlp_scan_chunked`` through the Triton kernel (see ``supports`` for what it covers).

    Inputs as for ``mlp_scan_chunked`` ((B, H, T, ·) float32 tensors, (B, H, T) gates, states
    (B, H, out, in)); `group`: chunks per saved state in training (None: one group).
    """
    code, clip = objective_code(objective)  # type: ignore[misc]
    cfg = dict(chunk_size=chunk_size, clip=clip, obj_code=code, rule=rule, erase=erase,
               read=read, activation=spec.activation, residual=spec.residual, norm=spec.norm,
               spec=spec, objective=objective, group=group)
    has_mom = momentum is not None
    moms = tuple(cast("tuple[Tensor, ...]", state.momentum)) if has_mom else ()
    gain, bias = (None, None) if norm is None else norm
    if spec.norm and norm is None:
        H, DV = k.shape[1], v.shape[-1]
        gain, bias = k.new_ones(H, DV), k.new_zeros(H, DV)
    outs = TritonMLPScan.apply(cfg, len(state.weights), has_mom, q, k, v, lr, retention,
                               momentum, gain, bias, *state.weights, *moms)
    n = len(state.weights)
    o = outs[0]
    W = tuple(outs[1:1 + n])
    S = tuple(outs[1 + n:]) if has_mom else None
    return o, MemoryState(W, S)


def _as_gate(x: Tensor | float | None, like: Tensor) -> Tensor | None:
    """A gate as a (B, H, L) float32 tensor (like: (B, H, L))."""
    if x is None:
        return None
    if isinstance(x, Tensor):
        return x.to(torch.float32).expand_as(like)
    return torch.full_like(like, float(x))


def triton_chunk_step(state: MemoryState, q_c: Tensor | None, k_c: Tensor, v_c: Tensor,
                      lr_c: Tensor | float, retention_c: Tensor | float | None,
                      momentum_c: Tensor | float | None, dec: Any = None, *, spec: MLPMemory,
                      objective: str | Objective = "l2", rule: str = "gd", read: str = "after",
                      erase: str = "eta", norm: NormParams = None, normalized_lr: bool = False
                      ) -> tuple[Tensor | None, MemoryState]:
    """``mlp_chunk_step``'s contract on one chunk through the two kernels (Hope's joint loop,
    whose memories generate each other's inputs chunk by chunk). `dec` is unused (the kernel
    builds its decays); q_c None writes without reading. The chunk's length must satisfy
    ``supports`` (the caller falls back to the torch step otherwise)."""
    if normalized_lr:
        raise ValueError(NO_NORMALIZED_LR)
    objective = get_objective(objective)
    B, H, L, _ = k_c.shape
    like = k_c[..., 0].to(torch.float32)
    ws = tuple(w.to(torch.float32).expand(B, H, *w.shape[-2:]).contiguous()
               for w in state.weights)
    beta = _as_gate(momentum_c, like)
    moms = None
    if beta is not None:
        moms = (tuple(m.to(torch.float32).expand(B, H, *m.shape[-2:]).contiguous()
                      for m in state.momentum) if state.momentum is not None
                else tuple(torch.zeros_like(w) for w in ws))
    nrm = None if norm is None else cast("tuple[Tensor, Tensor]",
                                         tuple(p.to(torch.float32) for p in norm))
    f32 = [x.to(torch.float32) for x in (k_c, v_c)]
    q = q_c.to(torch.float32) if q_c is not None else f32[0]
    o, new = triton_mlp_scan(q, f32[0], f32[1], lr=_as_gate(lr_c, like),  # type: ignore[arg-type]
                             retention=_as_gate(retention_c, like), momentum=beta,
                             state=MemoryState(ws, moms), spec=spec, objective=objective,
                             rule=rule, read=read, chunk_size=L, erase=erase, norm=nrm, group=1)
    if spec.renorm:       # rows back to their chunk-start norms, as mlp_chunk_step does
        new = MemoryState(tuple(renorm_rows(w, w0) for w, w0 in zip(new.weights, ws, strict=True)),
                          new.momentum)
    return (o if q_c is not None else None), new
