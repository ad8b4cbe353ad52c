"""Run a Deep-Optimizer experiment written as data (`noise.yaml`): every optimizer spec, its lr
tuned at the reference noise level, then the final loss at each gradient-noise level and seed.

    python examples/deep_optimizers/run.py [examples/deep_optimizers/noise.yaml] [--quick]

Prints one JSON document: {optimizer: {"lr": tuned lr, "loss": {noise level: mean final loss}}}.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from nestdsl.optim import build, optimizer_spec, register_dgd_hooks

HERE = Path(__file__).resolve().parent


def regression(cfg: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + seed)
    X = torch.randn(cfg["samples"], cfg["inputs"], generator=gen)
    W = torch.randn(cfg["outputs"], cfg["inputs"], generator=gen) / math.sqrt(cfg["inputs"])
    return X, X @ W.T + 0.05 * torch.randn(cfg["samples"], cfg["outputs"], generator=gen)


def final_loss(spec: Any, cfg: dict[str, Any], steps: int, level: float, seed: int) -> float:
    X, Y = regression(cfg, seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(cfg["inputs"], cfg["hidden"]), nn.Tanh(),
                          nn.Linear(cfg["hidden"], cfg["outputs"]))
    opt = build(spec, model.named_parameters())
    register_dgd_hooks(model, opt)
    noise = torch.Generator().manual_seed(300 + seed)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(X), Y).backward()
        for p in model.parameters():
            if level:
                n = torch.randn(p.grad.shape, generator=noise)
                p.grad.add_(n * (level * p.grad.norm() / math.sqrt(p.grad.numel())))
        opt.step()
    with torch.no_grad():
        loss = F.mse_loss(model(X), Y).item()
    return loss if math.isfinite(loss) else math.inf


def run(path: Path, quick: bool = False) -> dict[str, Any]:
    exp = yaml.safe_load(path.read_text())
    steps = exp["steps"] // 3 if quick else exp["steps"]
    seeds = exp["seeds"][:1] if quick else exp["seeds"]
    out: dict[str, Any] = {}
    for name, entry in exp["optimizers"].items():
        local = path.parent / entry["spec"]  # a file beside the experiment, else a shipped name
        base = optimizer_spec(local if local.is_file() else entry["spec"])
        grid = entry["lr"][:2] if quick else entry["lr"]
        scores = {lr: final_loss(base.model_copy(update={"lr": lr}), exp["problem"], steps,
                                 exp["reference_noise"], seed=0) for lr in grid}
        lr = min(scores, key=scores.__getitem__)
        spec = base.model_copy(update={"lr": lr})
        out[name] = {"lr": lr, "loss": {
            str(level): sum(final_loss(spec, exp["problem"], steps, level, s) for s in seeds) / len(seeds)
            for level in exp["noise"]}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", nargs="?", default=str(HERE / "noise.yaml"))
    ap.add_argument("--quick", action="store_true", help="a third of the steps, one seed, two lrs")
    args = ap.parse_args()
    print(json.dumps(run(Path(args.experiment), args.quick), indent=1))


if __name__ == "__main__":
    main()
