"""Data-parallel training with torch.distributed (gloo on CPU, NCCL on CUDA).

`torchrun --nproc_per_node N -m nestdsl train SPEC` sets RANK/WORLD_SIZE; each rank takes its
slice of the global batch (whole sequences: per-sequence memory state stays on its rank) and DDP
averages gradients. The train loop weights each rank's mean loss by its share of the scored
tokens, so the average is exactly the gradient of the global-batch mean loss (tested against
one process with gloo). It refuses what DDP cannot honour: a global batch not divisible by the
world size, and models whose loss differentiates inside the forward (the CMS task sweep).
Rank 0 alone writes checkpoints and metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Distributed:
    rank: int
    world_size: int
    device: str

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return DDP(module, device_ids=ids)

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
