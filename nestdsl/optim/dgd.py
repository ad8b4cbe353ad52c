"""DGD, Delta Gradient Descent, as an outer optimizer for linear layers (Hope's inner rule).

Paper: arXiv Eqs. 55-57, NeurIPS Eqs. 27-29. GD is one step on the dot objective
<W x, dL/dy>; DGD instead regresses W x onto the self-generated target u = -dL/dy with a
proximal term, which by Sherman-Morrison adds a data-dependent decay:

    W <- W (I - eta' x x^T) - eta * dL/dy (x) x,        eta' = eta / (1 + eta ||x||^2)

For a batch (every leading dimension of the layer input counts as a sample) nestdsl uses the
mean input second moment C = X^T X / N and ||x||^2 -> tr(C):

    W <- W - eta' W C - eta * grad_W L,                  eta' = eta / (1 + eta tr(C))

`grad_W L` is the ordinary `.grad` (= sum_b dL/dy_b x_b^T with the loss's own reduction). The
gradient term keeps eta (as in the brief and the NeurIPS print; Eq. 57's exact solution has
eta' there too, which is the same up to O(eta^2 ||x||^2)), so DGD = GD plus an input-dependent
erase; the erase factor (I - eta' C) has eigenvalues in (0, 1] for any eta > 0.

The inputs x are captured by forward hooks on `nn.Linear` modules (`DGD.attach(model)` or
`register_dgd_hooks(model, optimizer)`); the hook accumulates X^T X in float32 while autograd
is enabled (so evaluation passes under `torch.no_grad()` do not count; several forwards
before one step -- gradient accumulation -- average together) and the step consumes it.
Under data parallelism (torch.distributed initialised, world size > 1) the step first sums the
captured X^T X and sample counts over the ranks (one all-reduce per weight, in parameter
order), so C is the global batch's, as the gradient DDP averages is: every rank takes the same
step, equal to a single process on the whole batch.
**Fallback:** a parameter with no captured inputs since the last step (biases, embeddings,
weights of modules that were not hooked) takes a plain GD step W <- W - eta * grad.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from nestdsl.optim._base import DeepOptimizer

__all__ = ["DGD", "register_dgd_hooks"]


class DGD(DeepOptimizer):
    """W <- W - eta' W C - eta g for hooked nn.Linear weights; W <- W - eta g otherwise.

    State (float32): `step` (int). The input moments captured since the last `step()` (consumed
    by the next one) are saved under `state_dict()["captured"]` too, so a checkpoint taken in
    the middle of a gradient-accumulation window resumes exactly.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"invalid hyper-parameters lr={lr} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        # weight tensor -> [sum_b x_b x_b^T (float32), number of samples]
        self._captured: dict[Tensor, list[Any]] = {}

    def attach(self, model: nn.Module) -> list[RemovableHandle]:
        """Register input-capturing forward hooks on every nn.Linear whose weight this
        optimizer owns. Returns the hook handles (call `.remove()` to detach)."""
        owned = {id(p) for group in self.param_groups for p in group["params"]}
        handles: list[RemovableHandle] = []
        for module in model.modules():
            if isinstance(module, nn.Linear) and id(module.weight) in owned:
                handles.append(module.register_forward_hook(self._make_hook(module.weight)))
        return handles

    def _make_hook(self, weight: Tensor) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not torch.is_grad_enabled():
                return
            x = args[0].detach().reshape(-1, weight.shape[1]).to(torch.float32)
            gram = x.T @ x
            slot = self._captured.get(weight)
            if slot is None:
                self._captured[weight] = [gram, x.shape[0]]
            else:
                slot[0] = slot[0] + gram
                slot[1] += x.shape[0]

        return hook

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        self._all_reduce_captured()
        return super().step(closure)

    def _all_reduce_captured(self) -> None:
        """Sum the captured moments over the ranks (no-op in one process). Every rank runs the
        same model, so every rank holds the same weights here, in the same order."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        for p in self._all_params():
            slot = self._captured.get(p)
            if slot is None:
                continue
            gram, n = slot
            packed = torch.cat([gram.reshape(-1), gram.new_tensor([float(n)])])
            dist.all_reduce(packed)
            d = gram.shape[0]
            # the count stays a 0-d tensor: no host synchronisation
            self._captured[p] = [packed[:-1].reshape(d, d), packed[-1]]

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        pass

    def _direction(
        self, p: Tensor, w: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Tensor:
        lr: float = group["lr"]
        slot = self._captured.pop(p, None)
        if slot is None or p.ndim != 2:
            return g.mul(-lr)  # fallback: plain GD
        gram, n = slot
        C = gram / n
        eta_prime = lr / (1.0 + lr * torch.trace(C))  # 0-d tensor, no host sync
        # W C: (W X^T) X would be cheaper for few samples, but only C is kept
        erase = w @ C
        return erase.mul_(-eta_prime).sub_(g, alpha=lr)

    def _all_params(self) -> list[Tensor]:
        return list(chain.from_iterable(g["params"] for g in self.param_groups))

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        index = {id(p): i for i, p in enumerate(self._all_params())}
        sd["captured"] = {
            index[id(w)]: {"gram": gram, "n": int(n)}
            for w, (gram, n) in self._captured.items()
            if id(w) in index
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        captured = state_dict.pop("captured", None) or {}
        super().load_state_dict(state_dict)
        params = self._all_params()
        self._captured = {}
        for i, slot in captured.items():
            w = params[int(i)]
            gram = slot["gram"].to(device=w.device, dtype=torch.float32, copy=True)
            self._captured[w] = [gram, int(slot["n"])]

    def zero_captured(self) -> None:
        """Drop inputs captured since the last step (e.g. after a skipped step)."""
        self._captured.clear()


def register_dgd_hooks(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
    """Attach DGD's input hooks for `optimizer` (a DGD, or a `MultiOptimizer` containing DGDs)
    to the nn.Linear layers of `model`. Returns the handles; no-op for other optimizers."""
    handles: list[RemovableHandle] = []
    children = getattr(optimizer, "optimizers", [optimizer])
    for opt in children:
        if isinstance(opt, DGD):
            handles.extend(opt.attach(model))
    return handles
