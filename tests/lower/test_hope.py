"""Hope's self-modifying Titans (nestdsl.lower.hope) against a token-by-token reference written
from the equations (NL paper Eqs. 83–96, docs/design.md §3.1/§3.4), streaming, and the ablations."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from nestdsl.diagnostics import SpecError
from nestdsl.lower.common import LearnedGateModule
from nestdsl.lower.hope import GeneratedGate, SelfModifyingTitans
from nestdsl.spec import parse_text

# ---------------------------------------------------------------------------------------------
# spec helpers


def spec_dict(*, width: int = 8, heads: int = 1, c_mem: int = 4, c_other: int = 4,
              read: str = "chunk", adaptive: list[str] | None = None,
              mem_rule: dict[str, Any] | None = None, proj_rule: dict[str, Any] | None = None,
              conv: int = 4, mem_writes: str = "grad", v_norm: bool = False,
              values: str = "self", mem_extra: dict[str, Any] | None = None,
              proj_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    mem_rule = mem_rule if mem_rule is not None else {
        "kind": "dgd", "lr": {"learned": "sigmoid", "scale": 0.5},
        "retention": {"learned": "sigmoid", "init": 0.9},
        "momentum": {"learned": "sigmoid", "init": 0.5}}
    proj_rule = proj_rule if proj_rule is not None else {
        "kind": "dgd", "lr": 0.3, "retention": 0.95, "momentum": 0.6}
    mlp = {"kind": "mlp", "depth": 2, "hidden": 2, "activation": "silu", "residual": True,
           "objective": "l2"}
    return {
        "nestdsl": 1, "name": "t",
        "model": {"vocab": 16, "width": width, "depth": 1, "heads": heads, "pattern": ["b"]},
        "levels": {"cm": {"every": f"{c_mem} tokens"}, "co": {"every": f"{c_other} tokens"}},
        "memories": {
            "titans": {**mlp, "rule": mem_rule, "level": "cm", "read": read, "writes": mem_writes,
                       **(mem_extra or {})},
            "projection": {**mlp, "rule": proj_rule, "level": "co", "read": "chunk",
                           **(proj_extra or {})},
        },
        "blocks": {"b": {"layers": [{
            "type": "self_modifying", "memory": "titans", "projections": "projection", "conv": conv,
            "v_norm": v_norm, "values": values,
            "adaptive": adaptive if adaptive is not None else ["k", "v", "eta", "alpha"]}]}},
        "data": {"task": "copy", "seq_len": 64, "batch": 2},
    }


def build(d: dict[str, Any], *, seed: int = 0, perturb: float = 0.2,
          dtype: torch.dtype = torch.float32) -> SelfModifyingTitans:
    _, spec = parse_text(json.dumps(d))
    torch.manual_seed(seed)
    layer = SelfModifyingTitans.from_spec(spec.blocks["b"].layers[0], spec, spec.model.width,
                                          spec.model.heads)
    with torch.no_grad():              # move zero-initialised gate weights off zero
        for p in layer.parameters():
            p.add_(perturb * torch.randn_like(p))
    return layer.to(dtype)


# ---------------------------------------------------------------------------------------------
# the reference: one head, token by token, written from the equations


def reference(layer: SelfModifyingTitans, x: torch.Tensor,
              eta_factor: dict[str, float] | None = None) -> torch.Tensor:
    """y for one head (H = 1), token by token. Nothing from nestdsl.ops is used.
    `eta_factor`: η multiplied per group ("mem", "proj"), the inner-lr warm-up's min(1, (s+1)/N)."""
    assert layer.heads == 1
    B, T, D = x.shape
    names = ["mem"] + layer.roles
    rules = {n: (layer.mem_rule if n == "mem" else layer.proj_rule) for n in names}
    chunk = {n: (layer.c_mem if n == "mem" else layer.c_other) for n in names}

    def M(ws: list[torch.Tensor], u: torch.Tensor, n: str = "") -> torch.Tensor:
        """Residual MLP memory, Eq. 89: M(u) = u + W_1 σ(W_2 u); ws = [W_2 (B,h,d), W_1 (B,d,h)];
        with an inner norm (memory `n` has one): u + LN(W_1 σ(W_2 u)) with its gain and bias."""
        hidden = F.silu(torch.einsum("bhi,bi->bh", ws[0], u))
        branch = torch.einsum("boh,bh->bo", ws[1], hidden)
        if n in layer.norms:
            gain, bias = layer.norms[n]()
            branch = F.layer_norm(branch, (branch.shape[-1],), gain[0], bias[0], eps=1e-5)
        return u + branch

    def inner_grad(ws: list[torch.Tensor], k: torch.Tensor, target: torch.Tensor, n: str) -> tuple:
        """∇_θ ½‖M(θ; k) − v̂‖², v̂ a constant of the inner problem (Eq. 85)."""
        def loss(w: tuple) -> torch.Tensor:
            return 0.5 * (M(list(w), k, n) - target).pow(2).sum()
        return torch.func.grad(loss)(tuple(ws))

    def layer_etas(eta: torch.Tensor, ws: list[torch.Tensor], k: torch.Tensor, n: str) -> list:
        """η per weight: η/(ε + ‖a_i‖²) with a_i the weight's input (k, then σ(W_2 k)) under the
        per-layer normalised step (Eq. 57 per layer), else η for both."""
        if not rules[n].normalized_lr:
            return [eta, eta]
        a = [k, F.silu(torch.einsum("bhi,bi->bh", ws[0], k))]
        return [eta / (1e-6 + ai.pow(2).sum(-1)) for ai in a]

    theta = {n: [p[0].expand(B, *p.shape[1:]) for p in layer.theta0[n]] for n in names}
    S = {n: [torch.zeros_like(w) for w in theta[n]] for n in names}
    anchor: dict[str, list[torch.Tensor]] = {}
    K = layer.conv_width
    hist = {r: [torch.zeros(B, D, dtype=x.dtype)] * (K - 1) for r in ("q", "k", "v")}

    def gate(group: str, role: str, xt: torch.Tensor, feats: dict) -> torch.Tensor | None:
        g = getattr(layer.mem_rule if group == "mem" else layer.proj_rule, role)
        if g is None:
            return None
        if isinstance(g, float):
            return torch.full((B,), g, dtype=x.dtype)
        mod = layer.gates[f"{group}_{role}"]
        if isinstance(mod, GeneratedGate):       # η_t = η_max σ(⟨w_η, M_η(x_t)⟩ + b_η)
            src = {"lr": "eta", "retention": "alpha"}[role]
            z = feats[src] @ mod.weight[0] + mod.bias[0]
        else:                                    # static gate: σ(x_t w + b)
            assert isinstance(mod, LearnedGateModule)
            z = xt @ mod.proj.weight[0] + mod.proj.bias[0]
        return (torch.sigmoid(z) if mod.squash == "sigmoid" else F.softplus(z)) * mod.scale

    renorm = {n: (layer.mem_mlp if n == "mem" else layer.proj_mlp).renorm for n in names}
    norms0 = {n: [w.norm(dim=-1, keepdim=True) for w in theta[n]] for n in names}

    outs = []
    for t in range(T):
        for n in names:                         # θ_{c(t)}: state at the chunk start
            if t % chunk[n] == 0:
                if renorm[n] and t > 0:         # memory.renorm: rows back to ‖θ_0's rows‖
                    theta[n] = [w * n0 / w.norm(dim=-1, keepdim=True)
                                for w, n0 in zip(theta[n], norms0[n], strict=True)]
                anchor[n] = list(theta[n])
        xt = x[:, t]
        qkv = {}
        for r in ("q", "k", "v"):               # k_t = M_k(θ_{k,c(t)}; x_t) (Eq. 83) or x_t W_k
            pre = M(anchor[r], xt) if r in layer.roles else xt @ layer.static[r].weight.T
            if K:                               # depthwise causal conv over the last K inputs
                hist[r] = hist[r] + [pre]
                w = layer.conv[r].weight        # (D, K)
                pre = sum(w[:, j] * hist[r][-K + j] for j in range(K))
            qkv[r] = F.silu(pre)
        q, k, v = F.normalize(qkv["q"], dim=-1), F.normalize(qkv["k"], dim=-1), qkv["v"]
        if layer.v_norm:                        # v_t / ‖v_t‖ (v_norm)
            v = F.normalize(v, dim=-1)
        feats = {r: M(anchor[r], xt, r) for r in ("eta", "alpha") if r in layer.roles}
        o_before = M(theta["mem"], q, "mem")
        for n in names:
            group = "mem" if n == "mem" else "proj"
            eta, alpha, beta = (gate(group, role, xt, feats) for role in ("lr", "retention", "momentum"))
            eta = eta * (eta_factor or {}).get(group, 1.0)
            # v̂_{□,t} = M_□(v_t) (Eq. 84), or the shared v_t (Eq. 79)
            target = M(anchor[n], v, n) if layer.values == "self" else v
            g = inner_grad(anchor[n], k, target, n)               # ∇ℓ at θ_{c(t)}
            etas = layer_etas(eta, anchor[n], k, n)
            if beta is not None:                                  # S_t = β S_{t−1} − η g
                S[n] = [beta[:, None, None] * s - e[:, None, None] * gi
                        for s, gi, e in zip(S[n], g, etas, strict=True)]
                step = S[n]
            else:
                step = [-e[:, None, None] * gi for gi, e in zip(g, etas, strict=True)]
            a = 1.0 if alpha is None else alpha[:, None, None]
            kept = [a * w for w in theta[n]]                      # α_t θ_{t−1}
            if rules[n].kind == "dgd":                            # Eq. 88: W_2(α I − η k kᵀ)
                Wk = torch.einsum("bhi,bi->bh", theta[n][0], k)
                # (η of W_2: η/‖k‖² under the normalised step, so α I − η k kᵀ/‖k‖²)
                kept[0] = kept[0] - etas[0][:, None, None] * Wk[:, :, None] * k[:, None, :]
            theta[n] = [w + s for w, s in zip(kept, step, strict=True)]  # + S_t
        read = layer.mem_rule.read
        if read == "after":                                       # o_t = M(θ_t; q_t)
            o = M(theta["mem"], q, "mem")
        elif read == "before":                                    # o_t = M(θ_{t−1}; q_t)
            o = o_before
        else:                                                     # o_t = M(θ_{c(t)}; q_t)
            o = M(anchor["mem"], q, "mem")
        if layer.read_norm is not None:                           # q + g RMSNorm(M(q) − q)
            b = o - q
            o = q + b * torch.rsqrt(b.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.read_norm.gain[0]
        outs.append(o)
    o = torch.stack(outs, dim=1)                                  # (B, T, d)
    if layer.output_gate:
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + layer.out_norm.eps) * layer.out_norm.weight
        o = o * torch.sigmoid(x @ layer.gate_proj.weight.T)
    return o @ layer.out_proj.weight.T


