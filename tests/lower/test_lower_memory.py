"""The `memory` layer (linear / MLP) against a direct, token-by-token reference written from the
equations (docs/design.md §3.1, §3.4): projections, conv, SiLU, L2 norm, gates, the update rule, the
read mode, the output norm and gate — outputs and gradients of every parameter within 1e-5."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lower_helpers import assert_close_grads, build, grads, model_spec, randomize

from nestdsl.lower.memory import MemoryMixer

# ---------------------------------------------------------------------------------------------
# The reference, readable: one token at a time.


def ref_projections(layer: MemoryMixer, x: torch.Tensor):
    """q, k, v (B, T, H, d) and the gates (B, T, H), straight from docs/design.md §3.4."""
    B, T, _ = x.shape
    H, d = layer.H, layer.d
    z = x @ layer.qkv.weight.T                                       # (B, T, 3Hd)
    if layer.conv is not None:                                       # y_t = Σ_j w_j z_{t−K+1+j}
        K = layer.conv.width
        zp = F.pad(z, (0, 0, K - 1, 0))
        z = sum(layer.conv.weight[:, j] * zp[:, j:j + T] for j in range(K))
    z = F.silu(z)
    q, k, v = (t.reshape(B, T, H, d) for t in z.split(H * d, dim=-1))
    if layer.qk_norm:
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    gates = {}
    for role in ("lr", "retention", "momentum"):
        if role in layer.gates:
            g = layer.gates[role]
            z = x @ g.proj.weight.T + g.proj.bias
            gates[role] = g.scale * (torch.sigmoid(z) if g.squash == "sigmoid" else F.softplus(z))
        elif layer.const[role] is not None:
            gates[role] = torch.full((B, T, H), layer.const[role])
    return q, k, v, gates


def ref_output(layer: MemoryMixer, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y = (RMSNorm_head(o) ⊙ σ(x W_g)) W_o, or o W_o."""
    B, T, H, d = o.shape
    if layer.output_gate:
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.o_norm.weight
        o = o.reshape(B, T, H * d) * torch.sigmoid(x @ layer.g_proj.weight.T)
    else:
        o = o.reshape(B, T, H * d)
    return o @ layer.o_proj.weight.T


def mlp_apply(ws, x, layer: MemoryMixer):
    """M(θ; x) = W_1 σ(W_0 x) (+ x if residual); x (B, H, d), W_i (B, H, out, in)."""
    act = {"silu": F.silu, "gelu": F.gelu, "relu": torch.relu, "tanh": torch.tanh}[layer.mlp.activation]
    h = act(torch.einsum("bhoi,bhi->bho", ws[0], x))
    y = torch.einsum("bhoi,bhi->bho", ws[1], h)
    return x + y if layer.mlp.residual else y


def ref_layer(layer: MemoryMixer, x: torch.Tensor) -> torch.Tensor:
    """The whole layer, with the memory updated token by token:

        g_t = ∇_θ ℓ(θ_{c(t)}; k_t, v_t)            (closed form for linear, autograd for MLP)
        S_t = β_t S_{t−1} − η_t g_t
        θ_t = θ_{t−1}(α_t I − η_t k kᵀ) + S_t on W_0 for dgd (erase ε = η), α_t θ_{t−1} + S_t else
        o_t = M(θ_t | θ_{t−1} | θ_{c(t)}; q_t)
    """
    q, k, v, gates = ref_projections(layer, x)
    B, T, H, d = q.shape
    C, read, rule, obj = layer.chunk, layer.ir.read, layer.rule.kind, layer.ir.objective
    linear = layer.mlp is None
    theta = [torch.zeros(B, H, d, d)] if linear else [w.expand(B, *w.shape) for w in layer.init_weights]
    S = [torch.zeros_like(w) for w in theta] if "momentum" in gates else None

    def M(ws, x_):
        return torch.einsum("bhoi,bhi->bho", ws[0], x_) if linear else mlp_apply(ws, x_, layer)

    outs = []
    anchor = theta
    for t in range(T):
        if t % C == 0:
            anchor = theta
        qt, kt, vt = q[:, t], k[:, t], v[:, t]                        # (B, H, d)
        eta = gates["lr"][:, t, :, None, None] if "lr" in gates else torch.ones(B, H, 1, 1)
        if read == "before":
            outs.append(M(theta, qt))
        elif read == "chunk":
            outs.append(M(anchor, qt))
        # inner gradient at the chunk-start state
        pred = M(anchor, kt)
        if linear:
            dl_dp = pred - vt if obj == "l2" else -vt
            g = [dl_dp[..., :, None] * kt[..., None, :]]             # ∂ℓ/∂M = (∂ℓ/∂p) kᵀ
        else:
            loss = 0.5 * (pred - vt).pow(2).sum() if obj == "l2" else -(pred * vt).sum()
            g = list(torch.autograd.grad(loss, anchor, create_graph=True))
        if S is not None:
            beta = gates["momentum"][:, t, :, None, None]
            S = [beta * s - eta * gi for s, gi in zip(S, g, strict=False)]
            step = S
        else:
            step = [-eta * gi for gi in g]
        alpha = gates["retention"][:, t, :, None, None] if "retention" in gates else 1.0
        kept = [alpha * w for w in theta]                            # α_t θ_{t−1}
        if rule == "dgd":                                            # W_0(α I − η k kᵀ), ε = η
            kept[0] = kept[0] - eta * (theta[0] @ kt[..., None]) @ kt[..., None, :]
        theta = [w + s for w, s in zip(kept, step, strict=False)]
        if read == "after":
            outs.append(M(theta, qt))
    o = torch.stack(outs, dim=1)                                     # (B, T, H, d)
    return ref_output(layer, o, x)


