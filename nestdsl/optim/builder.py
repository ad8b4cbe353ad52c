"""Build a torch optimizer from an optimizer spec (`nestdsl.spec.ir.Optimizer`).

`build(spec, params)` classifies every trainable parameter, routes it through the spec's
`groups` (first matching group wins; unmatched parameters use the spec's own type/lr/decay),
and returns one optimizer per type -- or a `MultiOptimizer` wrapping several when the groups
mix types (e.g. Muon on matrices, AdamW on vectors and embeddings).

Parameter classes:
* ``embeddings``: the name contains "embed", "wte" or "lm_head", or the tensor belongs to an
  `nn.Embedding` (detectable when a module is passed, or through `build(..., embedding_ids=)`);
* ``matrices``: ndim >= 2 and not an embedding;
* ``vectors``: ndim < 2;
* ``all``: everything.
Unnamed parameters (a plain iterable of tensors) can never be embeddings.

A group's optimizer is `ir.group_optimizer(spec, group)`: the hyper-parameters the spec's type
shares with the group's type, then the group's own (nestdsl/spec/optimizers.py). AdamW uses
betas = (beta, beta2) and eps.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from nestdsl.optim.levels import optimizer_spec
from nestdsl.spec import ir

__all__ = ["MultiOptimizer", "build", "classify", "make_optimizer"]

_EMBED_MARKERS = ("embed", "wte", "lm_head")


def make_optimizer(spec: ir.Optimizer, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The torch optimizer of a typed optimizer spec over `param_groups` (dicts with params, lr,
    weight_decay): its model's `implementation` with lr, weight_decay and the type's
    hyper-parameters as keywords."""
    module, _, name = type(spec).implementation.partition(":")
    constructor: Callable[..., torch.optim.Optimizer] = getattr(importlib.import_module(module), name)
    return constructor(param_groups, lr=spec.lr, weight_decay=spec.weight_decay, **spec.hyper_values())


def classify(name: str | None, p: Tensor, embedding_ids: set[int] = frozenset()) -> set[str]:  # type: ignore[assignment]
    """The parameter classes (`all`, `embeddings`, `matrices`, `vectors`) `p` belongs to."""
    classes = {"all"}
    is_embed = id(p) in embedding_ids or (
        name is not None and any(m in name.lower() for m in _EMBED_MARKERS)
    )
    if is_embed:
        classes.add("embeddings")
    if p.ndim >= 2 and not is_embed:
        classes.add("matrices")
    if p.ndim < 2:
        classes.add("vectors")
    return classes


def _named(params: Any) -> tuple[list[tuple[str | None, Tensor]], set[int]]:
    """Normalise a module / named params / plain params to [(name or None, tensor)]."""
    if isinstance(params, nn.Module):
        emb = {
            id(m.weight) for m in params.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
        }
        return list(params.named_parameters()), emb
    out: list[tuple[str | None, Tensor]] = []
    for item in params:
        if isinstance(item, Tensor):
            out.append((None, item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor):
            out.append((str(item[0]), item[1]))
        else:
            raise TypeError(
                "build() takes an nn.Module, an iterable of tensors or of (name, tensor) pairs; "
                f"got an item of type {type(item).__name__}"
            )
    return out, set()


def build(
    spec: Any, params_or_named_params: Any, *, embedding_ids: set[int] | None = None
) -> torch.optim.Optimizer:
    """A `torch.optim.Optimizer` for `spec` over the given parameters.

    `spec`: the name of a shipped optimizer spec (e.g. ``"m3"``), the path of an optimizer spec
    file, a loaded `ir.Spec` (its outer optimizer) or an IR `Optimizer` node.

    Accepts an `nn.Module`, an iterable of `(name, tensor)` pairs (e.g. `model.named_parameters()`)
    or of tensors. Parameters with `requires_grad=False` and duplicates (tied weights) are
    skipped. The routing decisions are recorded in each param group's `"names"` and `"type"`.
    `embedding_ids`: ids of tensors to treat as embeddings whatever their names (e.g. the
    weights of the model's `nn.Embedding`s when only some of its parameters are passed).
    """
    spec = optimizer_spec(spec)
    named, found_ids = _named(params_or_named_params)
    embedding_ids = found_ids | set(embedding_ids or ())
    seen: set[int] = set()
    routes = [(grp.params, ir.group_optimizer(spec, grp)) for grp in spec.groups]
    # one torch optimizer per (type, hyper-parameters); within it one param group per
    # (lr, weight_decay). Insertion order keeps the result stable.
    buckets: dict[tuple[Any, ...], tuple[ir.Optimizer, dict[tuple[float, float], tuple[list[str], list[Tensor]]]]] = {}
    for i, (name, p) in enumerate(named):
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        classes = classify(name, p, embedding_ids)
        routed = next((opt for params, opt in routes if params in classes), spec)
        key = (routed.type, tuple(routed.hyper_values().items()))
        _, by_rate = buckets.setdefault(key, (routed, {}))
        names, tensors = by_rate.setdefault((routed.lr, routed.weight_decay), ([], []))
        names.append(name if name is not None else f"param{i}")
        tensors.append(p)
    if not buckets:
        raise ValueError("build(): no trainable parameters")
    optimizers = [
        make_optimizer(routed, [{"params": tensors, "lr": lr, "weight_decay": wd, "names": names,
                                 "type": routed.type}
                                for (lr, wd), (names, tensors) in by_rate.items()])
        for routed, by_rate in buckets.values()
    ]
    return optimizers[0] if len(optimizers) == 1 else MultiOptimizer(optimizers)


class MultiOptimizer(torch.optim.Optimizer):
    """Several optimizers stepping disjoint parameter sets as one `torch.optim.Optimizer`.

    `param_groups` is the concatenation of the children's groups (the same dict objects, so LR
    schedulers and `zero_grad` act on the children); `state_dict()` nests the children's.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        self._ready = False
        all_params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]
        super().__init__(all_params, {})
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]
        self._ready = True

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["optimizers"]
        if len(saved) != len(self.optimizers):
            raise ValueError(
                f"state has {len(saved)} optimizers, this MultiOptimizer has {len(self.optimizers)}"
            )
        for opt, sd in zip(self.optimizers, saved, strict=True):
            opt.load_state_dict(sd)
        # torch's load_state_dict replaces each child's param_group dicts with new ones: relink,
        # or an lr schedule writing `self.param_groups[i]["lr"]` would no longer reach them.
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self._ready:
            super().add_param_group(param_group)  # called by torch's __init__
            return
        raise TypeError("a MultiOptimizer routes groups by type: add the group to one of `.optimizers` instead")

    def __repr__(self) -> str:
        inner = ", ".join(type(o).__name__ for o in self.optimizers)
        return f"MultiOptimizer({inner})"
