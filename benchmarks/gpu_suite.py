"""One command for a machine with one H100/H200: kernel correctness on CUDA, then speed.

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu-suite-DATE.json

Needs only torch and triton installed; nestdsl's other dependencies can come from local wheel
files (see the README, "GPU suite"). Sections, each under its own time budget so the whole run
ends in about six minutes:

1. correctness — every kernel against the token-by-token reference on CUDA, outputs, final
   states and gradients, in float32 (tight tolerance) and bf16 inputs (loose): the Triton MLP
   scan (Titans / Hope-style configurations) and, where flash-linear-attention is installed,
   each linear memory that maps onto an fla kernel;
2. models — transformer / titans-lmm / hope at 340M (specs/scale), B = 8, T = 2048, bf16
   autocast: tokens/s, MFU (6·params·tokens/s over the card's dense bf16 peak), peak memory;
   each in a subprocess with a time limit (a model that cannot finish a step says so); then
   one step at B = 16, T = 4096 for the peak memory;
3. ops — fwd+bwd throughput of each linear memory (nestdsl's chunk scan vs fla's kernel) and of
   the Titans MLP memory (torch chunk scan vs the Triton scan, and titans-pytorch's NeuralMemory
   when installed), B = 8, H = 16, T = 2048, D = 64, bf16 inputs.

`--smoke` runs every section on tiny shapes (CPU: the Triton interpreter), to check the suite
itself; tests/ops/test_gpu_suite.py does that in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# dense bf16 peak of the card (datasheet, SXM): MFU's denominator
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

MLP_CASES = {   # Triton-scan configurations checked against the reference
    "titans": dict(residual=True, norm=False, objective="l2clip", rule="gd", read="after",
                   momentum=True, retention=True),
    "hope-mem": dict(residual=True, norm=True, objective="l2clip", rule="dgd", read="after",
                     momentum=True, retention=True),
    "ttt-mlp": dict(residual=True, norm=True, objective="l2", rule="gd", read="after",
                    momentum=False, retention=False),
    "before-dot": dict(residual=False, norm=False, objective="dot", rule="gd", read="before",
                       momentum=False, retention=True),
}
LINEAR_CASES = {   # linear memories fla computes exactly (ops/fla_linear.py)
    "linear-attention": dict(objective="dot", rule="gd", erase="eta", retention=False),
    "gla": dict(objective="dot", rule="gd", erase="eta", retention=True),
    "deltanet": dict(objective="l2", rule="gd", erase="eta", retention=False),
    "gated-deltanet": dict(objective="dot", rule="dgd", erase="retained", retention=True),
}


def _objective(name: str) -> Any:
    from nestdsl.ops.objectives import get_objective, soft_clipped_l2

    return soft_clipped_l2(1.0) if name == "l2clip" else get_objective(name)


def _err(a: Any, b: Any) -> float:
    """max |a − b| / max(1, max |b|)."""
    return float((a.float() - b.float()).abs().max() / max(1.0, float(b.float().abs().max())))


def _compare(run: Any, leaves: list[Any]) -> dict[str, float]:
    """Outputs/states and gradients of `run(impl)` against the reference."""
    import torch

    res = {}
    for impl in ("reference", "x"):
        outs = run(impl)
        gen = torch.Generator(device=outs[0].device).manual_seed(1)
        loss = sum((o.float() * torch.randn(o.shape, generator=gen, device=o.device)).sum()
                   for o in outs)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        res[impl] = (outs, grads)
    (ro, rg), (xo, xg) = res["reference"], res["x"]
    return {"out_err": max(_err(a, b) for a, b in zip(xo, ro, strict=True)),
            "grad_err": max(_err(a, b) for a, b in zip(xg, rg, strict=True)
                            if a is not None and b is not None)}


def correctness(device: str, smoke: bool) -> list[dict[str, Any]]:
    import torch

    from nestdsl.ops import MemoryState, MLPMemory, memory_scan

    dev = torch.device(device)
    B, H, T, D = (1, 2, 32, 16) if smoke else (2, 4, 128, 32)
    rows = []
    for name, c in MLP_CASES.items():
        spec = MLPMemory(depth=2, hidden=2 * D, activation="silu", residual=c["residual"],
                         norm=c["norm"])
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator(device="cpu").manual_seed(0)

            def t(*shape: int, g: Any = g) -> Any:
                return torch.randn(*shape, generator=g)

            q, v = t(B, H, T, D), t(B, H, T, D)
            k = torch.nn.functional.normalize(t(B, H, T, D), dim=-1)
            lr = 0.02 + 0.1 * torch.rand(B, H, T, generator=g)
            ret = 0.9 + 0.1 * torch.rand(B, H, T, generator=g) if c["retention"] else None
            mom = 0.3 + 0.5 * torch.rand(B, H, T, generator=g) if c["momentum"] else None
            ws = list(spec.init_weights(H, D, D, generator=g))
            norm = (1 + 0.2 * t(H, D), 0.2 * t(H, D)) if c["norm"] else None
            xs = [x.to(dev) for x in (q, k, v)]
            xs = [x.to(dtype).requires_grad_() for x in xs]
            gates = [None if x is None else x.to(dev).requires_grad_() for x in (lr, ret, mom)]
            ws = [w.to(dev).requires_grad_() for w in ws]
            nrm = None if norm is None else tuple(p.to(dev).requires_grad_() for p in norm)
            leaves = xs + [x for x in gates if x is not None] + ws + list(nrm or ())

            def run(impl: str, xs: Any = xs, gates: Any = gates, ws: Any = ws, nrm: Any = nrm,
                    c: dict = c, spec: Any = spec) -> list[Any]:
                o, st = memory_scan(*xs, memory=spec, objective=_objective(c["objective"]),
                                    rule=c["rule"], read=c["read"], lr=gates[0],
                                    retention=gates[1], momentum=gates[2], chunk_size=16,
                                    state=MemoryState(tuple(ws)), norm=nrm,
                                    kernel="reference" if impl == "reference" else "triton",
                                    checkpoint_every=2)
                return [o, *st.weights]

            t0 = time.perf_counter()
            try:
                r = _compare(run, leaves)
                tol = 2e-3 if dtype == torch.float32 else 3e-2
                ok = r["out_err"] < tol and r["grad_err"] < tol
                rows.append(dict(kernel="triton", case=name, dtype=str(dtype), **r, tol=tol,
                                 ok=ok, seconds=round(time.perf_counter() - t0, 2)))
            except Exception as e:  # noqa: BLE001 - report and go on
                rows.append(dict(kernel="triton", case=name, dtype=str(dtype), ok=False,
                                 error=f"{type(e).__name__}: {e}"[:300]))
    rows += _fla_correctness(dev, smoke)
    return rows


def _fla_correctness(dev: Any, smoke: bool) -> list[dict[str, Any]]:
    import torch

    from nestdsl.ops import MemoryState, fla_linear, memory_scan

    if not fla_linear.available() or dev.type != "cuda":
        why = "fla not installed" if not fla_linear.available() else "fla needs CUDA"
        return [dict(kernel="fla", skipped=why)]
    rows = []
    B, H, T, D = 2, 4, 128, 64
    for name, c in LINEAR_CASES.items():
        g = torch.Generator().manual_seed(0)
        q = torch.randn(B, H, T, D, generator=g)
        k = torch.nn.functional.normalize(torch.randn(B, H, T, D, generator=g), dim=-1)
        v = torch.randn(B, H, T, D, generator=g)
        lr = 0.1 + 0.8 * torch.rand(B, H, T, generator=g)
        ret = 0.9 + 0.1 * torch.rand(B, H, T, generator=g) if c["retention"] else None
        xs = [x.to(dev).bfloat16().requires_grad_() for x in (q, k, v)]
        gates = [None if x is None else x.to(dev).requires_grad_() for x in (lr, ret)]
        leaves = xs + [x for x in gates if x is not None]

        def run(impl: str, xs: Any = xs, gates: Any = gates, c: dict = c) -> list[Any]:
            o, st = memory_scan(*xs, objective=c["objective"], rule=c["rule"], erase=c["erase"],
                                lr=gates[0], retention=gates[1], chunk_size=1,
                                kernel="reference" if impl == "reference" else "fla",
                                state=MemoryState((torch.zeros(B, H, D, D, device=dev),)))
            return [o, *st.weights]

        try:
            r = _compare(run, leaves)
            rows.append(dict(kernel="fla", case=name, dtype="bf16", **r, tol=3e-2,
                             ok=r["out_err"] < 3e-2 and r["grad_err"] < 3e-2))
        except Exception as e:  # noqa: BLE001
            rows.append(dict(kernel="fla", case=name, ok=False, error=f"{type(e).__name__}: {e}"[:300]))
    return rows


# -- models -------------------------------------------------------------------------------------

def model_child(spec: str, B: int, T: int, steps: int, device: str, kernel: str | None) -> dict:
    import torch

    import nestdsl

    torch.manual_seed(0)
    kernels = {"*": kernel} if kernel else None
    system = nestdsl.compile(ROOT / spec, device=device, compile=False, kernels=kernels)
    model = system.model
    tokens = torch.randint(0, model.vocab, (B, T), device=device)
    dev = torch.device(device)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

    def step() -> float:
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = model.loss(tokens, tokens)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = step()
    times = [step() for _ in range(steps)]
    best = min(times) if times else first
    tps = B * T / best
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    params = system.param_count
    return dict(spec=spec, B=B, T=T, kernel=kernel or "auto", params=params,
                first_step_s=round(first, 3), step_s=round(best, 4), tokens_per_s=round(tps, 1),
                mfu=round(6 * params * tps / peak, 4) if peak else None,
                peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if dev.type == "cuda" else None,
                plan_kernels=sorted({r.kernel for r in system.plan if r.kernel}))


def _spawn(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": ("out of memory: " if "out of memory" in p.stderr else "") + tail[:300]}
    return json.loads(lines[-1])


def models(device: str, smoke: bool, budget: float) -> list[dict[str, Any]]:
    if smoke:
        runs = [("specs/transformer.yaml", 2, 64, 1, None), ("specs/titans-lmm.yaml", 2, 64, 1, None)]
        limit = budget
    else:
        runs = [(f"specs/scale/{p}-340m.yaml", 8, 2048, 3, None)
                for p in ("transformer", "titans-lmm", "hope")]
        runs.append(("specs/scale/titans-lmm-340m.yaml", 8, 2048, 2, "chunked"))
        runs += [(f"specs/scale/{p}-340m.yaml", 16, 4096, 0, None)
                 for p in ("titans-lmm", "hope")]
        limit = budget / len(runs)
    rows = []
    start = time.perf_counter()
    for spec, B, T, steps, kernel in runs:
        left = budget - (time.perf_counter() - start)
        if left < 20:
            rows.append(dict(spec=spec, B=B, T=T, skipped="suite time budget spent"))
            continue
        args = ["--model-child", spec, str(B), str(T), str(steps), device, kernel or ""]
        rows.append({"spec": spec, "B": B, "T": T, "kernel": kernel or "auto",
                     **_spawn(args, min(limit * 1.5, left))})
    base = next((r for r in rows if "transformer" in r["spec"] and "tokens_per_s" in r), None)
    for r in rows:
        if base and "tokens_per_s" in r and r["B"] == base["B"] and r["T"] == base["T"]:
            r["vs_transformer"] = round(r["tokens_per_s"] / base["tokens_per_s"], 4)
    return rows


# -- ops ----------------------------------------------------------------------------------------

def ops(device: str, smoke: bool, budget: float) -> list[dict[str, Any]]:
    import torch

    from nestdsl.ops import MemoryState, MLPMemory, fla_linear, memory_scan

    dev = torch.device(device)
    B, H, T, D = (1, 2, 64, 16) if smoke else (8, 16, 2048, 64)
    reps = 1 if smoke else 3
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()

    def bench(fn: Any) -> float:
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best

    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, T, D, generator=g).to(dev).bfloat16().requires_grad_()
    k = torch.nn.functional.normalize(torch.randn(B, H, T, D, generator=g), dim=-1)
    k = k.to(dev).bfloat16().requires_grad_()
    v = torch.randn(B, H, T, D, generator=g).to(dev).bfloat16().requires_grad_()
    lr = (0.1 + 0.5 * torch.rand(B, H, T, generator=g)).to(dev).requires_grad_()
    ret = (0.9 + 0.1 * torch.rand(B, H, T, generator=g)).to(dev).requires_grad_()
    mom = (0.5 + 0.4 * torch.rand(B, H, T, generator=g)).to(dev).requires_grad_()

    for name, c in LINEAR_CASES.items():
        for impl in ("chunked", "compiled", "fla"):
            if time.perf_counter() - start > budget:
                rows.append(dict(op=name, impl=impl, skipped="suite time budget spent"))
                continue
            if impl == "fla" and (dev.type != "cuda" or not fla_linear.available()):
                rows.append(dict(op=name, impl=impl, skipped="fla needs CUDA and fla installed"))
                continue

            def fn(c: dict = c, impl: str = impl) -> None:
                o, st = memory_scan(q, k, v, objective=c["objective"], rule=c["rule"],
                                    erase=c["erase"], lr=lr, retention=ret if c["retention"]
                                    else None, chunk_size=1, kernel="fla" if impl == "fla"
                                    else "chunked", compile=impl == "compiled")
                o.float().square().mean().backward()

            try:
                s = bench(fn)
                rows.append(dict(op=name, impl=impl, fwd_bwd_s=round(s, 5),
                                 tokens_per_s=round(B * T / s, 1)))
            except Exception as e:  # noqa: BLE001
                rows.append(dict(op=name, impl=impl, error=f"{type(e).__name__}: {e}"[:300]))

    spec = MLPMemory(depth=2, hidden=4 * D, activation="silu", residual=True)
    ws = tuple(w.to(dev).requires_grad_() for w in spec.init_weights(H, D, D))
    for impl in ("chunked", "triton"):
        if time.perf_counter() - start > budget:
            rows.append(dict(op="titans-mlp", impl=impl, skipped="suite time budget spent"))
            continue

        def fn(impl: str = impl) -> None:
            o, st = memory_scan(q, k, v, memory=spec, objective=_objective("l2clip"), lr=lr,
                                retention=ret, momentum=mom, chunk_size=16,
                                state=MemoryState(ws), kernel=impl, checkpoint_every=16)
            o.float().square().mean().backward()

        try:
            s = bench(fn)
            rows.append(dict(op="titans-mlp", impl=impl, fwd_bwd_s=round(s, 5),
                             tokens_per_s=round(B * T / s, 1)))
        except Exception as e:  # noqa: BLE001
            rows.append(dict(op="titans-mlp", impl=impl, error=f"{type(e).__name__}: {e}"[:300]))
    rows.append(_titans_pytorch(dev, B, H, T, D, bench))
    by = {(r["op"], r["impl"]): r.get("tokens_per_s") for r in rows if "op" in r}
    for r in rows:
        base = by.get((r.get("op"), "fla")) or by.get((r.get("op"), "chunked"))
        if r.get("tokens_per_s") and base:
            r["vs_fla_or_chunked"] = round(r["tokens_per_s"] / base, 3)
    return rows


def _titans_pytorch(dev: Any, B: int, H: int, T: int, D: int, bench: Any) -> dict[str, Any]:
    try:
        import torch
        from titans_pytorch import NeuralMemory
    except ImportError:
        return dict(op="titans-mlp", impl="titans-pytorch", skipped="titans-pytorch not installed")
    try:
        mem = NeuralMemory(dim=H * D, chunk_size=16, heads=H).to(dev)
        x = torch.randn(B, T, H * D, device=dev, requires_grad=True)

        def fn() -> None:
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                out, _ = mem(x)
            out.float().square().mean().backward()

        s = bench(fn)
        return dict(op="titans-mlp", impl="titans-pytorch", fwd_bwd_s=round(s, 5),
                    tokens_per_s=round(B * T / s, 1))
    except Exception as e:  # noqa: BLE001
        return dict(op="titans-mlp", impl="titans-pytorch", error=f"{type(e).__name__}: {e}"[:300])


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = dict(python=platform.python_version(), torch=torch.__version__,
                               device=device)
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        from importlib.metadata import version

        env["fla"] = version("fla-core")
    except Exception:  # noqa: BLE001
        env["fla"] = None
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET")
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: check the suite itself")
    ap.add_argument("--sections", nargs="+", default=["correctness", "models", "ops"])
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for the whole suite")
    ap.add_argument("--model-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model_child:
        spec, B, T, steps, device, kernel = args.model_child
        print(json.dumps(model_child(spec, int(B), int(T), int(steps), device, kernel or None)))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is imported
    t0 = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": "gpu_suite", "environment": environment(device),
                           "smoke": args.smoke}
    if "correctness" in args.sections:
        doc["correctness"] = correctness(device, args.smoke)
        doc["all_correct"] = all(r.get("ok", True) for r in doc["correctness"])
    if "models" in args.sections:
        doc["models"] = models(device, args.smoke, budget=0.6 * args.budget)
    if "ops" in args.sections:
        left = max(30.0, args.budget - (time.perf_counter() - t0))
        doc["ops"] = ops(device, args.smoke, budget=left)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
