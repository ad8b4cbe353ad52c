"""Is the first loss of the paper-scale presets finite? (random tokens, CPU or GPU)

    python benchmarks/first_loss.py                                  # depth 2, T = 256
    python benchmarks/first_loss.py --depth full --seq 64            # all 24 layers, short T

Builds each preset (specs/scale/*-340m.yaml by default) with the given depth and sequence
length, runs one forward + backward of the next-token loss on uniformly random token ids and
prints, per preset, the loss (ln(vocab) ≈ 10.4 expected at init), whether it and every
gradient are finite, the largest memory state norm (inner-loop telemetry) and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import nestdsl
from nestdsl.lower import telemetry
from nestdsl.pipeline import load_spec

ROOT = Path(__file__).resolve().parents[1]


def first_loss(preset: str, depth: str, seq: int, batch: int, seed: int, device: str) -> dict:
    sets = [f"data={{task: copy, seq_len: {seq}, batch: {batch}, length: 8}}"]
    if depth != "full":
        sets.append(f"model.depth={depth}")
    spec = load_spec(ROOT / "specs" / "scale" / f"{preset}.yaml", overrides=sets)
    torch.manual_seed(seed)
    model = nestdsl.compile(spec, device=device, compile=False).model
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, spec.model.vocab, (batch, seq + 1), generator=g).to(device)
    t0 = time.perf_counter()
    with telemetry.recording() as stats:
        loss = model.loss(tokens[:, :-1], tokens[:, 1:], None)
    loss.backward()
    grads_ok = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                   if p.grad is not None)
    norms = [float(s["state_norm"]) for s in stats.values() if "state_norm" in s]
    return {"preset": preset, "depth": spec.model.depth, "seq": seq, "batch": batch,
            "loss": float(loss), "finite": math.isfinite(float(loss)) and grads_ok,
            "max_state_norm": max(norms) if norms else None,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["titans-lmm-340m", "hope-340m"])
    ap.add_argument("--depth", default="2", help="an int, or 'full' for the preset's depth")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    for p in args.presets:
        print(json.dumps(first_loss(p, args.depth, args.seq, args.batch, args.seed, args.device)),
              flush=True)


if __name__ == "__main__":
    main()
