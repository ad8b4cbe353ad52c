"""Benchmark of nestdsl.ops.memory_scan: forward+backward throughput and peak memory.

Prints one JSON document. Each measurement runs in a fresh subprocess so that peak memory
(ru_maxrss on CPU, max_memory_allocated on CUDA) belongs to that measurement alone.

    python benchmarks/bench_ops.py                 # B=4, H=4, D=16, T in {512, 2048, 8192}
    python benchmarks/bench_ops.py --quick         # T in {128, 256}
    python benchmarks/bench_ops.py --T 512 2048    # pick sequence lengths

Impls: "reference" (token loop, skipped above --max-ref-T), "chunked" (eager fast form),
"compiled" (fast form with the torch.compile'd per-chunk step; compile time reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

KINDS = {
    # name: memory_scan configuration (gates are per-token tensors where marked "token")
    "linear_attention": dict(memory="linear", objective="dot", rule="gd", chunk_size=1,
                             gates=dict(lr=1.0)),
    "gated_linear_attention": dict(memory="linear", objective="dot", rule="gd", chunk_size=1,
                                   gates=dict(lr=1.0, retention="token")),
    "deltanet": dict(memory="linear", objective="l2", rule="gd", chunk_size=1,
                     gates=dict(lr="token")),
    "gated_deltanet_dgd": dict(memory="linear", objective="dot", rule="dgd", chunk_size=1,
                               gates=dict(lr="token", retention="token")),
    "ttt_linear_C16": dict(memory="linear", objective="l2", rule="gd", chunk_size=16,
                           gates=dict(lr="token")),
    "titans_mlp_C16": dict(memory="mlp", objective="l2", rule="gd", chunk_size=16,
                           gates=dict(lr="token", retention="token", momentum="token")),
    "hope_mlp_dgd_C16": dict(memory="mlp_res", objective="l2", rule="dgd", chunk_size=16,
                             gates=dict(lr="token", retention="token", momentum="token")),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(kind: str, impl: str, B: int, H: int, T: int, D: int, reps: int, device: str) -> dict:
    import torch

    from nestdsl.ops import MemoryState, MLPMemory, memory_scan

    torch.manual_seed(0)
    cfg = dict(KINDS[kind])
    gates_cfg = cfg.pop("gates")
    dev = torch.device(device)
    q = torch.randn(B, H, T, D, device=dev, requires_grad=True)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, D, device=dev), dim=-1)
    k.requires_grad_(True)
    v = torch.randn(B, H, T, D, device=dev, requires_grad=True)
    gates = {}
    for name, val in gates_cfg.items():
        if val == "token":
            lo, hi = {"lr": (0.05, 0.5), "retention": (0.9, 1.0), "momentum": (0.5, 0.9)}[name]
            val = (lo + (hi - lo) * torch.rand(B, H, T, device=dev)).requires_grad_(True)
        gates[name] = val
    state = None
    if cfg["memory"] in ("mlp", "mlp_res"):
        # Titans-style: 2 layers, expansion 4 (hidden = 4·D per head)
        spec = MLPMemory(depth=2, hidden=4 * D, activation="silu",
                         residual=cfg["memory"] == "mlp_res")
        cfg["memory"] = spec
        state = MemoryState(tuple(w.to(dev).requires_grad_(True)
                                  for w in spec.init_weights(H, D, D)))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        o, st = memory_scan(q, k, v, state=state, kernel="reference" if impl == "reference"
                            else "chunked", compile=impl == "compiled", **gates, **cfg)
        (o.float().square().mean() + st.weights[0].float().square().mean()).backward()

    rss0 = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    sync()
    t0 = time.perf_counter()
    step()                                    # warm-up (includes compilation when compiled)
    sync()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best = min(times)
    out = dict(kind=kind, impl=impl, B=B, H=H, T=T, D=D, device=device,
               fwd_bwd_s=round(best, 5), tokens_per_s=round(B * T / best, 1),
               us_per_token=round(1e6 * best / (B * T), 3))
    if dev.type == "cpu":
        # process CPU time (all threads): robust to other processes on a shared machine
        out["cpu_us_per_token"] = round(1e6 * min(cpu) / (B * T), 3)
    if impl == "compiled":
        out["compile_s"] = round(max(0.0, first - best), 2)
    if dev.type == "cuda":
        out["peak_mem_mb"] = round((torch.cuda.max_memory_allocated() - mem0) / 2**20, 1)
    else:
        out["peak_rss_increase_mb"] = round(_rss_mb() - rss0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--T", type=int, nargs="*")
    p.add_argument("--kinds", nargs="*", default=list(KINDS))
    p.add_argument("--impls", nargs="*", default=["reference", "chunked", "compiled"])
    p.add_argument("--max-ref-T", type=int, default=2048,
                   help="skip the (slow) reference above this T")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in each measurement (default: torch's choice)")
    p.add_argument("--child", nargs=7, metavar=("KIND", "IMPL", "B", "H", "T", "D", "DEVICE"))
    args = p.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        kind, impl, B, H, T, D, device = args.child
        res = child(kind, impl, int(B), int(H), int(T), int(D), args.reps, device)
        print(json.dumps(res))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    Ts = args.T or ([128, 256] if args.quick else [512, 2048, 8192])
    settings = [(4, 4, 16)]                                     # B, H, D per head
    if device == "cuda":
        settings.append((8, 8, 64))                             # a larger setting on GPU
    results = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for B, H, D in settings:
        for kind in args.kinds:
            for T in Ts:
                # the Titans comparison config is specified at T = 512 (model width 64, 4 heads)
                for impl in args.impls:
                    if impl == "reference" and T > args.max_ref_T:
                        continue
                    cmd = [sys.executable, os.path.abspath(__file__), "--reps", str(args.reps),
                           *(["--threads", str(args.threads)] if args.threads else []),
                           "--child", kind, impl, str(B), str(H), str(T), str(D), device]
                    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if r.returncode != 0:
                        results.append(dict(kind=kind, impl=impl, T=T, B=B, H=H, D=D,
                                            error=r.stderr.strip().splitlines()[-1:]))
                    else:
                        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    # speed-ups relative to the reference at the same (kind, T, B, H, D)
    ref = {(r["kind"], r["T"], r["B"], r["H"], r["D"]): r.get("tokens_per_s")
           for r in results if r.get("impl") == "reference" and "error" not in r}
    for r in results:
        base = ref.get((r["kind"], r["T"], r["B"], r["H"], r["D"]))
        if base and "tokens_per_s" in r:
            r["speedup_vs_reference"] = round(r["tokens_per_s"] / base, 2)
    info = dict(torch=torch.__version__, device=device,
                threads=args.threads or torch.get_num_threads(),
                cuda=torch.cuda.get_device_name() if device == "cuda" else None)
    print(json.dumps(dict(info=info, results=results), indent=1))


if __name__ == "__main__":
    main()
