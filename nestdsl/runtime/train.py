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
- No host synchronisation per step except at log/checkpoint steps (the loss is read then);
  under torchrun one small all-reduce per step lets the ranks agree on a preemption signal.
- SIGTERM / SIGINT finish the step, checkpoint it and return (`runtime/preempt.py`).
- Data parallel (torchrun, `runtime/distributed.py`: DDP or FSDP2): every rank reads its slice
  of the same global batch; each rank's loss is weighted by its share of the scored tokens, so
  the ranks' gradient average is exactly the gradient of the global-batch mean loss. Rank 0
  alone writes metrics and (one process, DDP) checkpoints; under FSDP every rank writes its
  shards (`runtime/sharded.py`). All ranks agree on divergence and on checkpoint failures, so
  none is left waiting.
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

from nestdsl.lower import telemetry
from nestdsl.lower.inner import set_outer_step
from nestdsl.runtime.distributed import DataParallel as _DataParallel
from nestdsl.runtime.loop import DivergenceGuard, LogWindow, Ranks, Throughput, rank_batch
from nestdsl.runtime.preempt import Preemption
from nestdsl.runtime.resume import LoopState, extra_of
from nestdsl.runtime.resume import restore as resume_from
from nestdsl.spec import ir
from nestdsl.spec.periods import LevelKind

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
    # The signal that stopped the run after checkpointing step `steps` (SIGTERM, SIGINT), or None
    # when it ran to the end; the CLI then exits with `preempt.EXIT_PREEMPTED`.
    stopped_by: str | None = None


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


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP parameter (a DTensor); any other tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _finite(model: torch.nn.Module) -> bool:
    """Whether every parameter and buffer (this rank's shards of them) is finite (one host sync)."""
    flags = [torch.isfinite(_local(t)).all() for t in (*model.parameters(), *model.buffers())
             if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def _make_task(data_spec: ir.Data, spec: ir.Spec, run_dir: Path) -> Any:
    """The task; a relative text or shards path (and a text task's tokenizer.json) is tried
    against the working directory, then the spec's folder. A locally trained BPE tokenizer is
    cached in the run folder."""
    from nestdsl.runtime.tasks import make_task

    base_dir = None
    src = getattr(spec, "source_file", None)

    def _missing(p: str) -> bool:
        return not Path(p).expanduser().is_absolute() and not Path(p).expanduser().exists()

    def _rel_missing(d: Any) -> bool:
        return getattr(d, "task", None) in ("text", "shards") and _missing(d.path)

    def _tokenizer_here(d: Any) -> Any:
        tok = getattr(d, "tokenizer", "")
        if src and getattr(d, "task", None) == "text" and tok.lower().endswith(".json") \
                and _missing(tok) and (Path(src).parent / tok).exists():
            return d.model_copy(update={"tokenizer": str(Path(src).parent / tok)})
        return d

    subs = data_spec.tasks if isinstance(data_spec, ir.ContinualData) else [data_spec]
    if src and any(_rel_missing(d) for d in subs):
        cand = Path(src).parent
        if all((cand / cast(ir.TextData, d).path).exists() for d in subs if _rel_missing(d)):
            base_dir = cand
    if isinstance(data_spec, ir.ContinualData):
        data_spec = data_spec.model_copy(update={"tasks": [_tokenizer_here(d) for d in subs]})
    else:
        data_spec = _tokenizer_here(data_spec)
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
    preemption: bool = True,
    parallel: str | None = None,
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
    "" once that step is done. `preemption`: SIGTERM / SIGINT finish the current step, checkpoint
    it and return (`TrainResult.stopped_by`; a second signal raises `preempt.Interrupted`).
    `parallel` ("ddp" | "fsdp") overrides `train.parallel` under torchrun (`runtime/distributed`).
    """
    from nestdsl.runtime.metrics import MetricsWriter

    train_cfg = _train_config(spec, steps)
    total_steps = train_cfg.steps
    spec_rec, spec_text = _spec_record(spec, total_steps, spec_text)
    data_spec = default_data(spec)
    if spec.data is None:  # lower with the same data the loop will use (level classification)
        spec = spec.model_copy(update={"data": data_spec})
    use_compile = resolve_compile(train_cfg, device, compile)
    ranks = Ranks(distributed.rank, distributed.world_size, device) if distributed else Ranks(device=device)
    task = _inputs(spec, data_spec, run_dir, ranks, resume)
    seed_everything(train_cfg.seed)
    parallel = parallel or train_cfg.parallel
    system = _system(spec, device, use_compile, kernels, ranks, parallel)
    model = system.model
    opt_spec = spec.outer_optimizer or DEFAULT_OPTIMIZER
    dp = _DataParallel.wrap(system, distributed, parallel, train_cfg.precision)
    level_opts = build_level_optimizers(system, opt_spec)
    if dp.sharded:
        _check_shardable(level_opts)
    autocast: contextlib.AbstractContextManager[Any] = (
        torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
        if train_cfg.precision == "bf16" and not dp.sharded else contextlib.nullcontext())

    run_dir.mkdir(parents=True, exist_ok=True)
    loop = (resume_from(run_dir, model=model, level_opts=level_opts, record=spec_rec,
                        device=device, rank=ranks.rank, force=force, say=say)
            if resume else LoopState.fresh(device))
    start_step = loop.step
    if start_step == 0:
        _fresh_start(model, spec, train_cfg, level_opts, say)
    window = LogWindow(loop)
    metrics = (MetricsWriter(run_dir, truncate_after=start_step, history=window.history)
               if ranks.rank == 0 else None)
    grad_clip = train_cfg.grad_clip
    guard = DivergenceGuard(model, total_steps, device)
    speed = Throughput()
    warned: set[str] = set()

    def diverged(bad: int, where: str | None, culprit: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"loss became non-finite at step {bad + 1}{culprit}; stopped. "
            f"{_checkpoint_note(run_dir)} To stabilise it: "
            f"{_stability_advice(spec, opt_spec, grad_clip, where)}.")

    if use_compile and on_status is not None and ranks.rank == 0:
        on_status("compiling")
    reset_every = _optimizer_reset_period(data_spec)
    stopped_by: str | None = None
    with Preemption(enabled=preemption) as stop:
        for step in range(start_step, total_steps):
            set_outer_step(model, step)          # inner-lr warm-ups (rule.lr_warmup)
            if reset_every and step and step % reset_every == 0:
                _reset_optimizers(level_opts)     # a task switch with `optimizer_at_switch: reset`
            tokens, targets, mask, scale = rank_batch(task, step, ranks)
            done = step + 1
            is_log = done % train_cfg.log_every == 0 or done == total_steps
            is_ckpt = done % train_cfg.ckpt_every == 0 or done == total_steps
            recorder: contextlib.AbstractContextManager[dict[str, dict[str, torch.Tensor]]] = (
                telemetry.recording() if train_cfg.telemetry and is_log and ranks.rank == 0
                else contextlib.nullcontext({}))
            with recorder as inner_stats, autocast:
                loss = dp.module(tokens, targets, mask, scale)
            loss.backward()
            dp.after_backward()
            guard.observe(loss, step)
            window.add(loss)
            factor = lr_factor(train_cfg, step)
            for lo in level_opts:
                lo.step(step, factor, grad_clip)
            if speed.step_done(tokens.numel() * ranks.world, device) and use_compile \
                    and on_status is not None and ranks.rank == 0:
                on_status("")                     # the first step (compiled, if on) is done
            if is_log:
                guard.check(ranks, diverged)      # host sync, only here
                record = _log_record(done, window.close(ranks), _main_lr(level_opts) * factor, speed,
                                     inner_stats, train_cfg.state_norm_warn, warned)
                window.history.append(record)
                if metrics is not None:
                    metrics.log(done, **{k: v for k, v in record.items() if k != "step"})
                if on_log is not None and ranks.rank == 0:
                    on_log(record)
            if is_ckpt:
                if not is_log:                    # never checkpoint a diverged state
                    guard.check(ranks, diverged)
                _check_parameters(model, run_dir, done, spec, opt_spec, grad_clip, ranks)
                _save(run_dir, done, ranks, model, level_opts, window, spec_text, spec_rec,
                      dp.sharded)
            if ranks.any_(stop.requested):        # SIGTERM / SIGINT: the step is done, checkpoint
                if not is_ckpt:
                    guard.check(ranks, diverged)
                    _check_parameters(model, run_dir, done, spec, opt_spec, grad_clip, ranks)
                    _save(run_dir, done, ranks, model, level_opts, window, spec_text, spec_rec,
                          dp.sharded)
                stopped_by, total_steps = stop.name or "a signal on another rank", done
                break

    if metrics is not None:
        metrics.close()
    return TrainResult(
        run_dir=run_dir, steps=max(total_steps, start_step), final_loss=window.last_loss,
        first_loss=window.first_loss, tokens_per_s=speed.rate(time.perf_counter()),
        history=window.history, start_step=start_step, first_step_s=speed.first_step_s,
        compiled=use_compile, stopped_by=stopped_by)


def _fresh_start(model: torch.nn.Module, spec: ir.Spec, train_cfg: ir.Train,
                 level_opts: list[LevelOptimizer], say: Callable[[str], None] | None) -> None:
    """Step 0: no gradients, and the weights of `train.init_from` when it names a checkpoint."""
    for lo in level_opts:
        lo.optimizer.zero_grad(set_to_none=True)
    if train_cfg.init_from is not None:
        from nestdsl.runtime.init_from import describe, init_from_checkpoint

        report = init_from_checkpoint(model, spec, train_cfg.init_from)
        if say is not None:
            say(describe(report))


def _reset_optimizers(level_opts: list[LevelOptimizer]) -> None:
    """Every level's optimizer state dropped, as a fresh optimizer would start (NL §4.5)."""
    for lo in level_opts:
        lo.optimizer.state.clear()


def _optimizer_reset_period(data: ir.Data) -> int:
    """Steps between optimizer-state resets: a continual task's switch period when it asks for
    `optimizer_at_switch: reset`, else 0 (never)."""
    if isinstance(data, ir.ContinualData) and data.optimizer_at_switch == "reset":
        return data.switch_every
    return 0


def _train_config(spec: ir.Spec, steps: int | None) -> ir.Train:
    """The spec's `train:` (or the defaults) with `steps` overriding `train.steps`."""
    train_cfg = spec.train or ir.Train()
    total_steps = steps if steps is not None else train_cfg.steps
    if total_steps < 1:
        raise TrainConfigError(f"--steps must be >= 1, got {total_steps}")
    return train_cfg.model_copy(update={"steps": total_steps})


def _inputs(spec: ir.Spec, data_spec: ir.Data, run_dir: Path, ranks: Ranks, resume: bool) -> Any:
    """The task, after the checks on the inputs (cheap, and their errors are the user's)."""
    from nestdsl.runtime import checkpoint as ckpt

    if ranks.world > 1 and data_spec.batch % ranks.world:
        raise TrainConfigError(
            f"data.batch = {data_spec.batch} is not divisible by the {ranks.world} processes; "
            f"use a multiple of {ranks.world} (the global batch is split evenly across ranks)"
        )
    if not resume and ckpt.holds_run(run_dir):        # readable or not: never overwrite work
        raise TrainConfigError(
            f"{run_dir} already holds checkpoints of a run; pass --resume to continue it, or "
            "choose another --out folder (nothing was overwritten)"
        )
    task = _make_task(data_spec, spec, run_dir)
    _check_vocab(spec, task)
    return task


def _system(spec: ir.Spec, device: str, use_compile: bool, kernels: dict[str, str] | None,
            ranks: Ranks, parallel: str) -> CompiledSystem:
    """The compiled model (after its size check)."""
    import nestdsl
    from nestdsl.lower.common import BuildContext, CompileConfig
    from nestdsl.lower.size import check_size

    check_size(spec, BuildContext(spec=spec, compile=CompileConfig(enabled=False)), device=device,
               training=True)
    try:
        system = nestdsl.compile(spec, device=device, compile=use_compile, kernels=kernels)
    except ValueError as e:       # an unknown kernel or memory name in `kernels`
        raise TrainConfigError(str(e)) from None
    return system


def _save(run_dir: Path, step: int, ranks: Ranks, model: torch.nn.Module,
          level_opts: list[LevelOptimizer], window: LogWindow, spec_text: str,
          spec_rec: dict[str, Any], sharded: bool = False) -> None:
    """Rank 0 writes the checkpoint of `step` (FSDP: every rank writes its shards, rank 0 the
    rest); every rank learns whether it succeeded."""
    from nestdsl.runtime import checkpoint as ckpt

    if sharded:
        from nestdsl.runtime import sharded as sharded_ckpt

        sharded_ckpt.save(run_dir, step, ranks=ranks, model=model, level_opts=level_opts,
                          loop=window.state(step), spec_text=spec_text, spec_record=spec_rec)
        return
    error: BaseException | None = None
    if ranks.rank == 0:
        try:
            ckpt.save_checkpoint(
                run_dir, step, model=model, optimizer=[lo.optimizer for lo in level_opts],
                spec_text=spec_text, spec_record=spec_rec, data_position=step,
                extra=extra_of(window.state(step), level_opts))
        except Exception as e:  # noqa: BLE001 - re-raised below, after the ranks agree
            error = e
    if not ranks.all_ok(error is None):
        if error is not None:
            raise error
        raise TrainConfigError(f"rank 0 could not write the checkpoint of step {step}; stopped")


#: Optimizers whose update is element-wise, so FSDP's shards of a parameter update independently
#: (Muon-style orthogonalisation and DGD need whole matrices).
SHARDABLE_OPTIMIZERS = ("AdamW", "MomentumSGD")


def _check_shardable(level_opts: list[LevelOptimizer]) -> None:
    for lo in level_opts:
        leaves = getattr(lo.optimizer, "optimizers", [lo.optimizer])
        for opt in leaves:
            kind = type(opt).__name__
            orthogonal = any(g.get("output", "identity") != "identity" for g in opt.param_groups)
            if kind not in SHARDABLE_OPTIMIZERS or orthogonal or lo.hooks:
                raise TrainConfigError(
                    f"parallel: fsdp shards every parameter, and the {kind} optimizer (level "
                    f"'{lo.name}') updates whole matrices; use an element-wise optimizer "
                    f"(adamw, sgd-momentum) or `--parallel ddp`")


def _spec_record(spec: ir.Spec, total_steps: int, spec_text: str | None) -> tuple[dict[str, Any], str]:
    """The checkpoint's record of the spec (canonical form, identity) and its text for people."""
    from nestdsl.spec.identity import record as spec_record

    spec_rec = spec_record(spec)
    spec_rec["run"]["train.steps"] = total_steps
    if spec_text is None:
        import yaml

        spec_text = yaml.safe_dump(spec_rec["canonical"], sort_keys=False, allow_unicode=True)
    return spec_rec, spec_text


def _log_record(done: int, mean_loss: float, lr: float, speed: Throughput,
                inner_stats: dict[str, dict[str, torch.Tensor]], state_norm_warn: float | None,
                warned: set[str]) -> dict[str, Any]:
    """One metrics.jsonl record, with the memories' inner-loop statistics when recorded."""
    now = time.perf_counter()
    record: dict[str, Any] = {
        "step": done,
        "loss": mean_loss,
        "lr": lr,
        "tokens_per_s": speed.rate(now),          # without the first step (compile)
        "elapsed": now - speed.t_start,
        "first_step_s": speed.first_step_s,       # the first step alone, compile included
    }
    if inner_stats:
        record["memories"] = {name: {k: float(v) for k, v in st.items()} for name, st in inner_stats.items()}
        _warn_state_norms(record["memories"], state_norm_warn, done, warned)
    return record


def _check_parameters(model: torch.nn.Module, run_dir: Path, done: int, spec: ir.Spec,
                      opt_spec: ir.Optimizer, grad_clip: float | None, ranks: Ranks) -> None:
    """A finite loss can still be followed by an update that overflows the parameters (every
    rank checks its shards; they agree)."""
    from nestdsl.runtime import checkpoint as ckpt

    if ranks.all_ok(_finite(model)):
        return
    last = ckpt.find_latest(run_dir)
    since = f"after step {ckpt.read_meta(last)['step']}" if last is not None else "since the start"
    raise TrainingDiverged(
        f"parameters became non-finite by step {done} ({since}; the loss was still "
        f"finite); stopped. {_checkpoint_note(run_dir)} To stabilise it: "
        f"{_stability_advice(spec, opt_spec, grad_clip, None, memories=False)}."
    )


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
        mems = [(n, m) for n, m in spec.memories.items() if isinstance(m, ir.ParametricMemory)]
        if where:
            mems = [(n, m) for n, m in mems if where == n or where.endswith(f" {n}")] or mems
        for n, m in mems:
            rule = m.rule or ir.Rule()
            preset = "; the presets use 0.1" if isinstance(m, ir.MLPMemory) else ""
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