def _grads(layer: SelfModifyingTitans, x: torch.Tensor, fn) -> tuple[torch.Tensor, dict]:
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    y = fn(x)
    r = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * r).sum().backward()
    g = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    g["x"] = x.grad.clone()
    return y.detach(), g


CASES = [
    # (C_mem, C_other, read, extra spec args)
    pytest.param(1, 1, "chunk", {}, id="C1"),
    pytest.param(4, 4, "chunk", {}, id="C4"),
    pytest.param(4, 2, "after", {"proj_rule": {"kind": "gd", "lr": {"learned": "sigmoid", "scale": 0.5},
                                               "retention": {"learned": "sigmoid", "init": 0.8}}},
                 id="Cmem4-Cother2-after-learned-proj-gates"),
    pytest.param(2, 4, "before", {"adaptive": ["q", "k", "v", "eta", "alpha"]},
                 id="Cmem2-Cother4-before-adaptive-q"),
    pytest.param(4, 2, "after", {"v_norm": True}, id="Cmem4-Cother2-after-v-norm"),
    pytest.param(1, 1, "chunk", {"v_norm": True, "conv": 0}, id="C1-chunk-v-norm-no-conv"),
    pytest.param(4, 2, "after", {"values": "shared"}, id="Cmem4-Cother2-after-shared-values"),
    # the parameterisation choices of docs/hope-dynamics.md: inner norm with its gain init, and
    # the per-layer normalised step
    pytest.param(4, 2, "after", {"mem_extra": {"norm": True, "norm_gain": 0.1}},
                 id="Cmem4-Cother2-after-inner-norm-gain"),
    pytest.param(4, 2, "after", {"mem_extra": {"norm": True, "norm_gain": 0.1}, "mem_rule": {
        "kind": "dgd", "lr": {"learned": "sigmoid", "scale": 0.5}, "normalized_lr": True,
        "retention": {"learned": "sigmoid", "init": 0.9},
        "momentum": {"learned": "sigmoid", "init": 0.5}}}, id="Cmem4-Cother2-after-normalized-lr"),
    pytest.param(1, 1, "chunk", {"mem_rule": {"kind": "gd", "lr": 0.5, "normalized_lr": True}},
                 id="C1-gd-normalized-lr-const"),
    pytest.param(4, 2, "after", {"mem_extra": {"read_norm": 0.3}}, id="Cmem4-Cother2-after-read-norm"),
    pytest.param(2, 4, "after", {"mem_extra": {"renorm": True}, "proj_extra": {"renorm": True}},
                 id="Cmem2-Cother4-after-renorm"),
    pytest.param(3, 1, "before", {"mem_extra": {"renorm": True, "norm": True}},
                 id="Cmem3-Cother1-before-renorm-inner-norm"),
    pytest.param(2, 2, "chunk", {"mem_extra": {"read_norm": 1.0, "norm": True}},
                 id="C2-chunk-read-norm-and-inner-norm"),
]


