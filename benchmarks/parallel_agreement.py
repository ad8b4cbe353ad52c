"""One process vs. two under torchrun (DDP and FSDP2, gloo on CPU): the per-step loss curves of a
tiny preset on the same global batch, and each run's wall time.

    python benchmarks/parallel_agreement.py [--presets titans-lmm hope] [--steps 20]

Prints JSON and writes benchmarks/results/parallel-agreement-cpu-<date>.json: per preset and
mode, the largest |loss difference| to the one-process run over the steps, the step where it
occurs, and the seconds each run took (start-up included; the three runs share the machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def spec_for(preset: str, steps: int, folder: Path) -> Path:
    doc = yaml.safe_load((ROOT / "specs" / f"{preset}.yaml").read_text())
    doc["model"]["depth"] = 2
    doc["optimizer"] = {"type": "adamw", "lr": 1e-3, "weight_decay": 0.0, "beta": 0.9, "beta2": 0.99}
    doc["data"] = {"task": "mqar", "seq_len": 64, "batch": 4, "num_pairs": 4}
    if preset == "hope":
        doc["levels"]["cms_mid"] = {"every": "32 tokens"}
    doc["train"] = {"steps": steps, "warmup": 0, "schedule": "constant", "log_every": 1,
                    "ckpt_every": steps, "compile": False}
    path = folder / f"{preset}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(cmd: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
    return time.perf_counter() - t0


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["titans-lmm", "hope"])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    two = [torchrun, "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    out: dict[str, object] = {"benchmark": "parallel_agreement", "device": "cpu (gloo)",
                              "steps": args.steps, "date": datetime.date.today().isoformat(),
                              "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for preset in args.presets:
            spec = spec_for(preset, args.steps, folder)
            rows: dict[str, object] = {}
            base = folder / f"{preset}-one"
            seconds = run([sys.executable, "-m", "nestdsl", "train", str(spec), "--out", str(base), "-q"])
            ref = losses(base)
            rows["one"] = {"seconds": round(seconds, 1), "final_loss": ref[-1]}
            for mode in ("ddp", "fsdp"):
                d = folder / f"{preset}-{mode}"
                seconds = run([*two, "-m", "nestdsl", "train", str(spec), "--out", str(d), "-q",
                               "--parallel", mode])
                got = losses(d)
                diffs = [abs(a - b) for a, b in zip(ref, got, strict=True)]
                worst = max(range(len(diffs)), key=diffs.__getitem__)
                rows[mode] = {"seconds": round(seconds, 1), "max_abs_loss_diff": diffs[worst],
                              "at_step": worst + 1, "final_loss": got[-1]}
            out["presets"][preset] = rows  # type: ignore[index]
    text = json.dumps(out, indent=1)
    print(text)
    dest = ROOT / "benchmarks" / "results" / f"parallel-agreement-cpu-{out['date']}.json"
    dest.write_text(text + "\n")


if __name__ == "__main__":
    main()
