"""build(): parameter routing through spec groups; describe_levels(): pure-python level table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from nestdsl.optim import DGD, M3, MultiOptimizer, Muon, build, describe_levels, register_dgd_hooks
from nestdsl.spec import ir


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 16, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(torch.relu(self.proj(self.embed(x)))))


def _routes(opt: torch.optim.Optimizer) -> dict[str, tuple[str, float, float]]:
    return {
        n: (g["type"], g["lr"], g["weight_decay"]) for g in opt.param_groups for n in g["names"]
    }


def test_muon_with_embeddings_and_vectors_to_adamw() -> None:
    spec = ir.optimizer(
        type="muon",
        lr=0.02,
        weight_decay=0.1,
        groups=[
            ir.param_group(params="embeddings", type="adamw", lr=3e-3, weight_decay=0.0),
            ir.param_group(params="vectors", type="adamw", lr=1e-3),
        ],
    )
    model = TinyLM()
    opt = build(spec, model.named_parameters())
    assert isinstance(opt, MultiOptimizer)
    assert [type(o) for o in opt.optimizers] == [torch.optim.AdamW, Muon]
    r = _routes(opt)
    assert r["embed.weight"] == ("adamw", 3e-3, 0.0)
    assert r["lm_head.weight"] == ("adamw", 3e-3, 0.0)  # name marker
    assert r["proj.weight"] == ("muon", 0.02, 0.1)
    assert r["proj.bias"] == ("adamw", 1e-3, 0.1)
    assert r["norm.weight"] == ("adamw", 1e-3, 0.1)
    # a training step through the wrapper moves every parameter; state_dict round-trips
    x = torch.randint(0, 16, (4, 5))
    before = [p.detach().clone() for p in model.parameters()]
    model(x).logsumexp(-1).mean().backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    opt2 = build(spec, TinyLM().named_parameters())
    opt2.load_state_dict(opt.state_dict())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_first_matching_group_wins_and_module_input() -> None:
    spec = ir.optimizer(
        type="m3",
        groups=[ir.param_group(params="all", type="adamw"), ir.param_group(params="matrices", type="sgd")],
    )
    opt = build(spec, TinyLM())
    assert isinstance(opt, torch.optim.AdamW)
    spec2 = ir.optimizer(type="m3", groups=[ir.param_group(params="vectors", type="adamw")])
    opt2 = build(spec2, TinyLM())  # nn.Embedding detected from the module, even unnamed
    kinds = {n: t for n, (t, _, _) in _routes(opt2).items()}
    assert kinds["embed.weight"] == "m3" and kinds["proj.bias"] == "adamw"
    assert isinstance(opt2.optimizers[0], M3)


def test_plain_tensors_and_tied_weights() -> None:
    model = TinyLM()
    model.lm_head.weight = model.embed.weight  # tied: appears once
    opt = build(ir.optimizer(type="momentum"), list(model.parameters()))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(TypeError):
        build(ir.optimizer(type="sgd"), [1, 2])


def test_dgd_hooks_and_fallback() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    spec = ir.optimizer(type="dgd", lr=0.1, groups=[ir.param_group(params="vectors", type="adamw")])
    opt = build(spec, model.named_parameters())
    handles = register_dgd_hooks(model, opt)
    assert len(handles) == 2
    dgd = next(o for o in opt.optimizers if isinstance(o, DGD))
    with torch.no_grad():
        model(torch.randn(5, 4))  # no_grad forwards are not captured
    assert not dgd._captured
    # unhooked weights fall back to plain GD
    lone = nn.Linear(4, 3)
    w0 = lone.weight.detach().clone()
    opt_lone = DGD(lone.parameters(), lr=0.1)
    lone(torch.randn(5, 4)).sum().backward()
    opt_lone.step()
    torch.testing.assert_close(lone.weight.detach(), w0 - 0.1 * lone.weight.grad)


@pytest.mark.parametrize(
    "kind",
    ["sgd", "momentum", "precond_momentum", "delta_momentum", "dmgd", "muon", "m3", "adamw", "dgd"],
)
def test_describe_levels_schema(kind: str) -> None:
    levels = describe_levels(ir.optimizer(type=kind, **({"slow_every": 16} if kind == "m3" else {})))
    assert levels
    names = [lv["name"] for lv in levels]
    assert len(names) == len(set(names))
    for lv in levels:
        assert lv["objective"] in {"dot", "l2", "orthogonality"}
        assert lv["memory"] in {"elementwise", "linear", "mlp"}
        assert isinstance(lv["period"], int) and lv["period"] >= 1 and lv["unit"] == "steps"
    assert any(lv["writes"] == "params" for lv in levels)
    json.dumps(levels)  # plain data


def test_m3_levels_and_groups() -> None:
    spec = ir.optimizer(type="m3", slow_every=16, groups=[ir.param_group(params="vectors", type="adamw")])
    lv = {x["name"]: x for x in describe_levels(spec)}
    assert lv["fast_momentum"]["period"] == 1
    assert lv["slow_momentum"]["period"] == 16
    assert lv["second_moment"]["period"] == 1
    assert lv["vectors.second_moment"]["params"] == "vectors"
    muon = {x["name"]: x for x in describe_levels(ir.optimizer(type="muon"))}
    assert muon["newton_schulz"]["objective"] == "orthogonality"
    assert muon["momentum"]["writes"] == "newton_schulz"
    assert describe_levels(ir.optimizer(type="dmgd"))[0]["memory"] == "mlp"
    assert describe_levels(ir.optimizer(type="delta_momentum"))[0]["objective"] == "l2"


def test_levels_module_does_not_import_torch() -> None:
    code = (
        "import sys; from nestdsl.optim.levels import describe_levels; "
        "from nestdsl.optim import describe_levels as d2; assert d2 is describe_levels; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_takes_a_spec_file_path_a_spec_or_an_ir_node(tmp_path) -> None:
    from nestdsl.pipeline import load_spec
    from nestdsl.spec.shipped import OPTIMIZER_DIR

    path = OPTIMIZER_DIR / "m3.yaml"
    node = load_spec(path).outer_optimizer
    sources = (str(path), path, load_spec(path), node, "m3")  # "m3": the shipped spec, by name
    routes = [_routes(build(src, TinyLM().named_parameters())) for src in sources]
    assert routes[0] == routes[1] == routes[2] == routes[3] == routes[4]
    assert routes[0]["proj.weight"][0] == "m3" and routes[0]["embed.weight"][0] == "adamw"
    bare = tmp_path / "bare.yaml"
    bare.write_text("nestdsl: 1\nname: bare\nmodel: {width: 8, depth: 1, pattern: [b]}\n"
                    "blocks: {b: {layers: [{type: mlp}]}}\n")
    with pytest.raises(ValueError, match="no `optimizer:` section"):
        build(load_spec(bare, check=False), TinyLM().parameters())
    with pytest.raises(TypeError, match="optimizer spec path"):
        build(3, TinyLM().parameters())


@pytest.mark.parametrize("kind", ["momentum", "delta_momentum", "dmgd"])
def test_newton_schulz_output_is_a_level_of_any_momentum_memory(kind: str) -> None:
    """`output: newton_schulz` wraps the momentum memory: it writes into an orthogonality level
    that writes the parameters (momentum + this output is the Muon level structure)."""
    plain = describe_levels(ir.optimizer(type=kind))
    lv = describe_levels(ir.optimizer(type=kind, output="newton_schulz", ns_steps=3))
    assert [x["name"] for x in lv] == [x["name"] for x in plain] + ["newton_schulz"]
    assert lv[-2]["writes"] == "newton_schulz" and lv[-1]["writes"] == "params"
    assert lv[-1]["objective"] == "orthogonality" and lv[-1]["inner_steps"] == 3
