"""Deep-optimizer experiments (issue 6): toy landscape, gradient-noise robustness, cost.

    python benchmarks/bench_optim.py {toy,noise,cost,all} --out runs/optim [--quick] [--text F]
    python benchmarks/bench_optim.py noise --model preset --text F --out runs/optim

Each experiment prints one JSON document on stdout and writes `<name>.md` (a table) and
`<name>.png` into --out. Everything runs on CPU in a few minutes with --quick.

`noise --model preset` runs the noise experiment on the real tiny transformer preset
(`nestdsl.compile(load_spec("specs/transformer.yaml"))`, eager) as a byte-level LM on the text
file `--text` (any path; synthetic Zipfian text by default): a full grid of optimizer x lr x
noise level x seed, written to `noise-lm.{md,json,png}` (the JSON after every run, so an
interrupted sweep keeps what it finished).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from nestdsl.optim import build, register_dgd_hooks  # noqa: E402
from nestdsl.spec import ir  # noqa: E402

# ---------------------------------------------------------------------------------------------
# 1. Toy: psi(r, theta) = r^2 + k (r - theta + a sin(w r))^2  (arXiv Fig. 4)

TOY_K, TOY_A, TOY_W = 5.0, 1.0, 3.0  # not given in the paper; chosen to give a curved valley
TOY_START = (-3.5, 2.0)


def psi(r: Tensor, th: Tensor) -> Tensor:
    return r**2 + TOY_K * (r - th + TOY_A * torch.sin(TOY_W * r)) ** 2


def toy(out: Path, quick: bool) -> dict[str, Any]:
    steps = 300
    # lr / eta_m from a small sweep (lr in {0.002..0.03}, eta_m per normalisation): momentum
    # is best at lr 0.015 and diverges at 0.02; Delta momentum's gradient-dependent decay
    # keeps lr 0.02 stable.
    runs = {
        "momentum lr=.015": (ir.optimizer(type="momentum", lr=0.015, beta=0.9), "vector"),
        "momentum lr=.02": (ir.optimizer(type="momentum", lr=0.02, beta=0.9), "vector"),
        "delta 1x2 none eta_m=5e-4 lr=.015": (
            ir.optimizer(type="delta_momentum", lr=0.015, momentum_lr=5e-4, normalize="none"),
            "matrix",
        ),
        "delta 1x2 global eta_m=.2 lr=.02": (
            ir.optimizer(type="delta_momentum", lr=0.02, momentum_lr=0.2, normalize="global"),
            "matrix",
        ),
        "delta elementwise none eta_m=5e-4 lr=.02": (
            ir.optimizer(type="delta_momentum", lr=0.02, momentum_lr=5e-4, normalize="none"),
            "vector",
        ),
    }
    result: dict[str, Any] = {
        "constants": {"k": TOY_K, "a": TOY_A, "omega": TOY_W, "start": TOY_START, "steps": steps},
        "runs": {},
    }
    traj: dict[str, list[tuple[float, float]]] = {}
    curves: dict[str, list[float]] = {}
    for name, (spec, shape) in runs.items():
        p = (
            torch.tensor([TOY_START], dtype=torch.float32)
            if shape == "matrix"
            else torch.tensor(TOY_START)
        )
        p.requires_grad_(True)
        opt = build(spec, [p])
        path, losses = [], []
        for _ in range(steps):
            flat = p.reshape(-1)
            loss = psi(flat[0], flat[1])
            path.append((flat[0].item(), flat[1].item()))
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
        traj[name], curves[name] = path, losses
        first_below = next((i for i, v in enumerate(losses) if v < 1e-2), None)
        result["runs"][name] = {
            "spec": spec.model_dump(exclude={"groups"}),
            "final_loss": losses[-1],
            "min_loss": min(losses),
            "steps_to_1e-2": first_below,
        }
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    rr, tt = torch.meshgrid(torch.linspace(-4, 1.5, 200), torch.linspace(-6, 3, 200), indexing="ij")
    ax1.contour(rr.numpy(), tt.numpy(), psi(rr, tt).log1p().numpy(), levels=30, cmap="Greys")
    for name, path in traj.items():
        xs, ys = zip(*path, strict=True)
        ax1.plot(xs, ys, lw=1.2, label=name)
    ax1.plot(*TOY_START, "ko")
    ax1.set(xlim=(-4, 1.5), ylim=(-6, 3))
    ax1.set(xlabel="r", ylabel="theta", title=f"psi, k={TOY_K}, a={TOY_A}, w={TOY_W}")
    ax1.legend(fontsize=7)
    for name, c in curves.items():
        ax2.semilogy([min(v, 1e4) for v in c], label=name)
    ax2.set(xlabel="step", ylabel="psi", title="loss")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "toy.png", dpi=120)
    plt.close(fig)
    rows = [
        f"| {n} | {r['final_loss']:.3g} | {r['min_loss']:.3g} | {r['steps_to_1e-2']} |"
        for n, r in result["runs"].items()
    ]
    (out / "toy.md").write_text(
        "| optimizer | final psi | min psi | steps to psi<1e-2 |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    return result


# ---------------------------------------------------------------------------------------------
# 2. Gradient-noise robustness

NOISE_LEVELS = [0.0, 0.1, 0.3, 1.0]
AUX = [ir.param_group(params="vectors", type="adamw"), ir.param_group(params="embeddings", type="adamw")]


def noise_specs(
    lrs: dict[str, float], aux: bool, aux_lr: float | None = None
) -> dict[str, ir.Optimizer]:
    """The compared optimizers. `aux`: vectors and embeddings go to AdamW (the Muon recipe),
    at `aux_lr` (None: the optimizer's own lr)."""
    groups = [g.model_copy(update={"lr": aux_lr}) for g in AUX] if aux else []
    return {
        "momentum": ir.optimizer(type="momentum", lr=lrs["momentum"], beta=0.9, groups=groups),
        "adamw": ir.optimizer(type="adamw", lr=lrs["adamw"], beta=0.9, beta2=0.999),
        "delta_momentum": ir.optimizer(
            type="delta_momentum",
            lr=lrs["delta_momentum"],
            beta=0.9,
            momentum_lr=0.5,
            groups=groups,
        ),
        "dmgd": ir.optimizer(type="dmgd", lr=lrs["dmgd"], beta=0.9, momentum_lr=0.1, groups=groups),
        "muon": ir.optimizer(type="muon", lr=lrs["muon"], beta=0.95, groups=groups),
        "m3": ir.optimizer(
            type="m3",
            lr=lrs["m3"],
            beta=0.9,
            beta2=0.999,
            slow_every=8,
            beta_slow=0.9,
            alpha=0.5,
            groups=groups,
        ),
    }


def add_grad_noise(model: nn.Module, level: float, gen: torch.Generator) -> None:
    """g <- g + level * ||g|| * n / sqrt(numel), n ~ N(0, I): noise norm ~ level * ||g||."""
    if level == 0:
        return
    for p in model.parameters():
        if p.grad is not None:
            n = torch.randn(p.grad.shape, generator=gen)
            p.grad.add_(n * (level * p.grad.norm() / math.sqrt(p.grad.numel())))


def regression_task(
    seed: int,
) -> tuple[Callable[[], nn.Module], Callable[[nn.Module], Tensor], Callable[[nn.Module], float]]:
    gen = torch.Generator().manual_seed(100 + seed)
    X = torch.randn(512, 32, generator=gen)
    W = torch.randn(16, 32, generator=gen) / math.sqrt(32)
    Y = X @ W.T + 0.05 * torch.randn(512, 16, generator=gen)

    def make() -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 16))

    def loss(m: nn.Module) -> Tensor:
        return F.mse_loss(m(X), Y)

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return loss(m).item()

    return make, loss, evaluate


