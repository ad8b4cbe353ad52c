"""The training loop: spec → compiled system → optimizer(s) → steps, metrics, checkpoints.

What the loop guarantees (design.md §3.3, issue "training runtime"):
- Data is a pure function of (seed, step): resuming needs no replay, only the step.
- Persistent CMS levels (period k optimizer steps) accumulate gradients for k steps and are
  stepped by their own optimizer instance every k steps (optax's `MultiSteps(every_k)`); their
  optimizer state is kept across the run and in checkpoints.
- A non-finite loss stops the run naming the first bad step; only finite states are checkpointed,
  so the last good checkpoint survives. Checkpoints are written atomically.
- On CPU, a run killed at any point and resumed ends bit-identical to an uninterrupted run.
- No host synchronisation per step except at log/checkpoint steps (the loss is read then).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nestdsl.spec import ir

DEFAULT_OPTIMIZER = ir.Optimizer(type="adamw", lr=3e-3, weight_decay=0.01, beta=0.9, beta2=0.99)


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint is kept."""

    user_error = True


@dataclass
class LevelOptimizer:
    """One optimizer instance over the parameters of one outer level, stepped every k steps."""

    name: str
    params: list[torch.nn.Parameter]
    every_k: int
    optimizer: torch.optim.Optimizer
    base_lrs: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    first_loss: float
    tokens_per_s: float
    history: list[dict[str, float]]