# ---------------------------------------------------------------------------------------------

CASES = {
    # name: (memory yaml, layer flags, level period)
    "deltanet": ("kind: linear, objective: l2, rule: {kind: gd, lr: {learned: sigmoid}}", "conv: 4", None),
    "l2 gd with decay": ("kind: linear, objective: l2, rule: {kind: gd, lr: {learned: sigmoid}, "
                       "retention: {learned: sigmoid, init: 0.9}}", "conv: 4", None),
    "linear-attention": ("kind: linear, objective: dot, rule: {kind: gd, lr: 1.0}",
                         "conv: 0, qk_norm: false, output_gate: false", None),
    "gla": ("kind: linear, objective: dot, rule: {kind: gd, retention: {learned: sigmoid, init: 0.9}}",
            "conv: 2", None),
    # (a softplus gate on the step: a softplus retention is unbounded, which the checker refuses)
    "dgd-dot (gated delta rule)": ("kind: linear, objective: dot, rule: {kind: dgd, lr: {learned: softplus, "
                                   "scale: 0.5, init: 0.45}, retention: {learned: sigmoid, init: 0.9}}",
                                   "conv: 4", None),
    "dgd-l2 momentum": ("kind: linear, objective: l2, rule: {kind: dgd, lr: 0.3, retention: 0.95, "
                        "momentum: {learned: sigmoid}}", "conv: 3", None),
    "ttt-linear C=4 after": ("kind: linear, objective: l2, level: c, rule: {kind: gd, lr: 0.5}", "conv: 0", 4),
    "linear C=4 before": ("kind: linear, objective: l2, level: c, read: before, rule: {kind: gd, "
                          "lr: {learned: sigmoid}}", "conv: 4", 4),
    "linear C=4 chunk": ("kind: linear, objective: l2, level: c, read: chunk, rule: {kind: gd, lr: 0.5, "
                         "momentum: 0.8}", "conv: 4", 4),
    "titans-lmm C=4": ("kind: mlp, depth: 2, hidden: 2, activation: silu, objective: l2, level: c, "
                       "rule: {kind: gd, lr: {learned: sigmoid, scale: 0.1}, retention: {learned: sigmoid, "
                       "init: 0.99}, momentum: {learned: sigmoid, init: 0.9}}", "conv: 4", 4),
    "ttt-mlp residual gelu C=4 chunk": ("kind: mlp, depth: 2, hidden: 2, activation: gelu, residual: true, "
                                        "objective: l2, level: c, read: chunk, rule: {kind: gd, lr: 0.1}",
                                        "conv: 4", 4),
    "mlp dgd momentum C=1 before": ("kind: mlp, depth: 2, hidden: 1, activation: tanh, residual: true, "
                                    "objective: l2, read: before, rule: {kind: dgd, lr: {learned: sigmoid, "
                                    "scale: 0.2}, retention: 0.99, momentum: 0.5}", "conv: 0", None),
}


def _layer_system(case: str):
    mem, flags, period = CASES[case]
    spec = model_spec(f"  m: {{{mem}}}", f"      - {{type: memory, memory: m, {flags}}}",
                      levels=f"  c: {{every: {period} tokens}}" if period else "")
    system = build(spec)
    layer = system.model.blocks[0].slots[0].layer
    assert isinstance(layer, MemoryMixer)
    randomize(layer)
    return system, layer


