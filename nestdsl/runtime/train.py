"""The training loop: spec → compiled system → optimizer(s) → steps, metrics, checkpoints.

What the loop guarantees (docs/design.md §3.3, issue "training runtime"):
- Data is a pure function of (seed, step): resuming needs no replay, only the step.
- Persistent CMS levels (period k optimizer steps) accumulate gradients for k steps and are
  stepped by their own optimizer instance every k steps with the mean of the k gradients
  (optax's `MultiSteps(every_k)`); their optimizer state and the gradients accumulated so far
  are kept across the run and in checkpoints.
- A non-finite loss stops the run naming the first bad step; only finite states are checkpointed,
  so the last good checkpoint survives. Checkpoints are written atomically.
- On CPU, a run killed at any point and resumed ends bit-identical (parameters and logged loss)
  to an uninterrupted run: everything the next steps read (parameters, optimizer states,
  persistent-level accumulators, the partial loss average of the current log window, RNG states)
  is in the checkpoint.
- No host synchronisation per step except at log/checkpoint steps (the loss is read then).
- Data parallel (torchrun): every rank builds the same global batch and trains on its slice;
  each rank's loss is weighted by its share of the scored tokens, so DDP's gradient average is
  exactly the gradient of the global-batch mean loss. Rank 0 alone writes checkpoints and
  metrics; all ranks agree on divergence and on checkpoint failures, so none is left waiting.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from nestdsl.check.periods import LevelKind
from nestdsl.lower.inner import set_outer_step
from nestdsl.runtime.resume import LoopState, extra_of
from nestdsl.runtime.resume import restore as resume_from
from nestdsl.spec import ir

if TYPE_CHECKING:
    from nestdsl.lower import CompiledSystem
    from nestdsl.lower.model import NestModel

DEFAULT_OPTIMIZER = ir.AdamWOptimizer(type="adamw", lr=3e-3, weight_decay=0.01, beta=0.9, beta2=0.99)


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint is kept."""

    user_error = True


class TrainConfigError(RuntimeError):
    """A combination the trainer cannot run (bad run folder, batch vs. world size, ...)."""

    user_error = True


@dataclass
class LevelOptimizer:
    """One optimizer instance over the parameters of one outer level, stepped every k steps."""

    name: str
    params: list[torch.nn.Parameter]
    every_k: int
    optimizer: torch.optim.Optimizer
    base_lrs: list[float] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)  # DGD's input-capturing forward hooks

    def step(self, step: int, lr_factor: float, grad_clip: float | None) -> bool:
        """After the backward of optimizer step `step` (0-based): keep accumulating gradients, or,
        every k-th step, update with their mean (optax's `MultiSteps(every_k)`). Returns whether
        the level updated."""
        if (step + 1) % self.every_k:
            return False
        if self.every_k > 1:
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(self.every_k)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, grad_clip)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * lr_factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    first_loss: float
    tokens_per_s: float
    history: list[dict[str, float]]
    start_step: int = 0
    # The first step of this process alone (torch.compile included when `compiled`), seconds;
    # `tokens_per_s` counts the steps after it. NaN when no step ran.
    first_step_s: float = math.nan
    compiled: bool = False


class LossModule(torch.nn.Module):
    """`forward` = the model's training loss (times `scale`), so DistributedDataParallel can
    wrap it: DDP's hooks fire on `forward`, not on `model.loss`."""

    def __init__(self, model: NestModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None
    ) -> torch.Tensor:
        loss = self.model.loss(tokens, targets, mask)
        return loss if scale is None else loss * scale


def default_data(spec: ir.Spec) -> ir.Data:
    """The data section, or the built-in synthetic default (MQAR: learnable in minutes on CPU)."""
    if spec.data is not None:
        return spec.data
    return ir.MQARData(task="mqar", seq_len=128, batch=8, num_pairs=8)


def resolve_compile(train_cfg: ir.Train | None, device: str, override: bool | None = None) -> bool:
    """Whether the run uses torch.compile: `override` (the `compile=` argument, `--compile`)
    when given; else `train.compile` when it is true or false; `auto` (the default) is on for
    CUDA, off for CPU: there a cold compile costs about a minute (hope-tiny 57-59 s,
    titans-lmm-tiny 50 s) and then wins nothing on the tiny models (titans-lmm-tiny, one thread:
    9.3k tok/s compiled, 12k eager)."""
    if override is not None:
        return override
    if train_cfg is not None and train_cfg.compile != "auto":
        return train_cfg.compile
    return torch.device(device).type == "cuda"


