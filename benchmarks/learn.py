"""Does each model preset *learn* its recall task? A fixed-budget learning benchmark.

Trains tiny presets on synthetic recall tasks (copy-8, MQAR with 8 pairs, S-NIAH-1/2/3), each
run in its own process on one CPU thread (at most `--jobs` runs at a time, default 2), then scores
held-out batches ("val" split) and prints a table:

* answer accuracy: the fraction of answer tokens predicted right;
* exact match: the fraction of sequences whose answer tokens are all right;
* final loss (mean of the last log window), tokens/s, and the number of non-finite steps
  (0 or 1: training stops at the first one, naming the memory/layer/chunk that failed).

    python benchmarks/learn.py                                 # the default grid (long: ~1 h)
    python benchmarks/learn.py --presets titans-lmm hope --tasks copy8 --steps 300 --seeds 0 1 2
    python benchmarks/learn.py --presets titans-lmm --set memories.titans.rule.clip=1.0
    python benchmarks/learn.py --presets all --tasks default --seeds 0 1 2   # each preset's own
                                                                             # task and steps

Writes `--out` (JSON: one record per run, plus the grid and the machine) and a PNG of answer
accuracy per preset and task next to it (`--png`, if matplotlib is installed). Everything is
measured in this run; nothing is read from earlier results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"

#: The tasks, as `data` overrides (seq 128, batch 8 for every task: one budget for all).
TASKS: dict[str, str] = {
    "copy8": "{task: copy, seq_len: 128, batch: 8, length: 8}",
    "mqar8": "{task: mqar, seq_len: 128, batch: 8, num_pairs: 8}",
    "niah1": "{task: niah, variant: 1, seq_len: 128, batch: 8}",
    "niah2": "{task: niah, variant: 2, seq_len: 128, batch: 8}",
    "niah3": "{task: niah, variant: 3, seq_len: 128, batch: 8}",
    "default": "",   # the preset's own `data` and `train.steps`
    # byte-level language modelling on a text file (NESTDSL_CORPUS, `--corpus`): scored in
    # validation bits per byte instead of answer accuracy
    "text": "{task: text, seq_len: 128, batch: 8, path: CORPUS}",
}
PRESETS = ["transformer", "deltanet", "titans-lmm", "titans-mal", "titans-mag", "hope",
           "hope-attention"]
EVAL_BATCHES = 8


def spec_path(preset: str) -> Path:
    """A preset name (`specs/<name>.yaml`) or the path of any spec file (experiments)."""
    return Path(preset) if preset.endswith((".yaml", ".nest")) else SPECS / f"{preset}.yaml"


def run_one(preset: str, task: str, seed: int, steps: int, sets: list[str]) -> dict[str, Any]:
    """Train and score one (preset, task, seed) in this process (called in a subprocess)."""
    import torch

    torch.set_num_threads(1)
    from nestdsl.pipeline import load_spec
    from nestdsl.runtime.train import TrainingDiverged, train
    from nestdsl.runtime.train import _make_task as make_task

    path = spec_path(preset)
    if task == "default":
        steps = load_spec(path).train.steps
    data = TASKS[task].replace("CORPUS", os.environ.get("NESTDSL_CORPUS", ""))
    overrides = ([f"data={data}"] if data else []) + [
        f"train.seed={seed}", "train.compile=false", f"train.log_every={max(1, steps // 20)}",
        f"train.ckpt_every={steps}", *sets]
    spec = load_spec(path, overrides=overrides)
    rec: dict[str, Any] = {"preset": preset, "task": task, "seed": seed, "steps": steps,
                           "overrides": sets}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t0 = time.perf_counter()
        try:
            res = train(spec, spec_text=spec.model_dump_json(), run_dir=run_dir, steps=steps)
            rec.update(final_loss=res.final_loss, tokens_per_s=res.tokens_per_s, nonfinite=0)
        except TrainingDiverged as e:
            rec.update(final_loss=math.nan, tokens_per_s=math.nan, nonfinite=1, error=str(e))
        rec["seconds"] = time.perf_counter() - t0
        if rec["nonfinite"]:
            rec.update(answer_acc=math.nan, exact_match=math.nan)
            return rec
        import nestdsl
        from nestdsl.runtime import checkpoint as ck

        system = nestdsl.compile(spec, compile=False)
        from nestdsl.spec.identity import identity

        ck.load_checkpoint(run_dir, model=system.model, identity=identity(spec))
        model = system.model.eval()
        data = make_task(spec.data, spec, run_dir)
        right = total = exact = seqs = 0
        if task == "text":       # validation bits per byte (byte tokens: loss / ln 2)
            with torch.no_grad():
                losses = [float(model.loss(b.tokens, b.targets, b.loss_mask))
                          for b in (data.batch(i, split="val") for i in range(EVAL_BATCHES))]
            rec.update(bits_per_byte=sum(losses) / len(losses) / math.log(2),
                       answer_acc=math.nan, exact_match=math.nan)
            return rec
        with torch.no_grad():
            for i in range(EVAL_BATCHES):
                b = data.batch(i, split="val")
                pred = model(b.tokens).argmax(-1)
                m = b.loss_mask.bool() & (b.targets != -100)
                ok = (pred == b.targets) & m
                right += int(ok.sum())
                total += int(m.sum())
                scored = m.any(-1)
                exact += int(((ok == m).all(-1) & scored).sum())
                seqs += int(scored.sum())
        rec.update(answer_acc=right / max(total, 1), exact_match=exact / max(seqs, 1))
    return rec


def _subprocess(preset: str, task: str, seed: int, steps: int, sets: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", preset, task, str(seed), "--steps", str(steps)]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"preset": preset, "task": task, "seed": seed, "steps": steps, "overrides": sets,
                "error": (p.stderr or p.stdout)[-2000:], "nonfinite": math.nan,
                "answer_acc": math.nan, "exact_match": math.nan, "final_loss": math.nan,
                "tokens_per_s": math.nan}
    return json.loads(lines[-1])


def _table(records: list[dict[str, Any]]) -> str:
    head = f"{'preset':16} {'task':7} {'seed':>4} {'ans acc':>8} {'exact':>7} {'loss':>7} " \
           f"{'tok/s':>7} {'nonfin':>6}"
    rows = [head, "-" * len(head)]
    for r in records:
        if "bits_per_byte" in r:
            rows.append(f"{r['preset']:16} {r['task']:7} {r['seed']:>4} bpb {r['bits_per_byte']:.3f} "
                        f"{r['final_loss']:>7.3f} {r['tokens_per_s']:>7.0f} {r['nonfinite']!s:>6}")
            continue
        rows.append(f"{r['preset']:16} {r['task']:7} {r['seed']:>4} {r['answer_acc']:>8.3f} "
                    f"{r['exact_match']:>7.3f} {r['final_loss']:>7.3f} {r['tokens_per_s']:>7.0f} "
                    f"{r['nonfinite']!s:>6}")
    return "\n".join(rows)


def _png(records: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    presets = list(dict.fromkeys(r["preset"] for r in records))
    tasks = list(dict.fromkeys(r["task"] for r in records))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(presets) * max(1, len(tasks)) / 2, 3.6))
    width = 0.8 / max(1, len(tasks))
    for j, task in enumerate(tasks):
        means = []
        for p in presets:
            accs = [r["answer_acc"] for r in records if r["preset"] == p and r["task"] == task]
            finite = [a for a in accs if a == a]
            means.append(sum(finite) / len(finite) if finite else 0.0)
        ax.bar([i + j * width for i in range(len(presets))], means, width, label=task)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(presets))], presets, rotation=20)
    ax.set_ylabel("answer accuracy (mean over seeds)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--tasks", nargs="+", default=["copy8", "mqar8"], choices=list(TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=1000, help="(task `default`: the preset's own)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 thread each)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="spec override for every run, key.path=value")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="text file for --tasks text (e.g. a local copy of tinyshakespeare.txt)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--one", nargs=3, metavar=("PRESET", "TASK", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        preset, task, seed = args.one
        print(json.dumps(run_one(preset, task, int(seed), args.steps, args.sets)))
        return

    if "text" in args.tasks:
        if args.corpus is None:
            ap.error("--tasks text needs --corpus FILE")
        os.environ["NESTDSL_CORPUS"] = str(args.corpus.resolve())
    if args.presets == ["all"]:
        args.presets = sorted(p.stem for p in SPECS.glob("*.yaml"))
    grid = [(p, t, s) for p in args.presets for t in args.tasks for s in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(lambda c: _subprocess(*c, args.steps, args.sets), grid))
    print(_table(records), file=sys.stderr)
    steps = "each preset's own" if args.tasks == ["default"] else args.steps
    out = {"benchmark": "learn", "steps": steps, "overrides": args.sets,
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "threads_per_run": 1, "jobs": args.jobs},
           "records": records}
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        png = args.png or args.out.with_suffix(".png")
        if _png(records, png):
            print(f"wrote {args.out} and {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
