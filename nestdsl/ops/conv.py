"""Depthwise causal short convolution (Titans §4.4, Hope: width 4 after the q/k/v projections)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d"]


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y[b, t, d] = Σ_{j<W} weight[d, j] · x[b, t − W + 1 + j, d] (+ bias[d]), zeros before t = 0.

    Args:
        x: (B, T, D); weight: (D, W) (the last tap multiplies the current token); bias: (D,).
    Returns:
        (B, T, D).
    """
    D, W = weight.shape
    if x.shape[-1] != D:
        raise ValueError(f"x has {x.shape[-1]} channels but weight has {D}")
    xt = F.pad(x.transpose(1, 2), (W - 1, 0))                  # (B, D, T + W − 1), left pad
    y = F.conv1d(xt, weight[:, None, :].to(x.dtype), None if bias is None else bias.to(x.dtype),
                 groups=D)
    return y.transpose(1, 2)