def _level_groups(system: CompiledSystem) -> list[tuple[str, list[torch.nn.Parameter], int]]:
    """(name, params, every_k) per optimizer clock; every trainable parameter appears once.

    `system.levels` are `nestdsl.lower.LevelInfo`s (a `Level` and what it owns): persistent
    levels with every_k > 1 get their own optimizer; the outer `step` level and every
    persistent level of period 1 share the k = 1 optimizer ("outer"); in-context levels own no
    parameters (their state is per sequence). Parameters no level claims are outer.
    """
    groups: list[tuple[str, list[torch.nn.Parameter], int]] = []
    seen: set[int] = set()
    for lvl in system.levels:
        if lvl.kind == LevelKind.IN_CONTEXT:
            continue
        params = [p for p in lvl.params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append((lvl.name, params, lvl.every_k))
    rest = [p for p in system.model.parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        groups.insert(0, ("outer", rest, 1))
    # One optimizer per clock: every k = 1 group shares the outer optimizer.
    merged: dict[int, tuple[str, list[torch.nn.Parameter], int]] = {}
    for name, params, k in groups:
        if k in merged:
            merged[k][1].extend(params)
        else:
            merged[k] = (name if k != 1 else "outer", list(params), k)
    return sorted(merged.values(), key=lambda g: g[2])


def build_level_optimizers(system: Any, opt_spec: ir.Optimizer) -> list[LevelOptimizer]:
    """One optimizer per clock (`_level_groups`), each built from the outer optimizer spec by
    `nestdsl.optim.build`: any type, a `MultiOptimizer` when the spec's `groups` mix types
    (its `param_groups` are the children's, so the loop's lr schedule reaches them).

    Parameters are routed by their names in `system.model` and, for `groups: embeddings`, by
    belonging to an `nn.Embedding`. DGD needs each `nn.Linear`'s inputs: its forward hooks are
    registered on the model here (the handles are kept in `LevelOptimizer.hooks`).
    """
    from nestdsl.optim import build, register_dgd_hooks

    model = system.model
    names = {id(p): n for n, p in model.named_parameters()}
    embedding_ids = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag)
    }
    out: list[LevelOptimizer] = []
    for name, params, k in _level_groups(system):
        named = [(names.get(id(p), f"param{i}"), p) for i, p in enumerate(params)]
        opt = build(opt_spec, named, embedding_ids=embedding_ids)
        hooks = register_dgd_hooks(model, opt)
        out.append(LevelOptimizer(name, params, k, opt, [g["lr"] for g in opt.param_groups], hooks))
    return out


def _main_lr(level_opts: list[LevelOptimizer]) -> float:
    """The base lr of the param group holding the most parameter elements: with a Muon-style
    split that is the matrices' optimizer, not the AdamW group of embeddings and vectors."""
    best, best_size = 0.0, -1
    for lo in level_opts:
        for group, base in zip(lo.optimizer.param_groups, lo.base_lrs, strict=True):
            size = sum(p.numel() for p in group["params"])
            if size > best_size:
                best, best_size = base, size
    return best


def lr_factor(train: ir.Train, step: int) -> float:
    """Warmup then constant / cosine / linear decay, as a multiplier of the base lr."""
    from nestdsl.runtime.schedule_lr import lr_factor as factor

    return factor(step, total_steps=train.steps, schedule=train.schedule, warmup=train.warmup)


# ---------------------------------------------------------------------------------------------
# Seeding (checkpoints carry the RNG states, so resume continues exactly)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Helpers


def _valid_count(targets: torch.Tensor, mask: torch.Tensor | None) -> int:
    """Scored positions, as `masked_cross_entropy` counts them (mask set, target != -100)."""
    valid = targets != -100
    if mask is not None:
        valid = valid & mask.to(torch.bool)
    return int(valid.sum())


