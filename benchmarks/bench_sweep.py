"""Hope's CMS task sweep: step time against the sequence length, uncut vs piecewise.

The uncut sweep differentiates every in-context write through the whole graph since token 0
(O(T²)); the piecewise sweep (nestdsl/lower/sweep.py) cuts it into pieces of lcm(task periods)
tokens (at least `PIECE_TOKENS`; `--piece-tokens` compares lengths) and recomputes them in
backward (O(T)). One forward + backward of hope-tiny, batch 1,
one thread, best of two steps after a warm-up, for each T; each mode in its own process.

    python benchmarks/bench_sweep.py --out benchmarks/results/hope-sweep-cpu-DATE.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(mode: str, lengths: list[int], spec_path: str, piece_tokens: int | None = None
            ) -> dict[str, float]:
    import torch

    import nestdsl
    from nestdsl.lower import sweep
    from nestdsl.pipeline import load_spec

    torch.set_num_threads(1)
    sweep.PIECEWISE_FROM = 10**9 if mode == "uncut" else 1
    if piece_tokens is not None:
        sweep.PIECE_TOKENS = piece_tokens
    out: dict[str, float] = {}
    for T in lengths:
        torch.manual_seed(0)
        model = nestdsl.compile(load_spec(spec_path), compile=False).model
        x, y = torch.randint(0, 256, (1, T)), torch.randint(0, 256, (1, T))
        model.loss(x, y).backward()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            model.loss(x, y).backward()
            times.append(time.perf_counter() - t0)
        out[str(T)] = min(times)
        print(f"{mode:<7} T={T:<5} {out[str(T)]:.3f} s", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "specs" / "hope.yaml"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--piece-tokens", type=int, nargs="+",
                    help="piece lengths to compare (default: the compiler's PIECE_TOKENS)")
    ap.add_argument("--out")
    ap.add_argument("--one", choices=["uncut", "pieces"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        pt = args.piece_tokens[0] if args.piece_tokens else None
        print(json.dumps(measure(args.one, args.lengths, args.spec, pt)))
        return
    runs = [("uncut", None)] + [("pieces", pt) for pt in (args.piece_tokens or [None])]
    seconds: dict[str, dict[str, float]] = {}
    for i in range(0, len(runs), 2):        # two processes at a time (one thread each)
        procs = {}
        for mode, pt in runs[i:i + 2]:
            cmd = [sys.executable, __file__, "--one", mode, "--spec", args.spec, "--lengths",
                   *map(str, args.lengths)] + (["--piece-tokens", str(pt)] if pt else [])
            procs[mode if pt is None else f"{mode}-{pt}"] = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for name, p in procs.items():
            seconds[name] = json.loads(p.communicate()[0].strip().splitlines()[-1])
    ratio = {name: {T: seconds["uncut"][T] / sec[T] for T in sec}
             for name, sec in seconds.items() if name != "uncut"}
    text = json.dumps({"benchmark": "sweep", "spec": args.spec, "seconds": seconds,
                       "uncut_over_pieces": ratio}, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
