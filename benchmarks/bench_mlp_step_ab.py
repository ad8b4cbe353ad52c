"""A/B of the MLP-memory chunk step: a baseline copy of ``nestdsl.ops`` vs the working tree.

Hope-like settings (B=4, H=4, T=512, head dim 16, C=16, hidden 32 or 64, DGD + residual, momentum
and retention per token) and the Titans setting (GD, GELU, hidden 64). Forward+backward through
``memory_scan``, eager and compiled, both versions interleaved in one process, best CPU time of
``--rounds``; also the largest |difference| of outputs and input gradients between the versions.

    mkdir -p /tmp/base/oldops
    for f in $(git ls-files nestdsl/ops); do git show HEAD:$f > /tmp/base/oldops/$(basename $f); done
    PYTHONPATH=. python benchmarks/bench_mlp_step_ab.py --base /tmp/base --rounds 8
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

import torch

B, H, T, D = 4, 4, 512, 16
CONFIGS = [  # name, hidden, rule, residual, activation, read, compile
    ("hope_mem_h64_dgd_after", 64, "dgd", True, "silu", "after", False),
    ("hope_mem_h32_dgd_after", 32, "dgd", True, "silu", "after", False),
    ("hope_proj_h32_gd_chunk", 32, "gd", True, "silu", "chunk", False),
    ("titans_h64_gd_gelu_after", 64, "gd", False, "gelu", "after", False),
    ("titans_h64_gd_gelu_chunk", 64, "gd", False, "gelu", "chunk", False),
    ("hope_mem_h64_dgd_after_compiled", 64, "dgd", True, "silu", "after", True),
    ("hope_mem_h32_dgd_after_compiled", 32, "dgd", True, "silu", "after", True),
    ("hope_proj_h32_gd_chunk_compiled", 32, "gd", True, "silu", "chunk", True),
]


def make_step(ops, q, k, v, kw):
    def step():
        o, st = ops.memory_scan(q, k, v, **kw)
        (o.square().mean() + st.weights[0].square().mean()).backward()
        return o.detach()
    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="folder holding the baseline package 'oldops'")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    sys.path.insert(0, args.base)
    versions = {"old": importlib.import_module("oldops"),
                "new": importlib.import_module("nestdsl.ops")}
    torch.set_num_threads(1)
    out = {}
    for name, hidden, rule, residual, act, read, comp in CONFIGS:
        torch.manual_seed(0)
        q = torch.randn(B, H, T, D, requires_grad=True)
        k = torch.nn.functional.normalize(torch.randn(B, H, T, D), dim=-1).requires_grad_(True)
        v = (0.5 * torch.randn(B, H, T, D)).requires_grad_(True)
        lr = (0.01 + 0.09 * torch.rand(B, H, T)).requires_grad_(True)
        ret = (0.9 + 0.1 * torch.rand(B, H, T)).requires_grad_(True)
        mom = (0.5 + 0.4 * torch.rand(B, H, T)).requires_grad_(True)
        inputs = (q, k, v, lr, ret, mom)
        w0 = versions["new"].MLPMemory(depth=2, hidden=hidden, activation=act,
                                       residual=residual).init_weights(H, D, D)
        steps = {}
        for tag, ops in versions.items():
            spec = ops.MLPMemory(depth=2, hidden=hidden, activation=act, residual=residual)
            ws = tuple(w.clone().requires_grad_(True) for w in w0)
            kw = dict(memory=spec, objective="l2", rule=rule, lr=lr, retention=ret, momentum=mom,
                      chunk_size=16, read=read, state=ops.MemoryState(ws), compile=comp)
            steps[tag] = make_step(ops, q, k, v, kw)
        got = {}
        for tag, step in steps.items():                # results (and compilation) first
            for x in inputs:
                x.grad = None
            o = step()
            got[tag] = [o] + [x.grad.clone() for x in inputs]
        diff = max((a - b).abs().max().item() for a, b in zip(got["old"], got["new"], strict=True))
        times = {tag: [] for tag in steps}
        for _ in range(args.rounds):                   # interleaved
            for tag, step in steps.items():
                c0 = time.process_time()
                step()
                times[tag].append(time.process_time() - c0)
        res = {tag: round(B * T / min(ts), 1) for tag, ts in times.items()}
        res["speedup"] = round(res["new"] / res["old"], 3)
        res["max_abs_diff"] = diff
        out[name] = res
        print(name, res, file=sys.stderr, flush=True)
    print(json.dumps(dict(config=dict(B=B, H=H, T=T, D=D, C=16, threads=1, rounds=args.rounds,
                                      unit="tokens per CPU second, forward+backward"),
                          results=out), indent=1))


if __name__ == "__main__":
    main()
