"""The kernel registry: which implementation computes a memory, and why the others do not.

Every parametric memory can be computed by several implementations of the same semantics
(docs/design.md §3.1). Each registers one `Kernel`: a name (`nestdsl.vocabulary.KernelName`), a
capability predicate returning a typed `Refusal` (or None), whether it is chosen without being
forced, and the functions that compute: `scan` (a whole sequence, one keyword-only signature
shared by every kernel) and `chunk_step` (one chunk of an MLP memory inside a joint loop —
Hope's self-modifying layer — with `mlp_chunk_step`'s signature; None when it has none):

    reference   the token-by-token oracle (ops/reference.py): any memory; slow, never automatic
    chunked     the closed-form chunk scan in torch (ops/linear_chunked.py, ops/mlp_chunked.py)
    compiled    the same with torch.compile'd per-chunk steps (the model's compile switch)
    triton      the Triton chunk scan for depth-2 MLP memories (ops/triton_mlp.py)
    fla         flash-linear-attention for linear memories equal to one of its kernels
                (ops/fla_linear.py)

``choose`` takes the first automatic candidate that accepts (triton/fla only on CUDA; on CPU the
Triton interpreter is a test vehicle, used only when forced), or the forced one — raising
`KernelRefused` with its reason when it cannot run. `memory_scan` is "choose, then run";
`nestdsl compile --explain` prints the verdicts per layer; ``--kernel NAME`` (or
``LAYER=NAME``) forces one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from nestdsl.vocabulary import KERNEL_NAMES, EraseRate, KernelName, ReadMode, RuleKind

from .linear_chunked import linear_chunk_step, linear_scan_chunked
from .mlp import MLPMemory, NormParams, mlp_forward
from .mlp_chunked import mlp_chunk_step, mlp_scan_chunked
from .objectives import Objective
from .reference import reference_scan
from .state import MemoryState

__all__ = ["KERNELS", "Kernel", "KernelChoice", "KernelRefused", "MemoryCall", "Refusal",
           "ScanInputs", "choose", "compiled_step", "explain", "verdicts"]


@dataclass(frozen=True)
class MemoryCall:
    """What a kernel is asked to compute (the memory's configuration and where it runs)."""

    memory: str | MLPMemory          # "linear" or the MLP's description
    objective: Objective
    rule: RuleKind
    erase: EraseRate
    read: ReadMode
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
class Refusal:
    """Why `kernel` cannot compute a call: a value, printed by `--explain`, raised when forced."""

    kernel: str
    reason: str

    def __str__(self) -> str:
        return f"kernel {self.kernel!r} cannot run this memory: {self.reason}"


class KernelRefused(ValueError):
    """A forced kernel that cannot compute the call (or an unknown kernel name)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


@dataclass(frozen=True)
class ScanInputs:
    """One memory scan, validated and prepared by `memory_scan`: what every kernel's `scan`
    receives. q, k, v are the caller's tensors (fla runs in their dtype); qc, kc, vc and the
    gates, states and norm are in the compute dtype (≥ float32); gates are (B, H, T) or None."""

    q: Tensor
    k: Tensor
    v: Tensor
    qc: Tensor
    kc: Tensor
    vc: Tensor
    lr: Tensor
    retention: Tensor | None
    momentum: Tensor | None
    state: MemoryState               # weights (B, H, out, in), momentum buffers or None
    memory: str | MLPMemory
    objective: Objective
    rule: RuleKind
    read: ReadMode
    chunk_size: int
    erase: EraseRate
    norm: NormParams
    checkpoint_every: int | None
    normalized_lr: bool
    layer_inputs: Callable[..., list[Tensor]] | None = None   # the oracle's a_i (normalized_lr)


ScanFn = Callable[..., tuple[Tensor, MemoryState]]         # scan(*, x: ScanInputs)


@dataclass(frozen=True)
class Kernel:
    name: KernelName
    summary: str
    refuses: Callable[[MemoryCall], str | None]    # None: it can compute this call
    automatic: Callable[[MemoryCall], bool]        # chosen without being forced
    scan: ScanFn
    chunk_step: Callable[[], Callable[..., Any]] | None = None   # the MLP chunk step (lazy)

    def refusal(self, call: MemoryCall) -> Refusal | None:
        why = self.refuses(call)
        return None if why is None else Refusal(self.name, why)


# ---------------------------------------------------------------------------------------------
# What each kernel computes a scan with


_COMPILED: dict[str, Callable[..., Any]] = {}


def compiled_step(kind: str) -> Callable[..., Any]:
    """The ``torch.compile``'d per-chunk step for ``"linear"`` or ``"mlp"`` memories (cached).

    One graph per block/chunk shape and configuration; the loop over chunks stays in Python, so
    compile time does not grow with the sequence length (docs/design.md §6).
    """
    if kind not in _COMPILED:
        fn = linear_chunk_step if kind == "linear" else mlp_chunk_step
        _COMPILED[kind] = torch.compile(fn, dynamic=False)
    return _COMPILED[kind]


def _common(x: ScanInputs) -> dict[str, Any]:
    return dict(lr=x.lr, retention=x.retention, momentum=x.momentum, state=x.state,
                objective=x.objective, rule=x.rule, read=x.read, chunk_size=x.chunk_size,
                erase=x.erase, group=x.checkpoint_every)


def _scan_reference(*, x: ScanInputs) -> tuple[Tensor, MemoryState]:
    if x.memory == "linear":
        def fwd(ws: Sequence[Tensor], inp: Tensor) -> Tensor:
            return inp @ ws[0].mT
    else:
        spec = x.memory
        assert isinstance(spec, MLPMemory)

        def fwd(ws: Sequence[Tensor], inp: Tensor) -> Tensor:
            return mlp_forward(ws, inp, spec, x.norm)
    renorm = isinstance(x.memory, MLPMemory) and x.memory.renorm
    o, w_out, s_out = reference_scan(
        x.qc, x.kc, x.vc, forward=fwd, objective=x.objective, rule=x.rule, lr=x.lr,
        retention=x.retention, momentum=x.momentum, chunk_size=x.chunk_size, read=x.read,
        weights=x.state.weights, moms=x.state.momentum, erase=x.erase,
        layer_inputs=x.layer_inputs, renorm=renorm)
    return o, MemoryState(tuple(w_out), None if s_out is None else tuple(s_out))


def _torch_scan(x: ScanInputs, *, compiled: bool) -> tuple[Tensor, MemoryState]:
    if x.memory == "linear":
        step = compiled_step("linear") if compiled else linear_chunk_step
        return linear_scan_chunked(x.qc, x.kc, x.vc, step=step, **_common(x))
    step = compiled_step("mlp") if compiled else mlp_chunk_step
    return mlp_scan_chunked(x.qc, x.kc, x.vc, spec=cast(MLPMemory, x.memory), step=step, norm=x.norm,
                            normalized_lr=x.normalized_lr, **_common(x))


def _scan_chunked(*, x: ScanInputs) -> tuple[Tensor, MemoryState]:
    return _torch_scan(x, compiled=False)


def _scan_compiled(*, x: ScanInputs) -> tuple[Tensor, MemoryState]:
    return _torch_scan(x, compiled=True)


def _scan_triton(*, x: ScanInputs) -> tuple[Tensor, MemoryState]:
    from . import triton_mlp

    # an MLP memory: `_refuse_triton` refused the linear ones
    return triton_mlp.triton_mlp_scan(x.qc, x.kc, x.vc, spec=cast(MLPMemory, x.memory),
                                      norm=x.norm, **_common(x))


def _scan_fla(*, x: ScanInputs) -> tuple[Tensor, MemoryState]:
    from . import fla_linear

    p = fla_linear.plan(objective=x.objective, rule=x.rule, erase=x.erase, read=x.read,
                        chunk_size=x.chunk_size, retention=x.retention is not None,
                        momentum=x.momentum is not None)
    # a plan, not a reason: `_refuse_fla` refused the calls without one
    return fla_linear.fla_scan(x.q, x.k, x.v, lr=x.lr, retention=x.retention,
                               state=MemoryState(x.state.weights, None),
                               p=cast(fla_linear.FlaPlan, p))


def _triton_chunk_step() -> Callable[..., Any]:
    from .triton_mlp import triton_chunk_step

    return triton_chunk_step


# ---------------------------------------------------------------------------------------------
# What each kernel refuses


def _refuse_reference(c: MemoryCall) -> str | None:
    return ("a joint chunk loop (Hope's self-modifying layer) runs chunk steps: no "
            "token-by-token path" if c.joint else None)


def _refuse_compiled(c: MemoryCall) -> str | None:
    return None if c.compile else "compile is off (--no-compile)"


def _refuse_triton(c: MemoryCall) -> str | None:
    if not isinstance(c.memory, MLPMemory):
        return "linear memory: the Triton scan is for MLP memories (fla serves linear ones)"
    from . import triton_mlp

    if c.normalized_lr:
        return triton_mlp.NO_NORMALIZED_LR
    return triton_mlp.supports(spec=c.memory, objective=c.objective, d_key=c.d_key,
                               d_value=c.d_value, T=c.T if c.T is not None else c.chunk_size,
                               chunk_size=c.chunk_size, dtype=c.dtype, device=c.device,
                               one_chunk=c.joint)


def _refuse_fla(c: MemoryCall) -> str | None:
    if c.memory != "linear":
        return "MLP memory: fla's kernels are linear memories"
    if c.joint:
        return "a joint chunk loop runs MLP chunk steps: fla has none"
    from . import fla_linear

    p = fla_linear.plan(objective=c.objective, rule=c.rule, erase=c.erase, read=c.read,
                        chunk_size=c.chunk_size, retention=c.retention, momentum=c.momentum)
    return fla_linear.refusal(p, dtype=c.dtype, device=c.device, training=c.training)


def _on_cuda(c: MemoryCall) -> bool:
    return c.device.type == "cuda"


KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("triton", "Triton chunk scan, MLP state on chip (ops/triton_mlp.py)",
           _refuse_triton, _on_cuda, _scan_triton, _triton_chunk_step),
    Kernel("fla", "flash-linear-attention chunk kernel (ops/fla_linear.py)", _refuse_fla,
           _on_cuda, _scan_fla),
    Kernel("compiled", "torch chunk scan, torch.compile'd chunk step", _refuse_compiled,
           lambda c: True, _scan_compiled, lambda: compiled_step("mlp")),
    Kernel("chunked", "torch chunk scan, eager", lambda c: None, lambda c: True, _scan_chunked,
           lambda: mlp_chunk_step),
    Kernel("reference", "token-by-token oracle (tests; slow)", _refuse_reference,
           lambda c: False, _scan_reference),
)}
assert tuple(KERNELS) == KERNEL_NAMES, "the registry's order is the vocabulary's"


def verdicts(call: MemoryCall) -> list[tuple[str, Refusal | None]]:
    """(kernel, None if it can compute `call` else its refusal), in order of preference."""
    return [(k.name, k.refusal(call)) for k in KERNELS.values()]


def choose(call: MemoryCall, force: str | None = None) -> Kernel:
    """The kernel that computes `call`: `force` if given (`KernelRefused` with its reason if it
    cannot), else the first automatic candidate that accepts."""
    if force is not None and force != "auto":
        if force not in KERNELS:
            raise KernelRefused(Refusal(force, f"unknown kernel; known: {', '.join(KERNELS)}"))
        refusal = KERNELS[force].refusal(call)
        if refusal is not None:
            raise KernelRefused(refusal)
        return KERNELS[force]
    for k in KERNELS.values():
        if k.automatic(call) and k.refuses(call) is None:
            return k
    return KERNELS["chunked"]    # never reached: chunked accepts every call


@dataclass(frozen=True)
class KernelChoice:
    """What `--explain` and the plan report for one memory: the kernel it runs (or the forced
    kernel's refusal) and every candidate's verdict."""

    label: str                                   # the layer, e.g. "blocks.0.0 (M_mem)"
    memory: str                                  # the spec's memory name (`--kernel NAME=…`)
    chosen: Kernel | Refusal
    verdicts: list[tuple[str, Refusal | None]]
    forced: str | None

    @property
    def shown(self) -> str:
        return self.chosen.name if isinstance(self.chosen, Kernel) else f"error: {self.chosen}"


def explain(label: str, memory: str, call: MemoryCall, forced: str | None) -> KernelChoice:
    """The kernel choice for a planned call; a forced kernel that cannot run is reported."""
    try:
        chosen: Kernel | Refusal = choose(call, forced)
    except KernelRefused as e:
        chosen = e.refusal
    return KernelChoice(label, memory, chosen, verdicts(call), forced)