def _finite(model: torch.nn.Module) -> bool:
    """Whether every parameter and buffer is finite (one host sync)."""
    flags = [torch.isfinite(t).all() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def _make_task(data_spec: ir.Data, spec: ir.Spec, run_dir: Path) -> Any:
    """The task; a relative text path is tried against the working directory, then the spec's
    folder. A locally trained BPE tokenizer is cached in the run folder."""
    from nestdsl.runtime.tasks import make_task

    base_dir = None
    src = getattr(spec, "source_file", None)

    def _rel_missing(d: Any) -> bool:
        return getattr(d, "task", None) == "text" and not Path(d.path).expanduser().is_absolute() \
            and not Path(d.path).expanduser().exists()

    subs = data_spec.tasks if isinstance(data_spec, ir.ContinualData) else [data_spec]
    if src and any(_rel_missing(d) for d in subs):
        cand = Path(src).parent
        if all((cand / cast(ir.TextData, d).path).exists() for d in subs if _rel_missing(d)):
            base_dir = cand
    return make_task(data_spec, base_dir=base_dir, cache_dir=run_dir)


def _check_vocab(spec: ir.Spec, task: Any) -> None:
    vocab = getattr(spec.model, "vocab", None)
    if vocab is not None and task.vocab_size > vocab:
        from nestdsl.runtime.tasks import DataError

        raise DataError(
            f"the {task.name} task uses {task.vocab_size} token ids but model.vocab is {vocab}; "
            f"set model.vocab to at least {task.vocab_size}"
        )


# ---------------------------------------------------------------------------------------------


def train(
    spec: ir.Spec,
    *,
    spec_text: str | None = None,
    run_dir: Path,
    steps: int | None = None,
    device: str = "cpu",
    compile: bool | None = None,
    resume: bool = False,
    on_log: Callable[[dict[str, float]], None] | None = None,
    distributed: Any = None,
    kernels: dict[str, str] | None = None,
    force: bool = False,
    say: Callable[[str], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train `spec` into `run_dir`; see the module docstring for the guarantees.

    `kernels` forces memory kernels (``compile_spec``). `steps` overrides `train.steps` (the
    length of the learning-rate schedule too). Without
    `resume`, a run folder that already holds a checkpoint is refused (never overwrite work).
    A checkpoint records the spec's canonical form and identity (`spec/identity.py`; `spec_text`,
    when given, is kept beside them for people); `resume` loads only a checkpoint whose spec
    means the same (`force`: any), and `say` hears what it did ("resuming from step 20").
    `compile`: an explicit torch.compile switch (None: `resolve_compile`). `on_status` hears
    what the loop is doing between log steps: "compiling" before a compiled run's first step,
    "" once that step is done.
    """
    import nestdsl
    from nestdsl.runtime import checkpoint as ckpt
    from nestdsl.runtime.metrics import MetricsWriter

    train_cfg = spec.train or ir.Train()
    total_steps = steps if steps is not None else train_cfg.steps
    if total_steps < 1:
        raise TrainConfigError(f"--steps must be >= 1, got {total_steps}")
    train_cfg = train_cfg.model_copy(update={"steps": total_steps})
    from nestdsl.spec.identity import record as spec_record

    spec_rec = spec_record(spec)
    spec_rec["run"]["train.steps"] = total_steps
    if spec_text is None:
        import yaml

        spec_text = yaml.safe_dump(spec_rec["canonical"], sort_keys=False, allow_unicode=True)
    data_spec = default_data(spec)
    if spec.data is None:  # lower with the same data the loop will use (level classification)
        spec = spec.model_copy(update={"data": data_spec})
    use_compile = resolve_compile(train_cfg, device, compile)
    rank = distributed.rank if distributed else 0
    world = distributed.world_size if distributed else 1

    # Inputs first (cheap, and their errors are the user's), then the model.
    if world > 1 and data_spec.batch % world:
        raise TrainConfigError(
            f"data.batch = {data_spec.batch} is not divisible by the {world} processes; "
            f"use a multiple of {world} (the global batch is split evenly across ranks)"
        )
    if not resume and ckpt.holds_run(run_dir):        # readable or not: never overwrite work
        raise TrainConfigError(
            f"{run_dir} already holds checkpoints of a run; pass --resume to continue it, or "
            "choose another --out folder (nothing was overwritten)"
        )
    task = _make_task(data_spec, spec, run_dir)
    _check_vocab(spec, task)

    from nestdsl.lower.common import BuildContext, CompileConfig
    from nestdsl.lower.size import check_size

    check_size(spec, BuildContext(spec=spec, compile=CompileConfig(enabled=False)), device=device,
               training=True)
    seed_everything(train_cfg.seed)
    try:
        system = nestdsl.compile(spec, device=device, compile=use_compile, kernels=kernels)
    except ValueError as e:       # an unknown kernel or memory name in `kernels`
        raise TrainConfigError(str(e)) from None
    model = system.model
    if world > 1 and getattr(model, "uses_task_sweep", False):
        raise TrainConfigError(
            "this model's loss trains in-context CMS levels through the chunked task sweep "
            "(torch.autograd.grad inside the forward), which DistributedDataParallel cannot "
            "synchronise; train it in one process, or use `signal: local` for its CMS stages"
        )
    opt_spec = spec.outer_optimizer or DEFAULT_OPTIMIZER
    level_opts = build_level_optimizers(system, opt_spec)
    loss_module: torch.nn.Module = LossModule(model)
    if distributed:
        loss_module = distributed.wrap(loss_module)
    autocast: contextlib.AbstractContextManager[Any] = (
        torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
        if train_cfg.precision == "bf16" else contextlib.nullcontext()
    )

    run_dir.mkdir(parents=True, exist_ok=True)
    loop = (resume_from(run_dir, model=model, level_opts=level_opts, record=spec_rec,
                        device=device, rank=rank, force=force, say=say)
            if resume else LoopState.fresh(device))
    start_step, history, loss_acc, n_acc = loop.step, loop.history, loop.loss_acc, loop.n_acc
    if start_step == 0:
        for lo in level_opts:
            lo.optimizer.zero_grad(set_to_none=True)
    metrics = (MetricsWriter(run_dir, truncate_after=start_step, history=history)
               if rank == 0 else None)

    grad_clip = train_cfg.grad_clip
    from nestdsl.lower import telemetry

    # Every memory layer leaves a sync-free probe (first non-finite token of its output) per
    # forward; at the first non-finite step they are snapshotted, so the error names the memory.
    probes = [(name, m) for name, m in model.named_modules()
              if isinstance(getattr(m, "probe", None), telemetry.NonFiniteProbe)]
    bad_snapshot: torch.Tensor | None = None
    warned: set[str] = set()
    t_start = time.perf_counter()
    tokens_seen = 0
    # Throughput is measured from the end of this process's first step: that step compiles
    # (torch.compile), allocates and warms caches, and would dominate a short run's tok/s.
    t_warm: float | None = None
    tokens_warm = 0
    first_step_s = math.nan

    def throughput(now: float) -> float:
        """Tokens/s since the first step ended (over the first step alone until there is more)."""
        if t_warm is not None and tokens_seen > tokens_warm and now > t_warm:
            return (tokens_seen - tokens_warm) / (now - t_warm)
        return tokens_seen / max(now - t_start, 1e-9)

    first_loss = history[0]["loss"] if history else math.nan
    last_loss = history[-1]["loss"] if history else math.nan
    no_bad = total_steps + 1  # "no non-finite step yet" (a min-reduction sentinel)
    bad_step = torch.full((), no_bad, dtype=torch.long, device=device)

    def all_ok(ok: bool) -> bool:
        """Whether every rank is ok (one collective; trivially `ok` in one process)."""
        if world == 1:
            return ok
        import torch.distributed as dist

        flag = torch.tensor(1 if ok else 0, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def stop_if_diverged(bad: int) -> None:
        if bad != no_bad:
            where = _bad_memory(probes, bad_snapshot)
            raise TrainingDiverged(
                f"loss became non-finite at step {bad + 1}{_culprit(probes, bad_snapshot)}; "
                f"stopped. {_checkpoint_note(run_dir)} To stabilise it: "
                f"{_stability_advice(spec, opt_spec, grad_clip, where)}."
            )

    def save(step: int) -> None:
        error: BaseException | None = None
        if rank == 0:
            try:
                ckpt.save_checkpoint(
                    run_dir,
                    step,
                    model=model,
                    optimizer=[lo.optimizer for lo in level_opts],
                    spec_text=spec_text,
                    spec_record=spec_rec,
                    data_position=step,
                    extra=extra_of(LoopState(step, history, loss_acc, n_acc), level_opts),
                )
            except Exception as e:  # noqa: BLE001 - re-raised below, after the ranks agree
                error = e
        if not all_ok(error is None):
            if error is not None:
                raise error
            raise TrainConfigError(f"rank 0 could not write the checkpoint of step {step}; stopped")

    step = start_step
    if use_compile and on_status is not None and rank == 0:
        on_status("compiling")
    for step in range(start_step, total_steps):
        set_outer_step(model, step)          # inner-lr warm-ups (rule.lr_warmup)
        batch = task.batch(step)
        tokens, targets, mask = (t.to(device) for t in (batch.tokens, batch.targets, batch.loss_mask))
        scale: float | None = None
        if world > 1:
            n_global = _valid_count(targets, mask)
            tokens, targets, mask = (t.chunk(world)[rank] for t in (tokens, targets, mask))
            # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of
            # the scored tokens makes that average the gradient of the global-batch mean.
            scale = _valid_count(targets, mask) * world / max(n_global, 1)
        will_log = (step + 1) % train_cfg.log_every == 0 or step + 1 == total_steps
        recorder: contextlib.AbstractContextManager[dict[str, dict[str, torch.Tensor]]] = (
            telemetry.recording() if train_cfg.telemetry and will_log and rank == 0
            else contextlib.nullcontext({}))
        with recorder as inner_stats, autocast:
            loss = loss_module(tokens, targets, mask, scale)
        loss.backward()

        # Record the first non-finite step (and where the memories first went non-finite)
        # without a host sync.
        finite = torch.isfinite(loss.detach())
        first_bad = ~finite & (bad_step == no_bad)
        if probes and all(m.probe.first_bad is not None for _, m in probes):
            snap = torch.stack([m.probe.first_bad for _, m in probes])
            if bad_snapshot is None:
                bad_snapshot = torch.full_like(snap, -1)
            bad_snapshot = torch.where(first_bad, snap, bad_snapshot)
        bad_step = torch.where(first_bad, torch.tensor(step, device=device), bad_step)
        loss_acc = loss_acc + loss.detach().float()
        n_acc += 1
        tokens_seen += tokens.numel() * world

        factor = lr_factor(train_cfg, step)
        for lo in level_opts:
            lo.step(step, factor, grad_clip)
        if t_warm is None:                    # this process's first step (compiled, if on)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)    # once: the first step's kernels end here
            t_warm = time.perf_counter()
            tokens_warm, first_step_s = tokens_seen, t_warm - t_start
            if use_compile and on_status is not None and rank == 0:
                on_status("")

        done = step + 1
        is_log = done % train_cfg.log_every == 0 or done == total_steps
        is_ckpt = done % train_cfg.ckpt_every == 0 or done == total_steps
        if is_log:
            summed = loss_acc.clone()
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(bad_step, op=dist.ReduceOp.MIN)
                dist.all_reduce(summed)
                summed /= world
            stop_if_diverged(int(bad_step))      # host sync, only here
            mean_loss = float(summed) / max(n_acc, 1)
            loss_acc = torch.zeros((), device=device)
            n_acc = 0
            if math.isnan(first_loss):
                first_loss = mean_loss
            last_loss = mean_loss
            now = time.perf_counter()
            elapsed = now - t_start
            record: dict[str, Any] = {
                "step": done,
                "loss": mean_loss,
                "lr": _main_lr(level_opts) * factor,
                "tokens_per_s": throughput(now),      # without the first step (compile)
                "elapsed": elapsed,
                "first_step_s": first_step_s,         # the first step alone, compile included
            }
            if inner_stats:
                record["memories"] = {name: {k: float(v) for k, v in st.items()}
                                      for name, st in inner_stats.items()}
                _warn_state_norms(record["memories"], train_cfg.state_norm_warn, done, warned)
            history.append(record)
            if metrics is not None:
                metrics.log(done, **{k: v for k, v in record.items() if k != "step"})
            if on_log is not None and rank == 0:
                on_log(record)
        if is_ckpt:
            if not is_log:
                # Never checkpoint a diverged state: check (and agree on) the flag first.
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(bad_step, op=dist.ReduceOp.MIN)
                stop_if_diverged(int(bad_step))
            # A finite loss can still be followed by an update that overflows the parameters.
            if not _finite(model):
                last = ckpt.find_latest(run_dir)
                since = f"after step {ckpt.read_meta(last)['step']}" if last is not None else "since the start"
                raise TrainingDiverged(
                    f"parameters became non-finite by step {done} ({since}; the loss was still "
                    f"finite); stopped. {_checkpoint_note(run_dir)} To stabilise it: "
                    f"{_stability_advice(spec, opt_spec, grad_clip, None, memories=False)}."
                )
            save(done)

    if metrics is not None:
        metrics.close()
    return TrainResult(
        run_dir=run_dir,
        steps=max(total_steps, start_step),
        final_loss=last_loss,
        first_loss=first_loss,
        tokens_per_s=throughput(time.perf_counter()),
        history=history,
        start_step=start_step,
        first_step_s=first_step_s,
        compiled=use_compile,
    )


def _culprit(probes: list[tuple[str, Any]], snapshot: torch.Tensor | None) -> str:
    """', first non-finite in memory M (layer L) at token t (chunk c)' from the probe snapshot
    taken at the first non-finite step; memories are in forward order, so the first one listed
    is where it started."""
    if snapshot is None or not probes:
        return ""
    firsts = snapshot.tolist()
    for (name, mod), t in zip(probes, firsts, strict=True):
        if 0 <= t < mod.probe.length:
            chunk = cast(int, getattr(mod, "chunk", None) or getattr(mod, "c_mem", 1))
            label = getattr(mod, "name", name)
            return (f": the first non-finite memory output was in '{label}' (module {name}) at "
                    f"token {t}, chunk {t // max(chunk, 1)} of {chunk} tokens")
    return ": every memory's output was finite (the divergence is outside the memories)"


def _bad_memory(probes: list[tuple[str, Any]], snapshot: torch.Tensor | None) -> str | None:
    """The label of the memory whose output went non-finite first (as `_culprit` names it);
    "" when every memory's output was finite; None when the probes cannot tell."""
    if snapshot is None or not probes:
        return None
    for (name, mod), t in zip(probes, snapshot.tolist(), strict=True):
        if 0 <= t < mod.probe.length:
            return str(getattr(mod, "name", name))
    return ""


def _checkpoint_note(run_dir: Path) -> str:
    """Whether a checkpoint survives the divergence, and which (never claims one that is not)."""
    from nestdsl.runtime import checkpoint as ckpt

    latest = ckpt.find_latest(run_dir)
    if latest is None:
        return "No checkpoint was written yet (nothing to resume)."
    return f"The last good checkpoint (step {ckpt.read_meta(latest)['step']}) is kept in {latest}."


def _stability_advice(spec: ir.Spec, opt: ir.Optimizer, grad_clip: float | None,
                      where: str | None, *, memories: bool = True) -> str:
    """The spec fields that set the run's step sizes, with their values: the memories' inner
    `rule.lr` (its gate's `scale`) and `rule.clip` (the one that diverged, if the probes know;
    none when the divergence is outside the memories), the outer `optimizer.lr`, and
    `train.grad_clip` only if it is off."""
    parts: list[str] = []
    if memories and where != "":
        mems = [(n, m) for n, m in spec.memories.items() if m.kind != "attention"]
        if where:
            mems = [(n, m) for n, m in mems if where == n or where.endswith(f" {n}")] or mems
        for n, m in mems:
            rule = m.rule or ir.Rule()
            preset = "; the presets use 0.1" if m.kind == "mlp" else ""
            if isinstance(rule.lr, ir.LearnedGate):
                parts.append(f"lower memories.{n}.rule.lr.scale (now {rule.lr.scale:g}"
                             f"{preset if rule.lr.scale > 0.1 else ''})")
            else:
                parts.append(f"lower memories.{n}.rule.lr (now {rule.lr:g}{preset if rule.lr > 0.1 else ''})")
            if rule.clip is None and m.objective in (None, "l2") and not m.norm:
                parts.append(f"set memories.{n}.rule.clip (unset; the presets use 1.0)")
    if isinstance(spec.optimizer, str):
        parts.append(f"lower the outer lr (now {opt.lr:g}, from optimizer '{spec.optimizer}')")
    elif spec.optimizer is None:
        parts.append(f"set optimizer.lr (the default optimizer's is {opt.lr:g})")
    else:
        parts.append(f"lower optimizer.lr (now {opt.lr:g})")
    if not grad_clip:
        parts.append("set train.grad_clip (off; the default is 1.0)")
    return "; ".join(parts[:-1]) + (" or " if len(parts) > 1 else "") + parts[-1]


def _warn_state_norms(stats: dict[str, dict[str, float]], bound: float | None, step: int,
                      warned: set[str]) -> None:
    """Warn (once per memory) when a memory's state norm passes `train.state_norm_warn`."""
    if bound is None:
        return
    import warnings

    for name, st in stats.items():
        norm = max(st.get("state_norm", 0.0), st.get("max_state_norm", 0.0))
        if name not in warned and not norm <= bound:
            warned.add(name)
            warnings.warn(
                f"step {step}: memory '{name}' has state norm {norm:.3g} > train.state_norm_warn "
                f"= {bound:g}; its inner loop may be diverging (lower its lr scale, add `norm: "
                "true` or `clip:`)", RuntimeWarning, stacklevel=2)