class LossModule(torch.nn.Module):
    """`forward` = the model's training loss, so DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.model.loss(tokens, targets, mask)


def default_data(spec: ir.Spec) -> ir.Data:
    """The data section, or the built-in synthetic default (MQAR: learnable in minutes on CPU)."""
    if spec.data is not None:
        return spec.data
    return ir.MQARData(task="mqar", seq_len=128, batch=8, num_pairs=8)


def _level_groups(system: Any) -> list[tuple[str, list[torch.nn.Parameter], int]]:
    """(name, params, every_k) for every outer level; every parameter appears exactly once."""
    groups: list[tuple[str, list[torch.nn.Parameter], int]] = []
    seen: set[int] = set()
    for lvl in getattr(system, "levels", None) or []:
        name, params, k = lvl.name, list(lvl.params), int(lvl.every_k)
        params = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append((name, params, k))
    rest = [p for p in system.model.parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        groups.insert(0, ("outer", rest, 1))
    # Merge every k=1 group into one optimizer (same clock).
    merged: dict[int, tuple[str, list[torch.nn.Parameter], int]] = {}
    for name, params, k in groups:
        if k in merged:
            merged[k][1].extend(params)
        else:
            merged[k] = (name if k != 1 else "outer", list(params), k)
    return sorted(merged.values(), key=lambda g: g[2])


def build_level_optimizers(system: Any, opt_spec: ir.Optimizer) -> list[LevelOptimizer]:
    from nestdsl.optim import build

    names = {id(p): n for n, p in system.model.named_parameters()}
    out: list[LevelOptimizer] = []
    for name, params, k in _level_groups(system):
        named = [(names.get(id(p), f"param{i}"), p) for i, p in enumerate(params)]
        opt = build(opt_spec, named)
        out.append(LevelOptimizer(name, params, k, opt, [g["lr"] for g in opt.param_groups]))
    return out


def lr_factor(train: ir.Train, step: int) -> float:
    """Warmup then constant / cosine / linear decay, as a multiplier of the base lr."""
    from nestdsl.runtime.schedule_lr import lr_factor as factor

    return factor(step, total_steps=train.steps, schedule=train.schedule, warmup=train.warmup)


# ---------------------------------------------------------------------------------------------
# RNG state (so resume continues exactly)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------


def train(
    spec: ir.Spec,
    *,
    spec_text: str,
    run_dir: Path,
    steps: int | None = None,
    device: str = "cpu",
    compile: bool | None = None,
    resume: bool = False,
    on_log: Callable[[dict[str, float]], None] | None = None,
    distributed: Any = None,
) -> TrainResult:
    """Train `spec` into `run_dir`; see the module docstring for the guarantees."""
    import nestdsl
    from nestdsl.runtime import checkpoint as ckpt
    from nestdsl.runtime.metrics import MetricsWriter
    from nestdsl.runtime.tasks import make_task

    train_cfg = spec.train or ir.Train()
    total_steps = steps if steps is not None else train_cfg.steps
    data_spec = default_data(spec)
    if spec.data is None:  # lower with the same data the loop will use (level classification)
        spec = spec.model_copy(update={"data": data_spec})
    use_compile = train_cfg.compile if compile is None else compile
    rank = distributed.rank if distributed else 0
    world = distributed.world_size if distributed else 1

    seed_everything(train_cfg.seed)
    system = nestdsl.compile(spec, device=device, compile=use_compile)
    model = system.model
    task = make_task(data_spec)
    opt_spec = spec.outer_optimizer or DEFAULT_OPTIMIZER
    level_opts = build_level_optimizers(system, opt_spec)
    loss_module: torch.nn.Module = LossModule(model)
    if distributed:
        loss_module = distributed.wrap(loss_module)

    run_dir.mkdir(parents=True, exist_ok=True)
    start_step = 0
    history: list[dict[str, float]] = []
    if resume:
        latest = ckpt.find_latest(run_dir)
        if latest is not None:
            loaded = ckpt.load_checkpoint(
                latest, model=model, optimizer=[lo.optimizer for lo in level_opts],
                spec_text=spec_text, restore_rng=True, device=device,
            )
            start_step = loaded.step
            history = list(loaded.extra.get("history", []))
            # Gradients accumulated for persistent levels between their updates.
            accum = loaded.extra.get("accum", {})
            for lo in level_opts:
                for i, p in enumerate(lo.params):
                    key = f"{lo.name}.{i}"
                    if key in accum:
                        p.grad = accum[key].to(p.device).clone()
    metrics = MetricsWriter(run_dir, truncate_after=start_step) if rank == 0 else None

    grad_clip = train_cfg.grad_clip
    t_start = time.perf_counter()
    tokens_seen = 0
    first_loss = history[0]["loss"] if history else math.nan
    last_loss = math.nan
    loss_acc = torch.zeros((), device=device)
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    n_acc = 0

    def save(step: int) -> None:
        if rank != 0:
            return
        accum: dict[str, torch.Tensor] = {}
        for lo in level_opts:
            if lo.every_k > 1:
                for i, p in enumerate(lo.params):
                    if p.grad is not None:
                        accum[f"{lo.name}.{i}"] = p.grad.detach()
        ckpt.save_checkpoint(
            run_dir,
            step,
            model=model,
            optimizer=[lo.optimizer for lo in level_opts],
            spec_text=spec_text,
            data_position=step,
            extra={"history": history, "accum": accum},
        )

    for lo in level_opts:
        if not resume or start_step == 0:
            lo.optimizer.zero_grad(set_to_none=True)

    step = start_step
    for step in range(start_step, total_steps):
        batch = task.batch(step)
        tokens, targets, mask = (t.to(device) for t in (batch.tokens, batch.targets, batch.loss_mask))
        if world > 1:
            tokens, targets, mask = (t.chunk(world)[rank] for t in (tokens, targets, mask))
        loss = loss_module(tokens, targets, mask)
        loss.backward()

        # Record the first non-finite step without a host sync.
        finite = torch.isfinite(loss.detach())
        bad_step = torch.where((bad_step < 0) & ~finite, torch.tensor(step, device=device), bad_step)
        loss_acc = loss_acc + loss.detach()
        n_acc += 1
        tokens_seen += tokens.numel() * world

        factor = lr_factor(train_cfg, step)
        for lo in level_opts:
            if (step + 1) % lo.every_k != 0:
                continue  # keep accumulating this level's gradients (MultiSteps)
            if lo.every_k > 1:
                for p in lo.params:
                    if p.grad is not None:
                        p.grad.div_(lo.every_k)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(lo.params, grad_clip)
            for g, base in zip(lo.optimizer.param_groups, lo.base_lrs, strict=True):
                g["lr"] = base * factor
            lo.optimizer.step()
            lo.optimizer.zero_grad(set_to_none=True)

        done = step + 1
        is_log = done % train_cfg.log_every == 0 or done == total_steps
        is_ckpt = done % train_cfg.ckpt_every == 0 or done == total_steps
        if is_log or is_ckpt:
            bad = int(bad_step)  # host sync, only here
            if bad >= 0:
                raise TrainingDiverged(
                    f"loss became non-finite at step {bad + 1}; stopped. The last good checkpoint "
                    f"in {run_dir} is kept (lower the learning rate or enable grad_clip)."
                )
            mean_loss = float(loss_acc) / max(n_acc, 1)
            loss_acc.zero_()
            n_acc = 0
            if math.isnan(first_loss):
                first_loss = mean_loss
            last_loss = mean_loss
            elapsed = time.perf_counter() - t_start
            record = {
                "step": done,
                "loss": mean_loss,
                "lr": level_opts[0].base_lrs[0] * factor if level_opts else 0.0,
                "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                "elapsed": elapsed,
            }
            history.append(record)
            if metrics is not None:
                metrics.log(done, **{k: v for k, v in record.items() if k != "step"})
            if on_log is not None and rank == 0:
                on_log(record)
        if is_ckpt:
            save(done)

    if metrics is not None:
        metrics.close()
    elapsed = time.perf_counter() - t_start
    return TrainResult(
        run_dir=run_dir,
        steps=total_steps,
        final_loss=last_loss,
        first_loss=first_loss,
        tokens_per_s=tokens_seen / max(elapsed, 1e-9),
        history=history,
    )


def parse_overrides(pairs: Sequence[str]) -> list[tuple[list[str | int], Any]]:
    """`key.path=value` pairs → (path, YAML-parsed value). List indices are written as numbers."""
    import yaml

    out: list[tuple[list[str | int], Any]] = []
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        path: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
        out.append((path, yaml.safe_load(value)))
    return out


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
