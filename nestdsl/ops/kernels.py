"""The kernel registry: which implementation computes a memory, and why the others do not.

Every parametric memory can be computed by several implementations of the same semantics
(design.md §3.1); each has a capability predicate that names why it refuses a configuration:

    reference   the token-by-token oracle (ops/reference.py): any memory; slow, never automatic
    chunked     the closed-form chunk scan in torch (ops/linear_chunked.py, ops/mlp_chunked.py)
    compiled    the same with torch.compile'd per-chunk steps (the model's compile switch)
    triton      the Triton chunk scan for depth-2 MLP memories (ops/triton_mlp.py)
    fla         flash-linear-attention for linear memories equal to one of its kernels
                (ops/fla_linear.py)

``choose`` takes the first automatic candidate that accepts (triton/fla only on CUDA; on CPU the
Triton interpreter is a test vehicle, used only when forced), or the forced one — refusing with
its reason when it cannot run. `nestdsl compile --explain` prints the verdicts per layer;
``--kernel NAME`` (or ``LAYER=NAME``) forces one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .mlp import MLPMemory
from .objectives import Objective

__all__ = ["MemoryCall", "Kernel", "KERNELS", "verdicts", "choose"]


@dataclass(frozen=True)
class MemoryCall:
    """What a kernel is asked to compute (the memory's configuration and where it runs)."""

    memory: str | MLPMemory          # "linear" or the MLP's description
    objective: Objective
    rule: str
    erase: str
    read: str
    chunk_size: int
    retention: bool
    momentum: bool
    d_key: int
    d_value: int
    device: torch.device
    dtype: torch.dtype               # of q, k, v (bf16 under autocast)
    compile: bool                    # the model's compile switch
    training: bool = True
    T: int | None = None             # None: checked per call (plans are made before data)
    joint: bool = False              # a chunk step inside a joint loop (Hope's self-modifying
                                     # layer): only chunk-step kernels apply
    normalized_lr: bool = False      # the per-layer normalised step (rule.normalized_lr)


@dataclass(frozen=True)
class Kernel:
    name: str
    summary: str
    refuses: Callable[[MemoryCall], str | None]    # None: it can compute this call
    automatic: Callable[[MemoryCall], bool]        # chosen without being forced


def _refuse_reference(c: MemoryCall) -> str | None:
    return ("a joint chunk loop (Hope's self-modifying layer) runs chunk steps: no "
            "token-by-token path" if c.joint else None)


def _refuse_compiled(c: MemoryCall) -> str | None:
    return None if c.compile else "compile is off (--no-compile)"


def _refuse_triton(c: MemoryCall) -> str | None:
    if c.memory == "linear":
        return "linear memory: the Triton scan is for MLP memories (fla serves linear ones)"
    from . import triton_mlp

    if c.normalized_lr:
        return triton_mlp.NO_NORMALIZED_LR
    return triton_mlp.supports(spec=c.memory, objective=c.objective, d_key=c.d_key,  # type: ignore[arg-type]
                               d_value=c.d_value, T=c.T if c.T is not None else c.chunk_size,
                               chunk_size=c.chunk_size, dtype=c.dtype, device=c.device,
                               one_chunk=c.joint)


def _refuse_fla(c: MemoryCall) -> str | None:
    if c.memory != "linear":
        return "MLP memory: fla's kernels are linear memories"
    from . import fla_linear

    p = fla_linear.plan(objective=c.objective, rule=c.rule, erase=c.erase, read=c.read,
                        chunk_size=c.chunk_size, retention=c.retention, momentum=c.momentum)
    return fla_linear.refusal(p, dtype=c.dtype, device=c.device, training=c.training)


def _on_cuda(c: MemoryCall) -> bool:
    return c.device.type == "cuda"


KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("triton", "Triton chunk scan, MLP state on chip (ops/triton_mlp.py)",
           _refuse_triton, _on_cuda),
    Kernel("fla", "flash-linear-attention chunk kernel (ops/fla_linear.py)", _refuse_fla,
           _on_cuda),
    Kernel("compiled", "torch chunk scan, torch.compile'd chunk step", _refuse_compiled,
           lambda c: True),
    Kernel("chunked", "torch chunk scan, eager", lambda c: None, lambda c: True),
    Kernel("reference", "token-by-token oracle (tests; slow)", _refuse_reference,
           lambda c: False),
)}


def verdicts(call: MemoryCall) -> list[tuple[str, str | None]]:
    """(kernel, None if it can compute `call` else why not), in order of preference."""
    return [(k.name, k.refuses(call)) for k in KERNELS.values()]


def choose(call: MemoryCall, force: str | None = None) -> str:
    """The kernel that computes `call`: `force` if given (ValueError with its reason if it
    cannot), else the first automatic candidate that accepts."""
    if force is not None and force != "auto":
        if force not in KERNELS:
            raise ValueError(f"unknown kernel {force!r}; known: {', '.join(KERNELS)}")
        why = KERNELS[force].refuses(call)
        if why is not None:
            raise ValueError(f"kernel {force!r} cannot run this memory: {why}")
        return force
    for k in KERNELS.values():
        if k.automatic(call) and k.refuses(call) is None:
            return k.name
    return "chunked"    # never reached: chunked accepts every call