@pytest.mark.parametrize("c_mem,c_other,read,extra", CASES)
def test_matches_token_by_token_reference_float64(c_mem, c_other, read, extra):
    layer = build(spec_dict(c_mem=c_mem, c_other=c_other, read=read, **extra), dtype=torch.float64)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    y, g = _grads(layer, x, lambda x: layer(x)[0])
    y_ref, g_ref = _grads(layer, x, lambda x: reference(layer, x))
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-9)
    assert g.keys() == g_ref.keys()
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n], atol=1e-10, rtol=1e-8, msg=n)


@pytest.mark.parametrize("mem_lr", [0.4, {"learned": "sigmoid", "scale": 0.5}])
def test_inner_lr_warmup_matches_the_reference(mem_lr):
    """rule.lr_warmup: at outer step s both groups step with η·min(1, (s + 1)/N)."""
    from nestdsl.lower.inner import set_outer_step

    d = spec_dict(c_mem=4, c_other=2, read="after",
                  mem_rule={"kind": "dgd", "lr": mem_lr, "lr_warmup": 4,
                            "momentum": {"learned": "sigmoid", "init": 0.5}},
                  proj_rule={"kind": "gd", "lr": 0.3, "lr_warmup": 8, "retention": 0.95})
    layer = build(d, dtype=torch.float64)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    for step in (0, 2, 9):
        set_outer_step(layer, step)
        factor = {"mem": min(1.0, (step + 1) / 4), "proj": min(1.0, (step + 1) / 8)}
        y, g = _grads(layer, x, lambda x: layer(x)[0])
        y_ref, g_ref = _grads(layer, x, lambda x, f=factor: reference(layer, x, f))
        torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-9)
        for n in g:
            torch.testing.assert_close(g[n], g_ref[n], atol=1e-10, rtol=1e-8, msg=n)
    y_full = reference(layer, x)            # the factor matters at step 0
    set_outer_step(layer, 0)
    assert not torch.allclose(layer(x)[0], y_full, atol=1e-6)


