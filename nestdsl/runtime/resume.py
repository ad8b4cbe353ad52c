"""What a checkpoint carries beyond parameters and optimizer states, so a resumed run continues
exactly: the metrics history, the partial loss average of the current log window, and the
gradients persistent levels have accumulated since their last update."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nestdsl.runtime import checkpoint as ckpt


@dataclass
class LoopState:
    """The loop's own state at a step boundary (besides model and optimizers)."""

    step: int
    history: list[dict[str, float]]
    loss_acc: torch.Tensor                    # sum of the losses of the current log window
    n_acc: int                                # steps in it

    @classmethod
    def fresh(cls, device: str) -> LoopState:
        return cls(0, [], torch.zeros((), device=device), 0)


def extra_of(state: LoopState, level_opts: list[Any]) -> dict[str, Any]:
    """The checkpoint's `extra`: loop state and persistent levels' accumulated gradients."""
    accum: dict[str, torch.Tensor] = {}
    for lo in level_opts:
        if lo.every_k > 1:
            for i, p in enumerate(lo.params):
                if p.grad is not None:
                    accum[f"{lo.name}.{i}"] = p.grad.detach()
    return {"history": state.history, "accum": accum, "loss_acc": state.loss_acc.detach().clone(),
            "n_acc": state.n_acc}


def restore(run_dir: Path, *, model: torch.nn.Module, level_opts: list[Any], record: dict[str, Any],
            device: str, rank: int, force: bool = False,
            say: Callable[[str], None] | None = None) -> LoopState:
    """Load the newest checkpoint that verifies into model and optimizers (RNG states too) and
    return the loop state; a fresh `LoopState` when the run has none. Unreadable newer
    checkpoints are set aside with a warning (`checkpoint.resume_latest`). The checkpoint's spec
    must mean the same as `record`'s (`spec.identity`; `force`: any); `say` (rank 0) hears which
    step resumes and which run fields (steps, logging) changed."""
    loaded, skipped = ckpt.resume_latest(
        run_dir, model=model, optimizer=[lo.optimizer for lo in level_opts],
        identity=record["identity"], force=force, restore_rng=True, device=device,
        move_aside=rank == 0, rank=rank,
        level_params={f"{lo.name}.{i}": p for lo in level_opts for i, p in enumerate(lo.params)})
    state = LoopState.fresh(device)
    say = say if rank == 0 else None
    if loaded is None:
        if say is not None:
            say(f"no checkpoint in {run_dir}: starting fresh")
        return state
    if skipped and rank == 0:
        import warnings

        for note in skipped:
            warnings.warn(f"{note}; resuming from {loaded.path.name}", stacklevel=3)
    if say is not None:
        changes = _run_changes(loaded.meta, record)
        forced = _forced_changes(loaded.meta, record) if force else []
        say(f"resuming from step {loaded.step} ({loaded.path.name})"
            + (f"; changed: {', '.join(changes)}" if changes else "")
            + (f"; loaded with --force despite: {', '.join(forced)}" if forced else ""))
    extra = loaded.extra or {}
    state.step = loaded.step
    state.history = list(extra.get("history", []))
    if "loss_acc" in extra:
        state.loss_acc = extra["loss_acc"].to(device).clone()
        state.n_acc = int(extra.get("n_acc", 0))
    accum = extra.get("accum", {})
    for lo in level_opts:
        for i, p in enumerate(lo.params):
            key = f"{lo.name}.{i}"
            if key in accum:
                p.grad = accum[key].to(device=p.device, dtype=p.dtype).clone()
    return state


def _run_changes(meta: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The run fields (steps, logging) that differ from the checkpoint's, as 'a: x → y'."""
    from nestdsl.spec.identity import differences

    stored = (meta.get("spec") or {}).get("run")
    if stored is None:
        return []
    return [str(d) for d in differences(stored, record["run"]) if d.path not in ("name", "doc")]


def _forced_changes(meta: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The identity fields that differ from the checkpoint's (what --force let through)."""
    from nestdsl.spec.identity import differences

    stored = (meta.get("spec") or {}).get("identity")
    return [] if stored is None else [str(d) for d in differences(stored, record["identity"])]
