"""Shared machinery of the nestdsl optimizers: the per-tensor step loop and tensor helpers.

Conventions every optimizer in this package follows (docs/design.md §4, §6):

* **State dtype.** All optimizer state is kept in float32, whatever the parameter dtype; the
  update is computed in float32 and written back with one `copy_` into the parameter's dtype
  (bfloat16 params therefore get float32 "master" statistics but no float32 master weights).
  `load_state_dict` keeps the saved float32 state as float32 (torch's default would cast it to
  the parameter dtype, which would break exact save/restore for bfloat16 params).
* **Decoupled weight decay.** `W <- W (1 - lr * weight_decay)` is applied before the update,
  as in AdamW; the update itself never sees the decay term.
* **No host synchronisation.** `step()` never calls `.item()`, `.cpu()`, or branches on tensor
  values; hyper-parameters are Python floats and the step counter is a Python int kept in the
  per-parameter state (so it round-trips through `state_dict`).
* Parameters whose `.grad` is None are skipped (their state is not created or advanced).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor

__all__ = ["OUTPUTS", "DeepOptimizer", "as_rows", "check_output", "newton_schulz", "ns_shape_scale",
           "orthogonalized", "zeros_f32"]

# Muon's quintic Newton-Schulz coefficients (Jordan et al. 2024): they push every singular
# value of a unit-Frobenius-norm matrix into roughly [0.7, 1.2] within 5 iterations.


def newton_schulz(G: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """`nestdsl.ops.newton_schulz` computed in float32 (arXiv Eqs. 38–44: k Newton-Schulz steps
    are k inner GD steps on the orthogonality objective, Eq. 43-44). The optimizers keep float32
    state, and float32 keeps the CPU reference tests exact; a zero matrix maps to zero."""
    from nestdsl.ops.newton_schulz import newton_schulz as _ns

    return _ns(G.to(torch.float32), steps=steps, eps=eps)


def ns_shape_scale(rows: int, cols: int) -> float:
    """Muon's shape factor max(1, rows/cols)^0.5 for a (rows, cols) update (Jordan et al.)."""
    return max(1.0, rows / cols) ** 0.5


#: What an optimizer does with its momentum memory's read before the parameters take it.
OUTPUTS = ("identity", "newton_schulz")


def check_output(output: str, ns_steps: int) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; choose one of {', '.join(OUTPUTS)}")
    if ns_steps < 1:
        raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")


def orthogonalized(delta: Tensor, steps: int, lr: float) -> Tensor:
    """The Newton-Schulz output (NL Eq. 42-44) wrapped around any momentum memory's read:
    lr · s · NS_k(ΔW) with Muon's shape scale s. NS is scale-invariant, so the learning rate is
    applied after it (momentum with this output is Muon up to where lr enters the momentum)."""
    rows = as_rows(delta)
    return newton_schulz(rows, steps).mul_(lr * ns_shape_scale(*rows.shape)).reshape(delta.shape)


def zeros_f32(p: Tensor) -> Tensor:
    """A contiguous float32 zero buffer shaped like `p` (contiguous so `as_rows` is a view)."""
    return torch.zeros(p.shape, dtype=torch.float32, device=p.device)


def as_rows(t: Tensor) -> Tensor:
    """The 2-D view used by matrix-valued updates: (out, in...) -> (out, prod(in)); 1-D -> (1, n).

    Newton-Schulz, Delta momentum's erase term and Muon all need a matrix; conv kernels are
    flattened over their input dimensions (the usual Muon convention), vectors are one row.
    """
    if t.ndim == 0:
        return t.reshape(1, 1)
    if t.ndim == 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


class DeepOptimizer(torch.optim.Optimizer, metaclass=ABCMeta):
    """Base class: a per-tensor loop calling `_direction` for the additive update Delta W.

    Subclasses implement `_init_state(p, state, group)` and
    `_direction(w, g, state, group) -> Tensor` where `w`, `g` are float32 copies/views of the
    parameter and its gradient; the base applies `W <- W (1 - lr*wd) + out(Delta W)`, where
    `out` is the group's `output` (composable with every subclass that passes one): identity,
    or `orthogonalized` (Newton-Schulz, `ns_steps` iterations).
    """

    @abstractmethod
    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Create the per-parameter state (momentum buffers, ...)."""

    @abstractmethod
    def _direction(
        self, p: Tensor, w: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Tensor:
        """The additive update Delta W for one parameter (float32)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr: float = group["lr"]
            wd: float = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    self._init_state(p, state, group)
                state["step"] += 1
                # float32 views for float32 params (in-place on p), float32 copies otherwise
                w = p if p.dtype == torch.float32 else p.to(torch.float32)
                g = p.grad.to(torch.float32)
                delta = self._direction(p, w, g, state, group)
                if group.get("output", "identity") == "newton_schulz":
                    delta = orthogonalized(delta, group["ns_steps"], lr)
                if wd != 0.0:
                    w.mul_(1.0 - lr * wd)
                w.add_(delta)
                if w is not p:
                    p.copy_(w)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts floating state to the param dtype; restore the saved (float32) dtype so a
        # bfloat16 run continues bit-identically after a save/restore.
        saved_ids: Iterable[int] = chain.from_iterable(
            g["params"] for g in state_dict["param_groups"]
        )
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for sid, p in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(sid)
            if not saved:
                continue
            for k, v in saved.items():
                if isinstance(v, Tensor) and v.is_floating_point():
                    self.state[p][k] = v.to(device=p.device, dtype=v.dtype, copy=True)