@pytest.mark.parametrize("c", [1, 4])
def test_matches_reference_float32(c):
    layer = build(spec_dict(c_mem=c, c_other=c))
    x = torch.randn(2, 8, 8)
    y, g = _grads(layer, x, lambda x: layer(x)[0])
    ref = build(spec_dict(c_mem=c, c_other=c), dtype=torch.float64)
    y_ref, g_ref = _grads(ref, x.double(), lambda x: reference(ref, x))
    torch.testing.assert_close(y, y_ref.float(), atol=1e-5, rtol=1e-5)
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n].float(), atol=1e-5, rtol=1e-4, msg=n)


# ---------------------------------------------------------------------------------------------
# streaming


def test_streaming_segments_equal_one_call():
    layer = build(spec_dict(heads=2, c_mem=4, c_other=2, read="after"))
    x = torch.randn(2, 24, 8)
    y, st = layer(x)
    ys, s = [], None
    for a, b in [(0, 8), (8, 12), (12, 24)]:
        yi, s = layer(x[:, a:b], s)
        ys.append(yi)
    torch.testing.assert_close(torch.cat(ys, 1), y, atol=1e-6, rtol=1e-6)
    for n in st["mems"]:
        for w1, w2 in zip(st["mems"][n].weights, s["mems"][n].weights, strict=True):
            torch.testing.assert_close(w1, w2, atol=1e-6, rtol=1e-6)
    assert s["pos"] == 24
    with pytest.raises(ValueError, match="middle of a chunk"):
        layer(x[:, 14:16], layer(x[:, :6])[1])


