"""Map a spec's memory dynamics over a grid of settings with `nestdsl probe` (runtime/probe.py).

The grid is data (benchmarks/grids/*.yaml): a spec, overrides applied to every point (`base`),
then named points (`points`: label → overrides) and/or a factorial `product` (axis → {label:
overrides}), crossed. Every point runs `probe` in its own process on one CPU thread (at most
`--jobs` at a time), at initialisation (`--steps 0`, seconds) or after a short training run.

    python benchmarks/probe_map.py benchmarks/grids/hope-init.yaml --steps 0 \\
        --out benchmarks/results/hope-map-init-cpu-DATE.json

Prints one line per point (layer 0 / layer 1 needle, haystack, verdicts) and writes every record
(all layers, all telemetry) as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def points(grid: dict[str, Any]) -> list[tuple[str, list[str]]]:
    base = list(grid.get("base") or [])
    out = [(label, base + list(sets or [])) for label, sets in (grid.get("points") or {}).items()]
    axes = grid.get("product") or {}
    if axes:
        for combo in itertools.product(*[list(a.items()) for a in axes.values()]):
            label = " ".join(lbl for lbl, _ in combo)
            out.append((label, base + [s for _, sets in combo for s in (sets or [])]))
    return out


def run_point(spec: str, sets: list[str], steps: int, sequences: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "nestdsl", "probe", spec, "--json", "--threads", "1",
           "--steps", str(steps), "--sequences", str(sequences)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    rec: dict[str, Any] = {"overrides": sets, "steps": steps, "seconds": time.perf_counter() - t0}
    if proc.returncode:
        rec["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return rec
    rec.update(json.loads(proc.stdout))
    return rec


def summary(label: str, rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f"{label:<40} ERROR {rec['error']}"
    cells = [f"{lp['needle']:.3g}/{lp['haystack']:.3g} {lp['verdict'][:4]}" for lp in rec["layers"]]
    return f"{label:<40} " + "  ".join(cells)


def plot(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Layer 0's needle vs haystack sensitivity per point, coloured by verdict, with the
    verdict thresholds (runtime/probe.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nestdsl.runtime.probe import CHAOTIC_FROM, DEAD_BELOW

    colour = {"responsive": "tab:green", "chaotic": "tab:red", "dead": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7.5, 6))
    for rec in records:
        if "error" in rec or not rec["layers"]:
            continue
        lp = rec["layers"][0]
        ax.scatter(lp["haystack"], lp["needle"], c=colour[lp["verdict"]], s=22)
        ax.annotate(rec["label"], (lp["haystack"], lp["needle"]), fontsize=6,
                    xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(DEAD_BELOW, color="tab:orange", lw=0.8, ls="--")
    ax.axvline(CHAOTIC_FROM, color="tab:red", lw=0.8, ls="--")
    ax.axhline(CHAOTIC_FROM, color="tab:red", lw=0.8, ls="--")
    ax.plot([1e-4, 3], [1e-4, 3], color="grey", lw=0.5)
    ax.set_xlabel("haystack sensitivity (layer 0, isolated)")
    ax.set_ylabel("needle sensitivity (layer 0, isolated)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="run only these point labels")
    ap.add_argument("--out")
    ap.add_argument("--png", help="draw layer 0's needle vs haystack per point")
    ap.add_argument("--replot", help="only draw --png from this earlier --out JSON")
    args = ap.parse_args()
    if args.replot:
        data = json.loads(Path(args.replot).read_text())
        plot(data["records"], Path(args.png), f"{data['spec']}: {Path(data['grid']).name}, "
             f"steps {data['steps']}")
        return
    grid = yaml.safe_load(Path(args.grid).read_text())
    todo = [(lbl, s) for lbl, s in points(grid) if not args.only or lbl in args.only]
    records: list[dict[str, Any]] = []

    def one(item: tuple[str, list[str]]) -> dict[str, Any]:
        label, sets = item
        rec = {"label": label, **run_point(grid["spec"], sets, args.steps, args.sequences)}
        print(summary(label, rec), file=sys.stderr, flush=True)
        return rec

    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(one, todo))
    text = json.dumps({"benchmark": "probe_map", "grid": args.grid, "spec": grid["spec"],
                       "steps": args.steps, "machine": platform.machine(),
                       "python": platform.python_version(), "records": records}, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.png:
        plot(records, Path(args.png), f"{grid['spec']}: {Path(args.grid).name}, steps {args.steps}")


if __name__ == "__main__":
    main()
