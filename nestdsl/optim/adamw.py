"""AdamW (spec type `adamw`): torch's, with the spec's `beta`, `beta2` as its betas.

In nested-learning terms Adam keeps two element-wise L2 memories of the gradient, its first
and second moments (arXiv App. B Eq. 105); the level graph shows them (spec/optimizers.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["adamw"]


def adamw(params: Iterable[Any], *, lr: float, weight_decay: float, beta: float, beta2: float,
          eps: float) -> torch.optim.AdamW:
    """torch.optim.AdamW with betas = (beta, beta2)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(beta, beta2), eps=eps)
