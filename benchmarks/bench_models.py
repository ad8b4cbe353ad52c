"""Benchmark the lowered tiny presets: training throughput, peak memory, compile time.

For every tiny preset (specs/*.yaml with a model section; `--presets` to choose), on this device:

* training tokens/s (forward + backward of `model.loss`), eager and compiled, and their ratio;
* peak resident memory of the process (ru_maxrss; each measurement runs in a fresh subprocess, so
  peaks and compile caches do not leak between presets);
* compile time = first compiled step − a steady compiled step, at two sequence lengths (default
  128 and 512), each in a fresh process with an empty inductor cache (`--warm-cache` reuses the
  on-disk cache: then it measures loading compiled kernels): docs/design.md §6 wants it independent
  of T.

    python benchmarks/bench_models.py --presets transformer deltanet titans-lmm --out bench.json

Writes JSON (one record per preset) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss      # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def measure_one(preset: str, mode: str, seq_len: int, batch: int, steps: int, device: str) -> dict[str, Any]:
    """Runs inside a fresh subprocess: build, one warm-up step (compiles), `steps` timed steps."""
    import torch

    import nestdsl

    torch.manual_seed(0)
    t0 = time.perf_counter()
    system = nestdsl.compile(SPECS / f"{preset}.yaml", device=device, compile=(mode == "compiled"))
    build_s = time.perf_counter() - t0
    model = system.model
    tokens = torch.randint(0, model.vocab, (batch, seq_len), device=device)

    def step() -> float:
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss = model.loss(tokens, tokens)
        loss.backward()
        _sync(device)
        return time.perf_counter() - t

    first = step()
    times = [step() for _ in range(steps)]
    steady = median(times)
    fails = dict(model._compile_config.failures)
    return {
        "preset": preset, "mode": mode, "seq_len": seq_len, "batch": batch, "device": device,
        "params": system.param_count, "build_s": build_s, "first_step_s": first,
        "step_s": steady, "tokens_per_s": batch * seq_len / steady,
        "compile_s": max(first - steady, 0.0) if mode == "compiled" else None,
        "peak_mem_mb": _peak_mb(device), "compile_failures": fails,
    }


def _spawn(preset: str, mode: str, seq_len: int, batch: int, steps: int, device: str,
           threads: int | None, timeout: float, cold: bool = True) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", preset, "--mode", mode, "--seq-len", str(seq_len),
           "--batch", str(batch), "--steps", str(steps), "--device", device]
    env = dict(os.environ)
    if cold:   # a fresh inductor cache: measure compilation, not loading compiled kernels
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="nestdsl-bench-inductor-")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"preset": preset, "mode": mode, "seq_len": seq_len, "error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"preset": preset, "mode": mode, "seq_len": seq_len,
                "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def tiny_presets() -> list[str]:
    from nestdsl.lower.registry import provider_available
    from nestdsl.pipeline import load_spec

    out = []
    for p in sorted(SPECS.glob("*.yaml")):
        spec = load_spec(p)
        if spec.model is None:
            continue
        types = {layer.type for b in spec.blocks.values() for layer in b.layers}
        if all(provider_available(t) for t in types):
            out.append(p.stem)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", help="preset names (default: every tiny preset)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seq-len2", type=int, default=512, help="second length for compile time (0: skip)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the subprocesses")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--warm-cache", action="store_true", help="reuse the on-disk inductor cache")
    ap.add_argument("--timeout", type=float, default=1200.0, help="per measurement, seconds")
    ap.add_argument("--out", type=Path, default=Path("bench_models.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="eager", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:   # child process: one measurement, one JSON line
        print(json.dumps(measure_one(args.one, args.mode, args.seq_len, args.batch, args.steps, args.device)))
        return

    presets = args.presets or tiny_presets()
    records = []
    for name in presets:
        rec: dict[str, Any] = {"preset": name}
        eager = _spawn(name, "eager", args.seq_len, args.batch, args.steps, args.device, args.threads, args.timeout)
        rec["eager"] = eager
        if not args.no_compile:
            comp = _spawn(name, "compiled", args.seq_len, args.batch, args.steps, args.device, args.threads,
                          args.timeout, cold=not args.warm_cache)
            rec["compiled"] = comp
            if "tokens_per_s" in comp and "tokens_per_s" in eager:
                rec["compiled_over_eager"] = comp["tokens_per_s"] / eager["tokens_per_s"]
            if args.seq_len2:
                comp2 = _spawn(name, "compiled", args.seq_len2, args.batch, 1, args.device, args.threads,
                               args.timeout, cold=not args.warm_cache)
                rec["compiled_seq_len2"] = comp2
                rec["compile_s_by_seq_len"] = {str(args.seq_len): comp.get("compile_s"),
                                               str(args.seq_len2): comp2.get("compile_s")}
        records.append(rec)
        _print_row(rec)
        args.out.write_text(json.dumps(_envelope(args, records), indent=2))
    print(f"wrote {args.out}")


def _envelope(args: argparse.Namespace, records: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "cpus": os.cpu_count(),
                        "threads": args.threads or torch.get_num_threads(),
                        "loadavg": os.getloadavg()},
            "settings": {"seq_len": args.seq_len, "seq_len2": args.seq_len2, "batch": args.batch,
                         "steps": args.steps, "device": args.device,
                         "inductor_cache": "warm" if args.warm_cache else "cold"},
            "results": records}


def _fmt(x: Any, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _print_row(rec: dict[str, Any]) -> None:
    e, c = rec.get("eager", {}), rec.get("compiled", {})
    cs = rec.get("compile_s_by_seq_len", {})
    print(f"{rec['preset']:<16} eager {_fmt(e.get('tokens_per_s'), '8.0f')} tok/s  "
          f"compiled {_fmt(c.get('tokens_per_s'), '8.0f')} tok/s  ratio {_fmt(rec.get('compiled_over_eager'), '.2f')}  "
          f"compile {' / '.join(_fmt(v, '.1f') for v in cs.values()) or '—'} s  "
          f"peak {_fmt(e.get('peak_mem_mb'), '.0f')}/{_fmt(c.get('peak_mem_mb'), '.0f')} MB"
          + (f"  error: {e.get('error') or c.get('error')}" if e.get("error") or c.get("error") else ""),
          flush=True)


if __name__ == "__main__":
    main()
