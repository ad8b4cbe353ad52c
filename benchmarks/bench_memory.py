"""What a training step keeps and launches: saved activation bytes and dispatched kernels.

For each preset (default: transformer, titans-lmm, hope) at a given width / heads / depth and
sequence length T (batch 1), one forward + backward of `model.loss` on random tokens measures

* **kept bytes per token per layer**: the memory the forward pass leaves allocated for backward
  (activations, saved states), divided by T × depth: on CUDA `memory_allocated` after − before
  the forward; on CPU the net of the allocator events torch's profiler records during the
  forward (`profile_memory=True`). This includes what activation checkpointing holds (its saved
  inputs), which saved-tensor hooks do not see.
* **saved bytes per token per layer**: every tensor autograd saves for backward through
  `torch.autograd.graph.saved_tensors_hooks`, counted once per storage, parameters excluded
  (inside a checkpointed region the checkpoint's own hooks take over, so this undercounts it).
  Under `--dtype bf16` the step runs under CPU/CUDA autocast.
* **dispatched kernels**: every aten op that reaches a kernel during forward + backward
  (a `TorchDispatchMode` counter; view / metadata-only ops are counted apart), also per layer and
  per memory chunk (T / C chunks, C = the preset's memory chunk size) for the memory presets;
* wall time of the measured step (a second step, after one warm-up step) and peak memory on CUDA.

    python benchmarks/bench_memory.py --width 1024 --heads 16 --depth 2 --seq 512 2048 \\
        --dtype fp32 bf16 --out benchmarks/results/memory-cpu-DATE.json

Each (preset, T, dtype) runs in a fresh subprocess. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
PRESETS = ["transformer", "titans-lmm", "hope"]


def _is_view(func: Any) -> bool:
    """An op that only makes a view or reads metadata (no kernel does arithmetic)."""
    import torch

    if func in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):
        return True
    schema = func._schema
    return bool(schema.returns) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def _triton_launches() -> int:
    """Triton kernel launches so far (not aten ops: the dispatch counter does not see them)."""
    mod = sys.modules.get("nestdsl.ops.triton_mlp")
    return getattr(mod, "LAUNCHES", 0) if mod is not None else 0


def measure(preset: str, *, width: int, heads: int, depth: int, seq: int, dtype: str,
            device: str, threads: int, checkpoint_every: str, kernel: str = "auto"
            ) -> dict[str, Any]:
    """One (preset, T, dtype) in this process; `kernel` forced for every memory (ops/kernels)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import nestdsl
    from nestdsl.pipeline import load_spec

    torch.set_num_threads(threads)
    spec = load_spec(SPECS / f"{preset}.yaml", overrides=[
        f"model.width={width}", f"model.heads={heads}", f"model.depth={depth}",
        f"data.seq_len={seq}", "data.batch=1"])
    system = nestdsl.compile(spec, device=device, compile=False,
                             kernels=None if kernel == "auto" else {"*": kernel})
    if checkpoint_every != "default":   # the compiler's choice unless asked for another G
        system.model._compile_config.checkpoint_every = (
            None if checkpoint_every == "none" else int(checkpoint_every))
    model = system.model.train()
    chunk = _chunk(system)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, spec.model.vocab, (1, seq + 1), generator=gen).to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
                if dtype == "bf16" else torch.autocast(device_type="cpu", enabled=False))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = model.loss(x, y, None)
        loss.backward()

    step()  # warm-up (lazy init, allocator)
    model.zero_grad(set_to_none=True)
    kept = _kept_bytes(model, x, y, autocast, device)

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params and s.device.type != "meta":
            saved[s.data_ptr()] = max(saved.get(s.data_ptr(), 0), s.nbytes())
        return t

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.kernels = 0
            self.views = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if _is_view(func):
                self.views += 1
            else:
                self.kernels += 1
            return func(*args, **(kwargs or {}))

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = model.loss(x, y, None)        # the forward's saves only (not a recomputation's)
    loss.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    launches = _triton_launches()
    counter, fwd = Count(), 0
    with counter:
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = model.loss(x, y, None)
        fwd = counter.kernels
        loss.backward()
    launches = _triton_launches() - launches
    n_saved = sum(saved.values())
    rec: dict[str, Any] = {
        "preset": preset, "width": width, "heads": heads, "depth": depth, "seq": seq,
        "dtype": dtype, "device": device,
        "checkpoint_every": system.model._compile_config.checkpoint_every, "params": sum(p.numel() for p in model.parameters()),
        "seconds": seconds, "tokens_per_s": seq / seconds,
        "kept_bytes": kept, "kept_kib_per_token_layer": kept / (seq * depth) / 1024,
        "saved_bytes": n_saved, "saved_kib_per_token_layer": n_saved / (seq * depth) / 1024,
        "kernel": kernel, "kernels": counter.kernels, "forward_kernels": fwd,
        "view_ops": counter.views, "triton_launches": launches,
        "kernels_per_layer": counter.kernels / depth, "chunk": chunk,
        "peak_cuda_bytes": peak,
    }
    if chunk:
        rec["kernels_per_chunk_layer"] = counter.kernels / depth / (seq // chunk)
    return rec


def _kept_bytes(model: Any, x: Any, y: Any, autocast: Any, device: str) -> int:
    """Bytes the forward pass leaves allocated (the graph's saved activations and states)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with autocast:
            loss = model.loss(x, y, None)
        torch.cuda.synchronize()
        kept = torch.cuda.memory_allocated() - before
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, autocast:
            loss = model.loss(x, y, None)
        kept = sum(e.self_cpu_memory_usage for e in prof.events())
    loss.backward()          # frees the graph
    model.zero_grad(set_to_none=True)
    return int(kept)


def _chunk(system: Any) -> int | None:
    """The memory chunk size C of the preset (its first parametric memory's level), if any."""
    sizes = [r.chunk_size for r in system.plan
             if r.chunk_size and r.kind.startswith(("memory", "self_modifying"))]
    return int(sizes[0]) if sizes else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--seq", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--dtype", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint-every", default="default",
                    help="memory scans: keep the state every G chunks (an int), 'none', or 'default' "
                         "(the compiler's choice)")
    ap.add_argument("--kernel", default="auto",
                    help="force a memory kernel for every memory (ops/kernels.py: chunked, "
                         "triton, fla, …); on CPU, triton runs in Triton's interpreter")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    ap.add_argument("--out")
    ap.add_argument("--one", nargs=3, metavar=("PRESET", "SEQ", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.kernel == "triton" and args.device == "cpu":
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")   # the children import triton after this
    size = dict(width=args.width, heads=args.heads, depth=args.depth, device=args.device,
                threads=args.threads, checkpoint_every=args.checkpoint_every,
                kernel=args.kernel)
    if args.one:
        preset, seq, dtype = args.one
        print(json.dumps(measure(preset, seq=int(seq), dtype=dtype, **size)))
        return

    records: list[dict[str, Any]] = []
    for preset in args.presets:
        for seq in args.seq:
            for dtype in args.dtype:
                cmd = [sys.executable, __file__, "--one", preset, str(seq), dtype,
                       "--width", str(args.width), "--heads", str(args.heads),
                       "--depth", str(args.depth), "--device", args.device,
                       "--threads", str(args.threads),
                       "--checkpoint-every", args.checkpoint_every, "--kernel", args.kernel]
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                       timeout=args.timeout)
                    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                    rec = json.loads(lines[-1]) if lines else {
                        "preset": preset, "seq": seq, "dtype": dtype, "error": p.stderr[-2000:]}
                except subprocess.TimeoutExpired:
                    rec = {"preset": preset, "seq": seq, "dtype": dtype,
                           "error": f"timed out after {args.timeout:.0f} s"}
                records.append(rec)
                print(_row(rec), file=sys.stderr, flush=True)
    base = {(r["seq"], r["dtype"]): r for r in records
            if r["preset"] == "transformer" and "error" not in r}
    for r in records:
        b = base.get((r["seq"], r["dtype"]))
        if b and "error" not in r:
            r["kept_vs_transformer"] = r["kept_bytes"] / b["kept_bytes"]
            r["saved_vs_transformer"] = r["saved_bytes"] / b["saved_bytes"]
            r["kernels_vs_transformer"] = r["kernels"] / b["kernels"]
    out = {"benchmark": "memory", "machine": {"platform": platform.platform(),
                                              "python": platform.python_version()},
           "args": {k: v for k, v in vars(args).items() if k not in ("one", "out")},
           "records": records}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['preset']:<12} T={r['seq']:<5} {r['dtype']:<4}  error: {r['error'].strip()[-200:]}"
    per_chunk = r.get("kernels_per_chunk_layer")
    pc = f"{per_chunk:8.0f}" if per_chunk else "       —"
    return (f"{r['preset']:<12} T={r['seq']:<5} {r['dtype']:<4} G={r['checkpoint_every']} kept "
            f"{r['kept_kib_per_token_layer']:7.1f} saved {r['saved_kib_per_token_layer']:7.1f} "
            f"KiB/token/layer  kernels {r['kernels']:7d} ({pc}/chunk/layer)  {r['seconds']:7.2f} s")


if __name__ == "__main__":
    main()
