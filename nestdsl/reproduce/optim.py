"""The Deep-Optimizer suite's run: a small regression trained with one optimizer spec under
gradient noise (NL paper §4: momentum is an associative memory of the gradients; a deeper or
delta-rule memory should be more robust to noisy ones).

The optimizer's learning rate is tuned on the job's seed at the reference noise level, from the
row's grid; then the final loss is measured at every noise level. Gradient noise:
g <- g + level * |g| * n / sqrt(numel), n ~ N(0, I), so the noise norm is about level * |g|.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["final_loss", "run_optim"]


def _regression(problem: dict[str, int], seed: int) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(100 + seed)
    X = torch.randn(problem["samples"], problem["inputs"], generator=gen)
    W = torch.randn(problem["outputs"], problem["inputs"], generator=gen) / math.sqrt(problem["inputs"])
    return X, X @ W.T + 0.05 * torch.randn(problem["samples"], problem["outputs"], generator=gen)


def final_loss(spec: Any, problem: dict[str, int], steps: int, level: float, seed: int) -> float:
    """Train a two-layer tanh MLP on the seed's regression with optimizer `spec` for `steps`
    full-batch steps under gradient noise `level`; the final training loss (inf if it diverged)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from nestdsl.optim import build, register_dgd_hooks

    X, Y = _regression(problem, seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(problem["inputs"], problem["hidden"]), nn.Tanh(),
                          nn.Linear(problem["hidden"], problem["outputs"]))
    opt = build(spec, model.named_parameters())
    register_dgd_hooks(model, opt)
    noise = torch.Generator().manual_seed(300 + seed)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(X), Y).backward()
        for p in model.parameters():
            if level and p.grad is not None:
                n = torch.randn(p.grad.shape, generator=noise)
                p.grad.add_(n * (level * p.grad.norm() / math.sqrt(p.grad.numel())))
        opt.step()
    with torch.no_grad():
        loss = F.mse_loss(model(X), Y).item()
    return loss if math.isfinite(loss) else math.inf


def run_optim(spec_name: str, options: dict[str, Any], steps: int, seed: int) -> dict[str, Any]:
    """Tune the lr at the reference noise, then the final loss at every noise level."""
    import torch

    from nestdsl.optim import optimizer_spec

    torch.set_num_threads(1)
    base = optimizer_spec(spec_name)
    problem, ref = options["problem"], float(options["reference_noise"])
    grid = options["lr"] or [base.lr]
    tuned = {lr: final_loss(base.model_copy(update={"lr": lr}), problem, steps, ref, seed) for lr in grid}
    lr = min(tuned, key=tuned.__getitem__)
    spec = base.model_copy(update={"lr": lr})
    at_noise = {str(level): final_loss(spec, problem, steps, float(level), seed) for level in options["noise"]}
    finite = {k: v for k, v in at_noise.items() if math.isfinite(v)}
    return {"lr": lr, "lr_grid": {str(k): v for k, v in tuned.items()}, "at_noise": at_noise,
            "final_loss": at_noise.get(str(ref), tuned[lr]),
            **({"diverged": "non-finite loss at every noise level"} if not finite else {})}
