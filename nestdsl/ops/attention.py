"""Causal softmax attention (optionally sliding-window): the non-parametric memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_attention", "causal_window_mask"]


def causal_window_mask(T: int, window: int | None, device: torch.device | None = None,
                       S: int | None = None) -> Tensor:
    """Boolean (T, S) mask, True where query t may attend key s.

    Causal: s ≤ t (queries are the last T of S keys when S > T, e.g. with a cache). With
    ``window`` w: only the last w keys, t − w < s ≤ t (the query's own token included).
    """
    S = T if S is None else S
    t = torch.arange(T, device=device)[:, None] + (S - T)
    s = torch.arange(S, device=device)[None, :]
    mask = s <= t
    if window is not None:
        mask = mask & (s > t - window)
    return mask


def causal_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int | None = None,
                     scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale + causal/window mask) v.

    Args:
        q: (B, H, T, Dk); k: (B, H, S, Dk); v: (B, H, S, Dv) with S ≥ T (the last T keys are the
            queries' own tokens). window: attend to at most the last ``window`` tokens
            (inclusive of the current one); None = full causal. scale: default 1/sqrt(Dk).
    Returns:
        (B, H, T, Dv).
    """
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None; got {window}")
    T, S = q.shape[-2], k.shape[-2]
    if window is None and S == T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = causal_window_mask(T, window, device=q.device, S=S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
