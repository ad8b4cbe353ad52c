"""One spec model per optimizer type (nestdsl/spec/optimizers.py): its fields are what its torch
class takes, shared hyper-parameters mean the same everywhere, and groups inherit, then override."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
from torch import nn

from nestdsl.optim import build
from nestdsl.spec import ir


@pytest.mark.parametrize("kind", list(ir.OPTIMIZER_MODELS))
def test_each_type_s_implementation_takes_exactly_its_fields(kind: str) -> None:
    model = ir.OPTIMIZER_MODELS[kind]
    module, _, name = model.implementation.partition(":")
    constructor = getattr(importlib.import_module(module), name)
    params = inspect.signature(constructor).parameters
    takes = {n for n in params if n not in ("params", "self")}
    assert takes == {"lr", "weight_decay", *model.hyper_parameters()}


def test_a_hyper_parameter_has_one_default_and_one_range_across_types() -> None:
    # what keeps a group that switches type reading the values the flat record gave it
    seen: dict[str, tuple[object, object]] = {}
    for model in ir.OPTIMIZER_MODELS.values():
        for name in model.hyper_parameters():
            info = model.model_fields[name]
            meaning = (info.default, tuple(repr(m) for m in info.metadata))
            assert seen.setdefault(name, meaning) == meaning, name


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8))


def test_a_group_inherits_the_shared_hyper_parameters_then_its_own_override() -> None:
    spec = ir.optimizer(type="muon", lr=0.02, beta=0.95, groups=[
        {"params": "vectors", "type": "adamw", "lr": 3e-3},
        {"params": "embeddings", "type": "adamw", "beta2": 0.99, "eps": 1e-6},
    ])
    vectors, embeddings = (ir.group_optimizer(spec, g) for g in spec.groups)
    assert (vectors.beta, vectors.beta2, vectors.eps, vectors.lr) == (0.95, 0.999, 1e-8, 3e-3)
    assert (embeddings.beta, embeddings.beta2, embeddings.eps, embeddings.lr) == (0.95, 0.99, 1e-6, 0.02)
    opt = build(spec, _net())
    # two AdamW groups with different hyper-parameters are two torch optimizers
    kinds = [type(o).__name__ for o in opt.optimizers]
    assert kinds == ["AdamW", "Muon", "AdamW"]
    betas = {g["names"][0]: g["betas"] for o in opt.optimizers for g in o.param_groups if "betas" in g}
    assert betas == {"0.weight": (0.95, 0.99), "1.bias": (0.95, 0.999)}


def test_groups_without_overrides_share_one_optimizer_per_type() -> None:
    spec = ir.optimizer(type="muon", lr=0.02, groups=[{"params": "vectors", "type": "adamw", "lr": 1e-3},
                                             {"params": "embeddings", "type": "adamw"}])
    opt = build(spec, _net())
    assert [type(o).__name__ for o in opt.optimizers] == ["AdamW", "Muon"]
    lrs = sorted(g["lr"] for g in opt.optimizers[0].param_groups)
    assert lrs == [1e-3, 0.02]  # one param group per (lr, weight_decay)


def test_typed_constructors_choose_the_model() -> None:
    assert type(ir.optimizer(type="m3", slow_every=4)) is ir.M3Optimizer
    assert type(ir.param_group(params="all")) is ir.ParamGroup
    assert type(ir.param_group(params="all", type="adamw", beta2=0.9)).__name__ == "AdamWGroup"
    with pytest.raises(ValueError, match="slow_every"):
        ir.optimizer(type="muon", slow_every=4)
