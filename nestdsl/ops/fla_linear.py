"""Linear memories through flash-linear-attention (fla) on CUDA, where the semantics are equal.

With chunk size 1 and no momentum, four of nestdsl's linear memories are exactly an fla kernel
(docs/design.md §3.1; states M ∈ R^{Dv×Dk}, fla's h = Mᵀ ∈ R^{K×V}; reads after the write):

    dot, gd:             M_t = α_t M_{t−1} + η_t v_t k_tᵀ          chunk_simple_gla, v ← η v, g = log α
    l2, gd, α = 1:       M_t = M_{t−1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ      chunk_delta_rule, β = η
    dot, dgd, ε = η, α = 1: the same recurrence                            chunk_delta_rule, β = η
    dot, dgd, ε = αη:    M_t = α_t M_{t−1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ
                                                              chunk_gated_delta_rule, β = η, g = log α

Everything else (momentum, reads before the write or at the chunk start, chunk size > 1, l2 with
retention — there the retention acts after the erase, not before as in Gated DeltaNet — or DGD
with an l2 objective, whose erase appears twice) has no fla kernel and stays on nestdsl's form.
fla's delta-rule kernels refuse float32: they run where the inputs are bf16/fp16 (autocast).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .objectives import Objective
from .state import MemoryState

__all__ = ["FlaPlan", "available", "plan", "refusal", "fla_scan"]


class FlaPlan(NamedTuple):
    """Which fla op computes a memory and how its arguments map."""

    op: str                 # chunk_simple_gla | chunk_delta_rule | chunk_gated_delta_rule
    scale_values: bool      # v ← η v (linear attention / GLA): fla has no write strength there
    gate: bool              # g = log α is passed


def available() -> bool:
    """flash-linear-attention is importable."""
    import warnings

    try:
        with warnings.catch_warnings():   # fla warns on import where Triton has no GPU
            warnings.simplefilter("ignore")
            import fla.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or failing to import on this platform
        return False
    return True


def plan(*, objective: Objective, rule: str, erase: str, read: str, chunk_size: int,
         retention: bool, momentum: bool) -> FlaPlan | str:
    """The fla op computing this linear memory exactly, or why there is none."""
    if chunk_size != 1:
        return f"chunk size {chunk_size}: fla's kernels are the exact online (C = 1) recurrences"
    if momentum:
        return "momentum: no fla kernel carries a momentum state"
    if read != "after":
        return f"read {read!r}: fla's kernels read after the write"
    name = objective.name
    if name == "dot" and rule == "gd":
        return FlaPlan("chunk_simple_gla", scale_values=True, gate=retention)
    if rule == "gd" and name == "l2":
        if retention:
            return ("l2 with retention: the retention acts after the erase here, before it in "
                    "Gated DeltaNet (use dot + dgd, erase: retained)")
        return FlaPlan("chunk_delta_rule", scale_values=False, gate=False)
    if rule == "dgd" and name == "dot":
        if erase == "retained":
            return FlaPlan("chunk_gated_delta_rule", scale_values=False, gate=retention)
        if erase == "eta" and not retention:
            return FlaPlan("chunk_delta_rule", scale_values=False, gate=False)
        return f"dot + dgd with erase {erase!r} and retention has no fla kernel"
    return f"objective {name!r} with rule {rule!r} has no fla kernel"


def refusal(p: FlaPlan | str, *, dtype: torch.dtype, device: torch.device,
            training: bool = True) -> str | None:
    """Why fla cannot run a memory with plan `p` here (None: it can)."""
    if isinstance(p, str):
        return p
    if device.type != "cuda":
        return f"needs a CUDA device (got {device.type})"
    if not available():
        return "flash-linear-attention is not installed (pip install 'nestdsl[cuda]')"
    if p.op != "chunk_simple_gla" and dtype not in (torch.bfloat16, torch.float16):
        return f"{p.op} refuses {dtype} inputs (bf16/fp16 only: train under autocast)"
    if training and p.gate and _hopper_gate_trap(device):
        return ("fla refuses the gated backward on Hopper with Triton >= 3.4, < 3.7.1 unless "
                "its tilelang backend is installed (pip install tilelang)")
    return None


def _hopper_gate_trap(device: torch.device) -> bool:
    """Hopper, a Triton in [3.4, 3.7.1) and no tilelang: fla's gated backward refuses to run."""
    import importlib.util

    try:
        import triton
    except ImportError:
        return False
    ver = tuple(int(x) for x in triton.__version__.split("+")[0].split(".")[:3] if x.isdigit())
    major, _ = torch.cuda.get_device_capability(device)
    return (major == 9 and (3, 4) <= ver < (3, 7, 1)
            and importlib.util.find_spec("tilelang") is None)


def _ops() -> dict[str, Callable[..., Any]]:
    from fla import ops

    return {n: getattr(ops, n) for n in ("chunk_simple_gla", "chunk_delta_rule",
                                         "chunk_gated_delta_rule")}


def fla_scan(q: Tensor, k: Tensor, v: Tensor, *, lr: Tensor, retention: Tensor | None,
             state: MemoryState | None, p: FlaPlan,
             ops: dict[str, Callable[..., Any]] | None = None) -> tuple[Tensor, MemoryState]:
    """Run a linear memory through fla. q, k, v: (B, H, T, D) in the kernel's dtype; lr,
    retention: (B, H, T) gates; state: M (B, H, Dv, Dk) or None. `ops` replaces fla's kernels
    by functions of the same signature (tests hold the mapping against fla's naive recurrences).
    Returns o (B, H, T, Dv) and the final state in float32."""
    ops = ops or _ops()

    def swap(x: Tensor) -> Tensor:   # (B, H, T, …) ↔ fla's (B, T, H, …)
        return x.transpose(1, 2)

    dt = q.dtype
    eta = lr.to(dt)
    kw: dict[str, Any] = dict(scale=1.0, output_final_state=True)
    if state is not None:
        kw["initial_state"] = state.weights[0].mT.float().contiguous()   # (B, H, K, V)
    g = swap(retention.float().clamp_min(1e-30).log()) if p.gate and retention is not None else None
    if p.op == "chunk_simple_gla":
        vv = v * eta[..., None] if p.scale_values else v
        o, h = ops[p.op](swap(q), swap(k), swap(vv), g=g, **kw)
    elif p.op == "chunk_delta_rule":
        o, h = ops[p.op](swap(q), swap(k), swap(v), swap(eta), **kw)
    else:
        if g is None:
            g = torch.zeros(q.shape[0], q.shape[2], q.shape[1], device=q.device)
        o, h = ops[p.op](swap(q), swap(k), swap(v), g, swap(eta), **kw)
    return swap(o), MemoryState((h.mT.float(),), None)