def test_initial_state_is_learned_through_writes():
    """θ_{□,0} of every memory gets a gradient (the meta-learned initial state, §3.2)."""
    layer = build(spec_dict(c_mem=2, c_other=2))
    y, _ = layer(torch.randn(2, 8, 8))
    y.pow(2).sum().backward()
    for name, plist in layer.theta0.items():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in plist), name


def test_writes_stop_keeps_reads_differentiable():
    layer = build(spec_dict(c_mem=2, c_other=2, mem_writes="stop"))
    x = torch.randn(2, 8, 8, requires_grad=True)
    y, st = layer(x)
    assert all(w.requires_grad for w in st["mems"]["mem"].weights)   # θ_0 path kept
    y.sum().backward()
    assert all(p.grad is not None for p in layer.theta0["mem"])


# ---------------------------------------------------------------------------------------------
# ablations (Table 6): each switch changes exactly what it says


def _copy_shared(src: SelfModifyingTitans, dst: SelfModifyingTitans) -> None:
    """Copy every parameter the two layers share by name and shape."""
    sd = dst.state_dict()
    for k, v in src.state_dict().items():
        if k in sd and sd[k].shape == v.shape:
            sd[k] = v
    dst.load_state_dict(sd)


def test_ablation_gd_vs_dgd_changes_only_the_projection(monkeypatch):
    base = spec_dict(c_mem=4, c_other=4)
    dgd = build(base)
    gd_spec = spec_dict(c_mem=4, c_other=4, mem_rule={**base["memories"]["titans"]["rule"], "kind": "gd"})
    gd = build(gd_spec, seed=1)
    _copy_shared(dgd, gd)
    x = torch.randn(2, 8, 8)
    _, s_dgd = dgd(x)
    _, s_gd = gd(x)
    # the projection memories (whose rule did not change) are untouched by the switch
    for n in dgd.roles:
        for a, b in zip(s_dgd["mems"][n].weights, s_gd["mems"][n].weights, strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)

    # one token: the main memory differs by exactly the DGD term −η (W₀ k) kᵀ on W₀ (Eq. 88)
    calls: list[dict] = []
    real = dgd._mlp_step.fn

    def spy(state, q, k, v, lr, ret, mom, **kw):
        if q is not None:
            calls.append(dict(W0=state.weights[0], k=k, lr=lr, ret=ret))
        return real(state, q, k, v, lr, ret, mom, **kw)

    monkeypatch.setattr(dgd._mlp_step, "fn", spy)
    x1 = x[:, :1]
    _, s_dgd = dgd(x1)
    _, s_gd = gd(x1)
    c = calls[0]
    k, eta = c["k"][:, :, 0], c["lr"][:, :, 0]                                # (B, H, d), (B, H)
    W0k = torch.einsum("bhoi,bhi->bho", c["W0"], k)
    expected = -eta[..., None, None] * W0k[..., :, None] * k[..., None, :]
    w_dgd, w_gd = s_dgd["mems"]["mem"].weights, s_gd["mems"]["mem"].weights
    torch.testing.assert_close(w_dgd[0] - w_gd[0], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w_dgd[1], w_gd[1], atol=0, rtol=0)