@pytest.mark.parametrize("case", list(CASES))
def test_memory_layer_matches_token_reference(case: str) -> None:
    torch.manual_seed(0)
    _, layer = _layer_system(case)
    x = torch.randn(2, 16, 16, requires_grad=True)
    r = torch.randn(2, 16, 16)

    y, _ = layer(x)
    (y * r).sum().backward()
    g_fast, gx_fast = grads(layer), x.grad.clone()
    layer.zero_grad(set_to_none=True)
    x.grad = None

    y_ref = ref_layer(layer, x)
    (y_ref * r).sum().backward()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    assert_close_grads(g_fast, grads(layer))
    torch.testing.assert_close(gx_fast, x.grad, atol=1e-5, rtol=1e-4)


def test_gate_init_sets_bias_exactly() -> None:
    _, layer = _layer_system("titans-lmm C=4")
    fresh = build(model_spec("  m: {" + CASES["titans-lmm C=4"][0] + "}",
                             "      - {type: memory, memory: m}", levels="  c: {every: 4 tokens}"))
    layer = fresh.model.blocks[0].slots[0].layer
    x = torch.randn(1, 5, 16)
    torch.testing.assert_close(layer.gates["retention"](x), torch.full((1, 2, 5), 0.99))
    torch.testing.assert_close(layer.gates["momentum"](x), torch.full((1, 2, 5), 0.9))
    torch.testing.assert_close(layer.gates["lr"](x), torch.full((1, 2, 5), 0.05))   # 0.1·σ(0)


@pytest.mark.parametrize("case", ["deltanet", "titans-lmm C=4"])
def test_writes_stop_detaches_write_path_only(case: str) -> None:
    """writes: stop — k, v and the gates enter the scan detached; reads stay differentiable."""
    mem, flags, period = CASES[case]
    levels = f"  c: {{every: {period} tokens}}" if period else ""

    def layer_for(writes: str):
        spec = model_spec(f"  m: {{{mem}, writes: {writes}}}", f"      - {{type: memory, memory: m, {flags}}}",
                          levels=levels)
        layer = build(spec).model.blocks[0].slots[0].layer
        randomize(layer)
        return layer

    grad_layer, stop_layer = layer_for("grad"), layer_for("stop")
    x = torch.randn(2, 8, 16)
    y_grad, _ = grad_layer(x)
    y_stop, _ = stop_layer(x)
    torch.testing.assert_close(y_grad, y_stop)          # same forward value
    y_stop.pow(2).sum().backward()
    Hd = stop_layer.H * stop_layer.d
    wq, wk, wv = stop_layer.qkv.weight.grad.split(Hd, dim=0)
    assert wq.abs().sum() > 0                          # reads: q is differentiable
    for g in stop_layer.gates.values():                # gates only act on writes
        assert g.proj.weight.grad is None or g.proj.weight.grad.abs().sum() == 0
    if stop_layer.mlp is None:
        assert wk.abs().sum() == 0 and wv.abs().sum() == 0   # θ_0 = 0: nothing reaches W_k, W_v
    else:
        assert all(w.grad.abs().sum() > 0 for w in stop_layer.init_weights)  # θ_0 via reads


def test_mlp_memory_initial_state_is_per_head_parameter() -> None:
    _, layer = _layer_system("titans-lmm C=4")
    shapes = [tuple(w.shape) for w in layer.init_weights]
    assert shapes == [(2, 16, 8), (2, 8, 16)]     # (H, out, in), hidden = 2 × head_dim
    assert math.isclose(layer.chunk, 4)


def test_linear_memory_learned_initial_state() -> None:
    """`init: learned`: θ_0 is a zero-initialised per-head parameter that the outer loss trains;
    with θ_0 = 0 the layer equals the default zero-state memory."""
    mem = "  m: {kind: linear, objective: l2, init: %s, rule: {kind: gd, lr: 0.5}}"
    layers = "      - {type: memory, memory: m}"
    learned, zeros = build(model_spec(mem % "learned", layers)), build(model_spec(mem % "zeros", layers))
    layer = next(m for m in learned.model.modules() if isinstance(m, MemoryMixer))
    assert [tuple(w.shape) for w in layer.init_weights] == [(2, 8, 8)]
    assert not any(isinstance(m, MemoryMixer) and len(m.init_weights) for m in zeros.model.modules())
    x = torch.randint(0, 32, (2, 12))
    torch.testing.assert_close(learned.model(x), zeros.model(x))       # same seed, θ_0 = 0
    learned.model.loss(x[:, :-1], x[:, 1:], None).backward()
    assert layer.init_weights[0].grad is not None and layer.init_weights[0].grad.abs().sum() > 0
