"""Training past one process with torch.distributed (gloo on CPU, NCCL on CUDA).

`torchrun --nproc_per_node N -m nestdsl train SPEC` sets RANK/WORLD_SIZE; each rank takes its
slice of the global batch (whole sequences: per-sequence memory state stays on its rank). The
train loop weights each rank's mean loss by its share of the scored tokens, so averaging the
ranks' gradients gives exactly the gradient of the global-batch mean loss (tested against one
process with gloo). `train.parallel` (or `--parallel`) picks how the ranks share the model:

- `ddp`: every rank holds the whole model; `DistributedDataParallel` all-reduces gradients
  during the backward. A model whose loss differentiates inside its forward (the CMS `task`
  sweep: `torch.autograd.grad` per chunk, and its piecewise backward) cannot go through DDP's
  reducer, which expects each parameter's gradient once per backward: such a model is not
  wrapped, and `sync_gradients` all-reduces every gradient once after the backward instead
  (one flat buffer), which is the same average.
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`). Every block is its own unit; the root
  unit holds the embedding, final norm and head. Parameters, gradients and optimizer states
  are sharded (DTensors); fast-weight states are activations of the forward, per sequence, and
  never sharded; meta-learned initial states and persistent CMS levels are parameters like any
  other. A persistent level (period k > 1) accumulates its reduce-scattered gradient shards for
  k steps: its parameters share their block's unit, because FSDP2 gathers a unit's parameters
  when that module's `forward` runs and the CMS reads its stages' weights inside the layer's
  forward, so the level cannot be its own unit that skips the reduce-scatter on the k - 1
  steps it does not update (the sum is the same; the traffic is one reduce-scatter per step).
  `train.precision: bf16` becomes the mixed-precision policy (bf16 parameters in compute, fp32
  gradient reduction).

Checkpoints: one process and DDP write the safetensors format from rank 0 (the whole state);
FSDP writes a sharded checkpoint with torch.distributed.checkpoint (`runtime/sharded.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Distributed:
    rank: int
    world_size: int
    device: str

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP around `module` (the loss module)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return DDP(module, device_ids=ids)

    def shard(self, root: torch.nn.Module, units: list[torch.nn.Module], precision: str,
              keep_gathered: bool = False) -> None:
        """FSDP2 in place: each of `units` (innermost first) is one unit, `root` the root one.
        `keep_gathered`: a unit's parameters stay gathered from its first forward until
        `DataParallel.after_backward` reshards them (the CMS task sweep)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if precision == "bf16" else MixedPrecisionPolicy())
        for m in (*units, root):
            sharded = fully_shard(m, mp_policy=policy, reshard_after_forward=not keep_gathered)
            if keep_gathered:
                sharded.set_reshard_after_backward(False)

    def close(self, *, ok: bool = True) -> None:
        """Tear the process group down.

        On success every rank first meets at a barrier, so no rank closes its connections while
        a peer still has gloo work in flight (a rank torn down early was seen to abort its peer
        with SIGABRT), and unreferenced DDP reducers are collected before the group goes. On
        failure the group is left alone: the barrier would wait for peers that may never come,
        and torchrun stops them once this rank exits non-zero with its error printed.
        """
        import gc

        import torch.distributed as dist

        if not ok or not dist.is_initialized():
            return
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def sync_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Average every gradient over the ranks with one all-reduce of a flat buffer (the models DDP
    cannot wrap). Ranks run the same graph, so the same parameters have gradients everywhere."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(synced)


def from_env(device: str) -> Distributed | None:
    """A Distributed context when launched by torchrun (WORLD_SIZE > 1), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank=rank, world_size=world, device=device)


@dataclass
class DataParallel:
    """How this process runs the loss module: as is (one process), under DDP, with one gradient
    all-reduce after the backward (`sync_gradients`), or sharded by FSDP2. The loop calls
    `module(...)`, the backward, then `after_backward`."""

    module: torch.nn.Module
    world: int = 1
    sharded: bool = False
    manual_sync: bool = False
    # FSDP units kept gathered through the step (the CMS task sweep: its inner `autograd.grad`
    # calls would otherwise reshard them in the middle of the forward); resharded after backward
    gathered: list[Any] = field(default_factory=list)

    @classmethod
    def wrap(cls, system: Any, distributed: Distributed | None, parallel: str,
             precision: str) -> DataParallel:
        from nestdsl.runtime.train import LossModule

        loss = LossModule(system.model)
        if distributed is None:
            return cls(loss)
        world = distributed.world_size
        sweep = bool(getattr(system.model, "uses_task_sweep", False))
        if parallel == "fsdp":
            names = {id(p): n for n, p in system.model.named_parameters()}
            units = list(getattr(system.model, "blocks", []))
            distributed.shard(loss, units, precision, keep_gathered=sweep)
            rebind_levels(system, names)
            if sweep:
                system.model.sweep_pieces = False
                return cls(loss, world, sharded=True, gathered=[*units, loss])
            return cls(loss, world, sharded=True)
        if sweep:
            return cls(loss, world, manual_sync=True)
        return cls(distributed.wrap(loss), world)

    def after_backward(self) -> None:
        if self.manual_sync:
            sync_gradients([p for p in self.module.parameters() if p.requires_grad], self.world)
        for unit in self.gathered:
            unit.reshard()


def rebind_levels(system: Any, names: dict[int, str]) -> None:
    """`fully_shard` replaces every parameter by a sharded one: point the levels' parameter lists
    (by name) at the new objects, so the level optimizers step what the model uses."""
    current = dict(system.model.named_parameters())
    for lvl in system.levels:
        lvl.params[:] = [current[names[id(p)]] for p in lvl.params]