def synthetic_text(n: int, seed: int = 0) -> bytes:
    """Zipfian pseudo-words with a bigram structure: learnable but not trivial."""
    g = torch.Generator().manual_seed(seed)
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    words = [
        "".join(
            letters[int(i)]
            for i in torch.randint(
                0, 26, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g
            )
        )
        for _ in range(300)
    ]
    zipf = 1.0 / torch.arange(1, 301, dtype=torch.float64)
    nxt = torch.randint(0, 300, (300, 4), generator=g)  # each word prefers 4 successors
    out, w, size = [], 0, 0
    while size < n:
        if torch.rand(1, generator=g).item() < 0.7:
            w = int(nxt[w, int(torch.randint(0, 4, (1,), generator=g))])
        else:
            w = int(torch.multinomial(zipf, 1, generator=g))
        out.append(words[w])
        size += len(words[w]) + 1
    return " ".join(out).encode()[:n]


class CharMLP(nn.Module):
    """Byte-level LM: embed the last `ctx` bytes, 2-layer MLP, logits (a stand-in for the
    tiny transformer preset until the model lowering lands)."""

    def __init__(self, ctx: int = 8, width: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.fc1 = nn.Linear(ctx * width, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.lm_head = nn.Linear(hidden, 256)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x).flatten(1)
        return self.lm_head(F.gelu(self.fc2(F.gelu(self.fc1(h)))))


def lm_task(seed: int, text: bytes, ctx: int = 8, batch: int = 128):  # type: ignore[no-untyped-def]
    data = torch.tensor(list(text), dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    gen = torch.Generator().manual_seed(200 + seed)
    val_idx = torch.arange(0, len(val) - ctx - 1, max(1, (len(val) - ctx - 1) // 2048))

    def windows(src: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.stack([src[i : i + ctx] for i in idx.tolist()])
        return x, src[idx + ctx]

    Xv, Yv = windows(val, val_idx)

    def make() -> nn.Module:
        torch.manual_seed(seed)
        return CharMLP(ctx)

    def loss(m: nn.Module) -> Tensor:
        idx = torch.randint(0, len(train) - ctx - 1, (batch,), generator=gen)
        x, y = windows(train, idx)
        return F.cross_entropy(m(x), y)

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return F.cross_entropy(m(Xv), Yv).item()

    return make, loss, evaluate


def run_one(task: Any, spec: ir.Optimizer, level: float, steps: int, seed: int) -> float:
    make, loss_fn, evaluate = task
    model = make()
    opt = build(spec, model.named_parameters())
    register_dgd_hooks(model, opt)
    gen = torch.Generator().manual_seed(300 + seed)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model).backward()
        add_grad_noise(model, level, gen)
        opt.step()
    v = evaluate(model)
    return v if math.isfinite(v) else float("inf")


def tune_lr(
    task: Any, name: str, grid: list[float], steps: int, aux: bool, quick_grid: bool = False
) -> float:
    """Best lr at the reference noise level 0.1 (one seed)."""
    scores = {}
    for lr in grid[1:] if quick_grid else grid:
        spec = noise_specs(
            dict.fromkeys(["momentum", "adamw", "delta_momentum", "dmgd", "muon", "m3"], lr), aux
        )[name]
        scores[lr] = run_one(task, spec, 0.1, steps, seed=0)
    return min(scores, key=lambda k: scores[k])


LR_GRIDS = {
    "momentum": [0.003, 0.01, 0.03, 0.1],
    "adamw": [1e-3, 3e-3, 1e-2, 3e-2],
    "delta_momentum": [0.003, 0.01, 0.03, 0.1],
    "dmgd": [0.01, 0.03, 0.1, 0.3],
    "muon": [0.003, 0.01, 0.03, 0.1],
    "m3": [1e-4, 3e-4, 1e-3, 3e-3],
}


def noise(out: Path, quick: bool, text_path: str | None) -> dict[str, Any]:
    seeds = [0] if quick else [0, 1, 2]
    text = Path(text_path).read_bytes() if text_path else synthetic_text(200_000)
    tasks = {
        "regression": (lambda s: regression_task(s), 200 if quick else 500, False),
        "char_lm": (
            lambda s: lm_task(s, text, batch=64 if quick else 128),
            100 if quick else 400,
            True,
        ),
    }
    result: dict[str, Any] = {"noise_levels": NOISE_LEVELS, "seeds": seeds, "tasks": {}}
    fig, axes = plt.subplots(1, len(tasks), figsize=(11, 4.2))
    md = []
    for ax, (tname, (mk, steps, aux)) in zip(axes, tasks.items(), strict=True):
        lrs = {n: tune_lr(mk(0), n, grid, steps, aux, quick) for n, grid in LR_GRIDS.items()}
        print(f"[noise] {tname}: tuned lrs {lrs}", file=sys.stderr, flush=True)
        specs = noise_specs(lrs, aux)
        table: dict[str, list[float]] = {}
        for name, spec in specs.items():
            table[name] = [
                statistics.mean(run_one(mk(s), spec, lvl, steps, s) for s in seeds)
                for lvl in NOISE_LEVELS
            ]
            ax.plot(NOISE_LEVELS, table[name], marker="o", label=f"{name} (lr {lrs[name]:g})")
        ax.set(
            xlabel="noise level (x ||g||)",
            ylabel="final eval loss",
            title=f"{tname} ({steps} steps)",
        )
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        result["tasks"][tname] = {
            "steps": steps,
            "lr": lrs,
            "final_loss": table,
            "aux_adamw_for_vectors_embeddings": aux,
        }
        md.append(
            f"### {tname} ({steps} steps, mean of {len(seeds)} seeds; lr tuned at noise 0.1)\n"
        )
        md.append("| optimizer | lr | " + " | ".join(f"noise {lv}" for lv in NOISE_LEVELS) + " |")
        md.append("|---|---|" + "---|" * len(NOISE_LEVELS))
        for name, vals in table.items():
            md.append(f"| {name} | {lrs[name]:g} | " + " | ".join(f"{v:.4g}" for v in vals) + " |")
        md.append("")
    fig.tight_layout()
    fig.savefig(out / "noise.png", dpi=120)
    plt.close(fig)
    (out / "noise.md").write_text("\n".join(md) + "\n")
    return result


# ---------------------------------------------------------------------------------------------
# 2b. Gradient-noise robustness on the tiny transformer preset (byte-level LM on a text file)

PRESET_SPEC = Path(__file__).resolve().parents[1] / "specs" / "transformer.yaml"
PRESET_AUX_LR = 3e-3  # AdamW for embeddings and vectors, as in specs/optim/muon.yaml
# 3 values centred on a one-seed, noise-0, 150-step pilot on tinyshakespeare over wider grids
# (benchmarks/results/optim/noise-lm-pilot.json), then extended/shifted while the full sweep's
# best sat at an edge (momentum, dmgd, dgd: lower; adamw, muon, m3 at noise 1: higher). dgd (no
# momentum; its forward hooks capture each nn.Linear's inputs) is compared on the preset only
# (runs at lrs dropped from the grids are listed at the end of noise-lm.md).
PRESET_LR_GRIDS = {
    "adamw": [1e-3, 3e-3, 1e-2, 3e-2],
    "momentum": [0.001, 0.003, 0.01, 0.03],
    "delta_momentum": [0.1, 0.3, 0.6],
    "dmgd": [0.001, 0.003, 0.01, 0.03],
    "muon": [0.01, 0.03, 0.1, 0.3],
    "m3": [1e-5, 3e-5, 1e-4, 3e-4],
    "dgd": [0.001, 0.003, 0.01, 0.03],
}


def preset_spec(name: str, lr: float) -> ir.Optimizer:
    """The optimizer `name` at `lr`, embeddings and vectors to AdamW at PRESET_AUX_LR."""
    if name == "dgd":
        groups = [g.model_copy(update={"lr": PRESET_AUX_LR}) for g in AUX]
        return ir.optimizer(type="dgd", lr=lr, groups=groups)
    return noise_specs(dict.fromkeys(LR_GRIDS, lr), True, PRESET_AUX_LR)[name]


class PresetLM:
    """The transformer preset as a byte-level LM: random training windows (a pure function of
    the seed), a fixed validation set from the last 10% of the text."""

    def __init__(
        self, text: bytes, spec_path: Path, seq_len: int, batch: int, depth: int | None,
        val_windows: int = 32,
    ) -> None:  # fmt: skip
        from nestdsl.pipeline import load_spec

        overrides = [f"data.seq_len={seq_len}", f"data.batch={batch}"]
        if depth is not None:
            overrides.append(f"model.depth={depth}")
        self.spec = load_spec(spec_path, overrides=overrides)
        self.vocab = self.spec.model.vocab
        self.seq_len, self.batch = seq_len, batch
        data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
        if int(data.max()) >= self.vocab:
            raise SystemExit(f"the text has byte values >= model.vocab = {self.vocab}")
        split = int(0.9 * len(data))
        self.train, val = data[:split], data[split:]
        if len(val) < seq_len + 2 or len(self.train) < seq_len + 2:
            raise SystemExit(f"the text is too short for seq_len {seq_len}")
        starts = torch.linspace(0, len(val) - seq_len - 1, val_windows).long()
        self.val = torch.stack([val[i : i + seq_len + 1] for i in starts.tolist()])

    def model(self, seed: int) -> nn.Module:
        import nestdsl

        torch.manual_seed(seed)
        return nestdsl.compile(self.spec, compile=False).model

    def sampler(self, seed: int) -> Callable[[], Tensor]:
        gen = torch.Generator().manual_seed(200 + seed)
        offs = torch.arange(self.seq_len + 1)

        def sample() -> Tensor:
            idx = torch.randint(0, len(self.train) - self.seq_len - 1, (self.batch,), generator=gen)
            return self.train[idx[:, None] + offs]

        return sample

    def evaluate(self, model: nn.Module) -> float:
        with torch.no_grad():
            losses = [
                model.loss(w[:, :-1], w[:, 1:], None).item() for w in self.val.split(self.batch)
            ]
        v = statistics.mean(losses)
        return v if math.isfinite(v) else float("inf")


def run_preset(task: PresetLM, spec: ir.Optimizer, level: float, steps: int, seed: int) -> float:
    """Final validation loss (nats/byte) of one run; inf if it diverged (stopped early)."""
    model = task.model(seed)
    opt = build(spec, model.named_parameters())
    register_dgd_hooks(model, opt)
    sample = task.sampler(seed)
    gen = torch.Generator().manual_seed(300 + seed)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        w = sample()
        loss = model.loss(w[:, :-1], w[:, 1:], None)
        if step % 25 == 0 and not math.isfinite(loss.item()):
            return float("inf")
        loss.backward()
        add_grad_noise(model, level, gen)
        opt.step()
    return task.evaluate(model)


def noise_preset(
    out: Path,
    quick: bool,
    text_path: str | None,
    *,
    steps: int,
    seq_len: int,
    batch: int,
    depth: int | None,
    seeds: list[int],
    levels: list[float],
    only: list[str] | None,
    reuse: bool = False,
) -> dict[str, Any]:
    text = Path(text_path).read_bytes() if text_path else synthetic_text(400_000)
    task = PresetLM(text, PRESET_SPEC, seq_len, batch, depth)
    grids = {k: v for k, v in PRESET_LR_GRIDS.items() if not only or k in only}
    if quick:
        grids = {k: v[1:2] for k, v in grids.items()}
    result: dict[str, Any] = {
        "model": f"{PRESET_SPEC.name} (depth {task.spec.model.depth}, width "
        f"{task.spec.model.width}, eager)",
        "text": Path(text_path).name if text_path else "synthetic (400 kB Zipfian bigram words)",
        "text_bytes": len(text),
        "steps": steps,
        "seq_len": seq_len,
        "batch": batch,
        "seeds": seeds,
        "noise_levels": levels,
        "aux": f"embeddings and vectors -> AdamW lr {PRESET_AUX_LR} (all but adamw)",
        "threads": torch.get_num_threads(),
        "lr_grid": grids,
        "runs": [],
    }
    json_path = out / "noise-lm.json"
    # --reuse: runs of an earlier sweep with the same settings (deterministic on CPU) are kept
    previous: dict[tuple[str, float, float, int], dict[str, Any]] = {}
    same = ("model", "text", "text_bytes", "steps", "seq_len", "batch", "aux")
    if reuse and json_path.is_file():
        old_result = json.loads(json_path.read_text())
        if all(old_result.get(k) == result[k] for k in same):
            for r in old_result.get("runs", []):
                previous[(r["optimizer"], r["lr"], r["noise"], r["seed"])] = r
        print(f"[noise-lm] reusing {len(previous)} runs of {json_path}", file=sys.stderr)
    total = sum(len(v) for v in grids.values()) * len(levels) * len(seeds)
    t0, done = time.perf_counter(), 0
    grid: dict[str, dict[float, dict[float, list[float]]]] = {}
    for name, lrs in grids.items():
        for lr in lrs:
            spec = preset_spec(name, lr)
            for level in levels:
                vals = []
                for seed in seeds:
                    t1 = time.perf_counter()
                    key = (name, lr, level, seed)
                    old = previous.get(key)
                    v = (
                        old["val_loss"]
                        if old is not None
                        else run_preset(task, spec, level, steps, seed)
                    )
                    v = float("inf") if v is None else v
                    vals.append(v)
                    done += 1
                    result["runs"].append(
                        old if old is not None else
                        {"optimizer": name, "lr": lr, "noise": level, "seed": seed,
                         "val_loss": v if math.isfinite(v) else None,
                         "seconds": round(time.perf_counter() - t1, 2)}
                    )  # fmt: skip
                    print(
                        f"[noise-lm] {done}/{total} {name} lr={lr:g} noise={level:g} "
                        f"seed={seed}: {v:.4f} ({time.perf_counter() - t0:.0f}s)"
                        + (" (reused)" if old is not None else ""),
                        file=sys.stderr, flush=True,
                    )  # fmt: skip
                    json_path.write_text(json.dumps(result, indent=2))
                grid.setdefault(name, {}).setdefault(lr, {})[level] = vals

    def mean(vals: list[float]) -> float:
        return statistics.mean(vals) if all(math.isfinite(v) for v in vals) else float("inf")

    # best lr per (optimizer, noise level), and the lr tuned without noise kept under noise
    best: dict[str, dict[str, Any]] = {}
    for name, by_lr in grid.items():
        per_level = {}
        for level in levels:
            lr = min(by_lr, key=lambda r: mean(by_lr[r][level]))
            per_level[level] = {"lr": lr, "mean": mean(by_lr[lr][level]), "seeds": by_lr[lr][level]}
        lr0 = per_level[levels[0]]["lr"]
        best[name] = {
            "best_per_level": per_level,
            "lr_clean": lr0,
            "at_lr_clean": {lv: mean(by_lr[lr0][lv]) for lv in levels},
        }
    result["best"] = {
        n: {
            "best_per_level": {str(lv): b for lv, b in r["best_per_level"].items()},
            "lr_clean": r["lr_clean"],
            "at_lr_clean": {str(lv): v for lv, v in r["at_lr_clean"].items()},
        }
        for n, r in best.items()
    }
    result["seconds_this_invocation"] = round(time.perf_counter() - t0, 1)
    result["seconds_all_runs"] = round(sum(r["seconds"] for r in result["runs"]), 1)
    # runs of an earlier sweep at lrs no longer in the grids (kept for the record)
    in_grid = {(r["optimizer"], r["lr"], r["noise"], r["seed"]) for r in result["runs"]}
    off_grid = [r for k, r in previous.items() if k not in in_grid]
    if off_grid:
        result["runs_off_grid"] = off_grid
    json_path.write_text(json.dumps(result, indent=2))

    def edge(name: str, lr: float) -> str:
        g = grids[name]
        return "*" if len(g) > 1 and lr in (g[0], g[-1]) else ""

    def fmt(v: float) -> str:
        return f"{v:.3f}" if math.isfinite(v) else "div."

    ns = len(seeds)
    md = [
        f"### Tiny transformer preset, byte-level LM ({result['text']})",
        "",
        f"{result['model']}; {steps} steps, seq_len {seq_len}, batch {batch}; final validation "
        f"loss (nats/byte, {task.val.shape[0]} fixed windows), mean of {ns} seeds; noise = "
        "g + level * ||g|| * N(0, I)/sqrt(n) per tensor. Embeddings and vectors -> AdamW "
        f"(lr {PRESET_AUX_LR:g}) for every optimizer but adamw. lr grids: "
        + "; ".join(f"{n} {', '.join(f'{x:g}' for x in g)}" for n, g in grids.items())
        + ".",
        "",
        "**Best lr of the grid at each noise level** (mean loss (lr); * = lr at a grid edge)",
        "",
        "| optimizer | " + " | ".join(f"noise {lv:g}" for lv in levels) + " | loss(noise "
        f"{levels[-1]:g}) - loss(noise {levels[0]:g}) |",
        "|---|" + "---|" * len(levels) + "---|",
    ]
    for name, r in best.items():
        cells = [
            f"{fmt(b['mean'])} ({b['lr']:g}{edge(name, b['lr'])})"
            for b in r["best_per_level"].values()
        ]
        d = r["best_per_level"][levels[-1]]["mean"] - r["best_per_level"][levels[0]]["mean"]
        md.append(f"| {name} | " + " | ".join(cells) + f" | {d:+.3f} |")
    md += [
        "",
        f"**lr tuned at noise {levels[0]:g}, kept under noise** (mean loss; per-seed spread in "
        "the JSON)",
        "",
        "| optimizer | lr | " + " | ".join(f"noise {lv:g}" for lv in levels) + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for name, r in best.items():
        md.append(
            f"| {name} | {r['lr_clean']:g}{edge(name, r['lr_clean'])} | "
            + " | ".join(fmt(v) for v in r["at_lr_clean"].values())
            + " |"
        )
    md += [
        "",
        "**Full grid** (mean loss over seeds; rows: optimizer, lr)",
        "",
        "| optimizer | lr | " + " | ".join(f"noise {lv:g}" for lv in levels) + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for name, by_lr in grid.items():
        for lr, by_level in by_lr.items():
            md.append(
                f"| {name} | {lr:g} | "
                + " | ".join(fmt(mean(by_level[lv])) for lv in levels)
                + " |"
            )
    if off_grid:
        cells: dict[tuple[str, float], dict[float, list[float]]] = {}
        for r in off_grid:
            v = r["val_loss"] if r["val_loss"] is not None else float("inf")
            cells.setdefault((r["optimizer"], r["lr"]), {}).setdefault(r["noise"], []).append(v)
        md += ["", "Runs of earlier grids (not in the tables above):", ""]
        for (name, lr), by_level in cells.items():
            vals = ", ".join(f"noise {lv:g}: {fmt(mean(v))}" for lv, v in sorted(by_level.items()))
            md.append(f"- {name} lr {lr:g}: {vals}")
    md += [
        "",
        f"{len(result['runs'])} runs, {result['seconds_all_runs']:.0f} s of compute "
        f"({result['threads']} thread).",
    ]
    (out / "noise-lm.md").write_text("\n".join(md) + "\n")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, r in best.items():
        ys = [b["mean"] for b in r["best_per_level"].values()]
        ax.plot(levels, ys, marker="o", label=name)
    ax.set(
        xlabel="noise level (x ||g||)",
        ylabel="final val loss (nats/byte), best lr",
        title=f"transformer preset, {steps} steps",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "noise-lm.png", dpi=120)
    plt.close(fig)
    return result


# ---------------------------------------------------------------------------------------------
# 3. Cost: step time and state memory relative to AdamW


def state_bytes(opt: torch.optim.Optimizer) -> int:
    children = getattr(opt, "optimizers", [opt])
    total = 0
    for o in children:
        for st in o.state.values():
            for v in st.values():
                if isinstance(v, Tensor):
                    total += v.numel() * v.element_size()
    return total


def cost(out: Path, quick: bool) -> dict[str, Any]:
    sizes = {"1M": 512, "4M": 1024} if quick else {"1M": 512, "4M": 1024, "16M": 2048}
    kinds = [
        "adamw",
        "sgd",
        "momentum",
        "precond_momentum",
        "delta_momentum",
        "muon",
        "m3",
        "dmgd",
        "dgd",
    ]
    reps = 3 if quick else 5
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "sizes": {}}
    md = [
        "| size | optimizer | step ms | x AdamW time | state MiB | x AdamW state |",
        "|---|---|---|---|---|---|",
    ]
    for label, width in sizes.items():
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(4)])
        nparams = sum(p.numel() for p in model.parameters())
        x = torch.randn(64, width)
        rows: dict[str, dict[str, float]] = {}
        for kind in kinds:
            if kind == "dmgd" and width > 1024 and quick:
                continue
            opt = build(ir.optimizer(type=kind, lr=1e-4), model.named_parameters())
            register_dgd_hooks(model, opt)
            times = []
            n_rep = 2 if kind == "dmgd" and width >= 2048 else reps
            for i in range(n_rep + 1):
                opt.zero_grad()
                model(x).square().mean().backward()
                t0 = time.perf_counter()
                opt.step()
                if i:  # the first step allocates state
                    times.append(time.perf_counter() - t0)
            rows[kind] = {
                "step_ms": 1e3 * statistics.median(times),
                "state_bytes": state_bytes(opt),
            }
            for m in model.modules():  # drop DGD hooks
                m._forward_hooks.clear()
        base = rows["adamw"]
        for kind, r in rows.items():
            r["time_x_adamw"] = r["step_ms"] / base["step_ms"]
            r["state_x_adamw"] = r["state_bytes"] / base["state_bytes"]
            md.append(
                f"| {label} ({nparams / 1e6:.1f}M) | {kind} | {r['step_ms']:.1f} | {r['time_x_adamw']:.2f} | "
                f"{r['state_bytes'] / 2**20:.1f} | {r['state_x_adamw']:.2f} |"
            )
        result["sizes"][label] = {"params": nparams, "optimizers": rows}
    (out / "cost.md").write_text("\n".join(md) + "\n")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = list(result["sizes"])
    for kind in kinds:
        ys_t = [
            result["sizes"][s]["optimizers"].get(kind, {}).get("time_x_adamw", float("nan"))
            for s in labels
        ]
        ys_m = [
            result["sizes"][s]["optimizers"].get(kind, {}).get("state_x_adamw", float("nan"))
            for s in labels
        ]
        a1.plot(labels, ys_t, marker="o", label=kind)
        a2.plot(labels, ys_m, marker="o", label=kind)
    a1.set(
        yscale="log",
        ylabel="step time / AdamW",
        title=f"step time (CPU, {result['threads']} threads)",
    )
    a2.set(ylabel="state bytes / AdamW", title="optimizer state")
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=120)
    plt.close(fig)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("experiment", choices=["toy", "noise", "cost", "all"])
    ap.add_argument("--out", default="runs/optim")
    ap.add_argument("--quick", action="store_true", help="short settings")
    ap.add_argument("--text", default=None, help="text file for the char LM (default: synthetic)")
    ap.add_argument(
        "--model",
        choices=["mlp", "preset"],
        default="mlp",
        help="noise: the char-LM stand-ins (mlp) or the tiny transformer preset (preset)",
    )
    ap.add_argument("--steps", type=int, default=150, help="noise --model preset: steps")
    ap.add_argument("--seq-len", type=int, default=64, help="noise --model preset")
    ap.add_argument("--batch", type=int, default=8, help="noise --model preset")
    ap.add_argument("--depth", type=int, default=1, help="noise --model preset (0: the spec's)")
    ap.add_argument("--seeds", default="0,1", help="noise --model preset: comma-separated")
    ap.add_argument(
        "--levels", default="0,0.3,1", help="noise --model preset: noise levels, comma-separated"
    )
    ap.add_argument(
        "--optimizers", default=None, help="noise --model preset: a comma-separated subset"
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="noise --model preset: keep the runs of an earlier noise-lm.json with the same settings",
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable on a shared CPU)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # tiny models: more threads only add contention
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = ["toy", "noise", "cost"] if args.experiment == "all" else [args.experiment]
    results: dict[str, Any] = {}
    for name in todo:
        t0 = time.perf_counter()
        if name == "toy":
            results[name] = toy(out, args.quick)
        elif name == "noise" and args.model == "preset":
            name = "noise-lm"
            results[name] = noise_preset(
                out,
                args.quick,
                args.text,
                steps=args.steps,
                seq_len=args.seq_len,
                batch=args.batch,
                depth=args.depth or None,
                seeds=[int(x) for x in args.seeds.split(",")],
                levels=[float(x) for x in args.levels.split(",")],
                only=args.optimizers.split(",") if args.optimizers else None,
                reuse=args.reuse,
            )
        elif name == "noise":
            results[name] = noise(out, args.quick, args.text)
        else:
            results[name] = cost(out, args.quick)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        (out / f"{name}.json").write_text(json.dumps(results[name], indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