def test_ablation_no_momentum_is_beta_zero():
    base = spec_dict()
    rule = dict(base["memories"]["titans"]["rule"])
    del rule["momentum"]
    nomom = build(spec_dict(mem_rule=rule), seed=1)
    mom = build(base)
    _copy_shared(mom, nomom)
    assert "mem_momentum" not in nomom.gates
    with torch.no_grad():                                   # β_t ≡ 0 exactly
        mom.gates["mem_momentum"].proj.weight.zero_()
        mom.gates["mem_momentum"].proj.bias.fill_(-1e4)
    x = torch.randn(2, 12, 8)
    y0, s0 = nomom(x)
    y1, s1 = mom(x)
    assert s0["mems"]["mem"].momentum is None and s1["mems"]["mem"].momentum is not None
    torch.testing.assert_close(y0, y1, atol=1e-6, rtol=1e-6)


def test_ablation_no_retention_is_alpha_one():
    base = spec_dict()
    rule = dict(base["memories"]["titans"]["rule"])
    del rule["retention"]
    noret = build(spec_dict(mem_rule=rule), seed=1)
    ret = build(base)
    _copy_shared(ret, noret)
    # M_α has no consumer any more (the projections' retention is a constant): not built
    assert "alpha" not in noret.roles and "alpha" in ret.roles
    with torch.no_grad():                                   # α_t ≡ 1 exactly
        ret.gates["mem_retention"].weight.zero_()
        ret.gates["mem_retention"].bias.fill_(1e4)
    x = torch.randn(2, 12, 8)
    torch.testing.assert_close(noret(x)[0], ret(x)[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("role", ["k", "v", "q", "eta", "alpha"])
def test_ablation_static_projection(role):
    """Removing □ from `adaptive` makes it a static projection with no memory state; an adaptive
    memory with θ_{□,0} = 0 is exactly the identity map (its writes are 0), so it equals the
    static layer with W_□ = I (gates: the same per-head weights)."""
    full = ["q", "k", "v", "eta", "alpha"]
    ada = build(spec_dict(heads=2, adaptive=full))
    sta = build(spec_dict(heads=2, adaptive=[r for r in full if r != role]), seed=1)
    _copy_shared(ada, sta)
    with torch.no_grad():
        for p in ada.theta0[role]:
            p.zero_()
        if role in ("q", "k", "v"):
            sta.static[role].weight.copy_(torch.eye(8))
        else:
            key = {"eta": "mem_lr", "alpha": "mem_retention"}[role]
            gen, static = ada.gates[key], sta.gates[key]
            assert isinstance(gen, GeneratedGate) and isinstance(static, LearnedGateModule)
            static.proj.weight.copy_(torch.block_diag(*gen.weight[:, None, :]))   # (H, D)
            static.proj.bias.copy_(gen.bias)
    assert role in ada.roles and role not in sta.roles
    x = torch.randn(2, 12, 8)
    y_ada, st_ada = ada(x)
    y_sta, st_sta = sta(x)
    assert role not in st_sta["mems"]
    assert all(w.abs().max() == 0 for w in st_ada["mems"][role].weights)
    torch.testing.assert_close(y_ada, y_sta, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# v_norm


@pytest.mark.parametrize("v_norm", [False, True])
def test_v_norm_makes_values_unit_norm(v_norm):
    """v_norm L2-normalises v_t per head after conv + SiLU, like q and k; off by default."""
    layer = build(spec_dict(heads=2, v_norm=v_norm))
    assert layer.v_norm is v_norm
    x = torch.randn(2, 4, 8)
    st = layer.initial_state(2)
    stacked = layer._stack_projections(st["mems"], 2)
    q, k, v, *_ = layer._generate(x, stacked.weights, st["conv"])
    assert v.shape == (2, 2, 4, 4)
    ones = torch.ones(2, 2, 4)
    torch.testing.assert_close(k.norm(dim=-1), ones)
    if v_norm:
        torch.testing.assert_close(v.norm(dim=-1), ones)
    else:
        assert not torch.allclose(v.norm(dim=-1), ones)


def test_v_norm_default_is_off():
    d = spec_dict()
    del d["blocks"]["b"]["layers"][0]["v_norm"]
    _, spec = parse_text(json.dumps(d))
    assert spec.blocks["b"].layers[0].v_norm is False


# ---------------------------------------------------------------------------------------------
# errors


def _check(d: dict[str, Any]) -> None:
    from nestdsl.check import check_spec

    d = {**d, "model": {**d["model"], "vocab": 256}}          # the copy task's vocabulary
    doc, spec = parse_text(json.dumps(d))
    check_spec(spec, doc)


def test_chunk_sizes_must_nest():
    with pytest.raises(SpecError, match="do not nest"):
        _check(spec_dict(c_mem=6, c_other=4))


def test_projections_must_read_chunk():
    d = spec_dict()
    d["memories"]["projection"]["read"] = "after"
    with pytest.raises(SpecError, match="read: after"):
        _check(d)
    del d["memories"]["projection"]["read"]          # unset: resolved to chunk
    _check(d)
    assert build(d).proj_rule.read == "chunk"


# ---------------------------------------------------------------------------------------------
# checkpointed window loop


@pytest.mark.parametrize("group", [1, 2])
def test_checkpointed_windows_equal_plain_loop(group):
    """Keeping the state every G windows (recomputing a group in backward) changes nothing:
    outputs, final states and gradients equal the plain loop's, also under a repeated
    (retain_graph) backward as the CMS task sweep does."""
    layer = build(spec_dict(heads=2, c_mem=4, c_other=2, read="after"), dtype=torch.float64)
    x = torch.randn(2, 18, 8, dtype=torch.float64)        # 5 windows, the last one partial
    runs = {}
    for G in (None, group):
        layer.compile_config.checkpoint_every = G
        y, g = _grads(layer, x, lambda x: layer(x)[0])
        _, st = layer(x)
        xr = x.clone().requires_grad_(True)
        out = layer(xr)[0].square().sum()
        again = [torch.autograd.grad(out, xr, retain_graph=True)[0] for _ in range(2)]
        runs[G] = (y, g, st, again)
    (y0, g0, s0, a0), (y1, g1, s1, a1) = runs[None], runs[group]
    torch.testing.assert_close(y1, y0, atol=1e-12, rtol=1e-12)
    assert g1.keys() == g0.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-12, rtol=1e-10, msg=n)
    for n in s0["mems"]:
        for w0, w1 in zip(s0["mems"][n].weights, s1["mems"][n].weights, strict=True):
            torch.testing.assert_close(w1, w0, atol=1e-12, rtol=1e-12)
    for a, b in zip(a0 + a1, a0 + a0, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_checkpointed_windows_save_fewer_bytes():
    """The point of grouping: far fewer bytes saved for backward (one state per group)."""
    layer = build(spec_dict(heads=2, c_mem=4, c_other=4, read="after"))
    x = torch.randn(2, 64, 8)
    saved = {}
    for G in (None, 2):
        layer.compile_config.checkpoint_every = G
        sizes: dict[int, int] = {}

        def pack(t: torch.Tensor, sizes: dict[int, int] = sizes) -> torch.Tensor:
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)[0].sum()
        saved[G] = sum(sizes.values())
    assert saved[2] < 0.5 * saved[None], saved
