"""Does a layer's output at the question carry the needle? A perturbation probe for S-NIAH-1.

For each preset (trained on S-NIAH-1 for `--steps` steps, or at initialisation with 0), it feeds
held-out S-NIAH-1 sequences three times — as drawn, with the pass key's 7 digits changed, and with
7 haystack characters changed next to the needle sentence — and reports, for every layer, the
relative change ‖y − y'‖ / ‖y‖ of the layer's output at the position that predicts the first
answer digit. A layer that retrieves moves with the needle and little with the haystack; a layer
that ignores distant context moves with neither (~0); a *chaotic* layer moves by ~1 with either:
its output there is an unstructured function of everything before it, which the next layers
cannot decode and learn to ignore.

    python benchmarks/sensitivity.py --presets titans-lmm hope --steps 0 300 \\
        --out benchmarks/results/sensitivity-niah1-cpu-DATE.json

One thread; the training runs are nestdsl's own `train` on the preset with `data` set to
S-NIAH-1 (seq 128, batch 8), seed 0.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NIAH1 = "{task: niah, variant: 1, seq_len: 128, batch: 8}"


def _sequences(n: int, seed: int) -> tuple[Any, Any, Any]:
    """(as drawn, needle changed, haystack changed) token batches, (n, 128) each."""
    import numpy as np
    import torch

    from nestdsl.runtime.tasks.niah import NIAHTask

    task = NIAHTask(seq_len=128, batch=1, seed=seed)
    rng = np.random.default_rng(seed)
    rows: list[list[list[int]]] = [[], [], []]
    for _ in range(n):
        text, value = task.sample_text(rng)
        m = re.search(r"The pass key is (\d{7})\. ", text)
        assert m is not None
        other = "".join(str((int(c) + 1 + int(rng.integers(9))) % 10) for c in value)
        needle = text[:m.start(1)] + other + text[m.end(1):]
        # 7 haystack characters just before the needle sentence (or after it near the start)
        at = m.start(0) - 10 if m.start(0) >= 10 else m.end(0) + 2
        shifted = "".join(chr(ord("a") + (ord(c) + 3) % 26) for c in text[at:at + 7])
        hay = text[:at] + shifted + text[at + 7:]
        for out, t in zip(rows, (text, needle, hay), strict=True):
            out.append(list(t.encode("ascii")))
    return tuple(torch.tensor(r)[:, :-1] for r in rows)   # inputs (the last byte is a target)


def probe(preset: str, steps: int, n: int = 32) -> dict[str, Any]:
    import torch

    import nestdsl
    from nestdsl.runtime import checkpoint as ck
    from nestdsl.runtime.train import train
    from nestdsl.spec import load_spec

    torch.set_num_threads(1)
    path = Path(preset) if preset.endswith((".yaml", ".nest")) else ROOT / "specs" / f"{preset}.yaml"
    spec = load_spec(path, overrides=[f"data={NIAH1}", "train.seed=0", "train.compile=false",
                                      f"train.ckpt_every={max(steps, 1)}",
                                      f"train.log_every={max(steps, 1)}"])
    torch.manual_seed(0)
    model = nestdsl.compile(spec, compile=False).model
    if steps:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            train(spec, spec_text=spec.model_dump_json(), run_dir=run, steps=steps)
            ck.load_checkpoint(run, model=model, spec_text=spec.model_dump_json())
    model.eval()
    drawn, needle, hay = _sequences(n, seed=123)
    at = drawn.shape[1] - 7          # the input position whose target is the first answer digit
    outs: dict[str, list[Any]] = {}

    def keep(name: str):
        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            y = out[0] if isinstance(out, tuple) else out
            outs.setdefault(name, []).append(y[:, at].detach())
        return hook

    hooks = [slot.layer.register_forward_hook(keep(f"block {b}.{s} {slot.type}"))
             for b, blk in enumerate(model.blocks) for s, slot in enumerate(blk.slots)]
    with torch.no_grad():
        probs = [model(x)[:, at].softmax(-1) for x in (drawn, needle, hay)]
    for h in hooks:
        h.remove()

    def rel(a: Any, b: Any) -> float:
        return float(((a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)).mean())

    layers = {name: {"needle": rel(y[0], y[1]), "haystack": rel(y[0], y[2])}
              for name, y in outs.items()}
    tv = {k: float(0.5 * (probs[0] - p).abs().sum(-1).mean())
          for k, p in (("needle", probs[1]), ("haystack", probs[2]))}
    return {"preset": preset, "steps": steps, "sequences": n, "layers": layers,
            "answer_distribution_tv": tv}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["titans-lmm", "hope"])
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 300])
    ap.add_argument("--out")
    args = ap.parse_args()
    records = []
    for preset in args.presets:
        for steps in args.steps:
            rec = probe(preset, steps)
            records.append(rec)
            for name, r in rec["layers"].items():
                print(f"{preset:<24} steps {steps:<5} {name:<26} needle {r['needle']:.3g}  "
                      f"haystack {r['haystack']:.3g}", file=sys.stderr, flush=True)
    text = json.dumps({"benchmark": "sensitivity", "task": "niah1", "records": records}, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
