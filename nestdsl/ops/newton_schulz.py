"""Newton–Schulz orthogonalisation (Muon; the non-linear output σ of NL's Eq. 24 / M3)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["newton_schulz", "NS_COEFFS"]

#: Quintic iteration coefficients of Muon (Jordan et al., 2024).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately U Vᵀ for G = U Σ Vᵀ (singular values pushed into roughly [0.7, 1.2]).

    X ← a X + (b A + c A²) X with A = X Xᵀ, after normalising by the Frobenius norm; a tall
    matrix is transposed first so A is the small Gram matrix. Works on (..., m, n), any float
    dtype (computed in the input dtype; bfloat16 is fine, as in Muon).
    """
    if G.dim() < 2:
        raise ValueError(f"newton_schulz needs a matrix (…, m, n); got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFS
    X = G
    tall = G.shape[-2] > G.shape[-1]
    if tall:
        X = X.mT
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X
