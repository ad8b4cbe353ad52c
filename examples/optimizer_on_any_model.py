"""A nestdsl optimizer spec on any PyTorch model.

`nestdsl.optim.build` takes an optimizer spec (a file, or a shipped one by name: here `m3`, the NL
paper's multi-scale momentum Muon, Algorithm 1) and a model's named parameters, routes matrices,
vectors and embeddings to the spec's groups, and returns a `torch.optim.Optimizer`. The model
knows nothing of nestdsl.

    python examples/optimizer_on_any_model.py [--spec m3] [--steps 200]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from nestdsl.optim import build, describe_levels, optimizer_spec


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="m3", help="a shipped optimizer spec's name or a spec file")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()

    torch.manual_seed(0)
    X = torch.randn(512, 32)
    Y = torch.tanh(X @ torch.randn(32, 8) / 32**0.5)
    model = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 8))

    opt = build(args.spec, model.named_parameters())
    routes = {name: group["type"] for group in opt.param_groups for name in group["names"]}
    losses = []
    for _ in range(args.steps):
        loss = F.mse_loss(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    levels = [lv["name"] for lv in describe_levels(optimizer_spec(args.spec))]
    result = {"optimizer": type(opt).__name__, "routes": routes, "levels": levels,
              "first_loss": losses[0], "final_loss": losses[-1]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
