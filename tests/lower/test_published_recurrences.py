"""Each preset named after a published architecture computes that architecture's recurrence.

The memory layer of the preset (specs/*.yaml, lowered as a user would) is run on random q, k, v
and gates; the reference is a token loop written from the paper's equations with its own
autograd gradients and its own LayerNorm — not from nestdsl's update family or fast forms.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.lower.memory import MemoryMixer
from nestdsl.pipeline import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
B, T = 2, 40


def _mixer(preset: str) -> MemoryMixer:
    torch.manual_seed(0)
    system = nestdsl.compile(load_spec(SPECS / f"{preset}.yaml"), compile=False)
    return next(m for m in system.model.modules() if isinstance(m, MemoryMixer))


def _inputs(mixer: MemoryMixer, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    H, d = mixer.H, mixer.d
    q = F.normalize(torch.randn(B, H, T, d, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, H, T, d, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, T, d, generator=g, dtype=torch.float64)
    gates = {r: (0.05 + 0.9 * torch.rand(B, H, T, generator=g, dtype=torch.float64))
             for r in mixer.gates}
    return q, k, v, gates


def _run(mixer: MemoryMixer, q, k, v, gates) -> torch.Tensor:
    mixer.double()
    o, _ = mixer.scan(q, k, v, gates, None)
    return o


def _gate(mixer: MemoryMixer, gates: dict, role: str, t: int) -> torch.Tensor:
    """The gate of role at token t, (B, H, 1, 1) (a constant of the spec if not learned)."""
    if role in gates:
        return gates[role][:, :, t, None, None]
    return torch.full((B, mixer.H, 1, 1), float(mixer.const[role]), dtype=torch.float64)


# -- linear memories: the published recurrences, one token at a time ----------------------------

def _linear_reference(mixer, q, k, v, gates, update) -> torch.Tensor:
    S = torch.zeros(B, mixer.H, mixer.d, mixer.d, dtype=torch.float64)
    eye = torch.eye(mixer.d, dtype=torch.float64)
    outs = []
    for t in range(T):
        kt, vt = k[:, :, t, :, None], v[:, :, t, :, None]                    # columns
        S = update(S, kt, vt, t, eye)
        outs.append((S @ q[:, :, t, :, None])[..., 0])                       # o_t = S_t q_t
    return torch.stack(outs, 2)


LINEAR = {
    # linear attention (Katharopoulos et al. 2020): S_t = S_{t−1} + v_t k_tᵀ
    "linear-attention": lambda m, g: lambda S, k, v, t, eye: S + v @ k.mT,
    # GLA / Mamba2-like: S_t = α_t S_{t−1} + v_t k_tᵀ
    "gla": lambda m, g: lambda S, k, v, t, eye: _gate(m, g, "retention", t) * S + v @ k.mT,
    # DeltaNet (Schlag et al. 2021): S_t = S_{t−1}(I − β_t k kᵀ) + β_t v kᵀ
    "deltanet": lambda m, g: lambda S, k, v, t, eye: (
        S @ (eye - _gate(m, g, "lr", t) * k @ k.mT) + _gate(m, g, "lr", t) * v @ k.mT),
    # Gated DeltaNet (Yang et al. 2025, Eq. 10): S_t = α_t S_{t−1}(I − β_t k kᵀ) + β_t v kᵀ
    "gated-deltanet": lambda m, g: lambda S, k, v, t, eye: (
        _gate(m, g, "retention", t) * S @ (eye - _gate(m, g, "lr", t) * k @ k.mT)
        + _gate(m, g, "lr", t) * v @ k.mT),
}


@pytest.mark.parametrize("preset", list(LINEAR))
def test_linear_presets_compute_the_published_recurrence(preset: str) -> None:
    mixer = _mixer(preset)
    q, k, v, gates = _inputs(mixer)
    o = _run(mixer, q, k, v, gates)
    ref = _linear_reference(mixer, q, k, v, gates, LINEAR[preset](mixer, gates))
    torch.testing.assert_close(o, ref, atol=1e-9, rtol=1e-9)


# -- TTT and Titans: mini-batch gradient descent on a deep memory ------------------------------

def _memory_fn(mixer: MemoryMixer, ws: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f(x) written out: the MLP (or matrix), then TTT's / titans-pytorch's LN and residual."""
    spec = mixer.mlp
    act = {"gelu": F.gelu, "silu": F.silu, "relu": torch.relu, "tanh": torch.tanh}[spec.activation]
    h = x
    for i, w in enumerate(ws):
        h = h @ w.mT
        if i < len(ws) - 1:
            h = act(h)
    if spec.norm:
        gain, bias = (p.double() for p in mixer.norm())
        h = torch.stack([F.layer_norm(h[:, j], (h.shape[-1],), gain[j], bias[j], eps=1e-5)
                         for j in range(h.shape[1])], 1)
    return x + h if spec.residual else h


def _mini_batch_reference(mixer, q, k, v, gates, *, titans: bool) -> torch.Tensor:
    """TTT (Sun et al. 2024 §2.7, mini-batch b = C): W_t = W_{t−1} − η_t ∇ℓ(W_{c(t)}; k_t, v_t),
    o_t = f(W_t; q_t), η_t = base·σ(·)/d. Titans (Behrouz et al. 2025 Eqs. 13-14, 16):
    S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{c(t)}; k_t), M_t = (1 − α_t) M_{t−1} + S_t, o_t = M_t(q_t)."""
    C = mixer.chunk
    theta = [w.double().expand(B, *w.shape).clone() for w in mixer.init_weights]
    S = [torch.zeros_like(w) for w in theta]
    anchor = theta
    outs = []
    for t in range(T):
        if t % C == 0:
            anchor = [w.detach().requires_grad_() for w in theta]
        pred = _memory_fn(mixer, anchor, k[:, :, t:t + 1])
        r = pred - v[:, :, t:t + 1]
        if mixer.rule.clip is None:
            loss = 0.5 * r.pow(2).sum()
        else:   # nestdsl's soft clip of the surprise (spec `clip: c`): c² log cosh(‖r‖/c)
            c = mixer.rule.clip
            loss = (c * c * torch.log(torch.cosh(r.norm(dim=-1) / c))).sum()
        grads = torch.autograd.grad(loss, anchor)
        step = _gate(mixer, gates, "lr", t) / mixer.lr_divisor                # θ_t (TTT: η/d)
        if titans:
            surprise_decay = _gate(mixer, gates, "momentum", t)               # η_t (Titans)
            forget = 1 - _gate(mixer, gates, "retention", t)                  # α_t (Titans)
            S = [surprise_decay * s - step * g for s, g in zip(S, grads, strict=True)]
            theta = [(1 - forget) * w + s for w, s in zip(theta, S, strict=True)]
        else:
            theta = [w - step * g for w, g in zip(theta, grads, strict=True)]
        outs.append(_memory_fn(mixer, theta, q[:, :, t:t + 1])[:, :, 0])
    return torch.stack(outs, 2).detach()


@pytest.mark.parametrize("preset,titans", [("ttt-linear", False), ("ttt-mlp", False),
                                           ("titans-lmm", True)])
def test_deep_memory_presets_compute_the_published_recurrence(preset: str, titans: bool) -> None:
    mixer = _mixer(preset)
    with torch.no_grad():   # a non-trivial inner norm (gain 1, bias 0 at init would hide a bug)
        if mixer.norm is not None:
            mixer.norm.gain.add_(0.2 * torch.randn_like(mixer.norm.gain))
            mixer.norm.bias.add_(0.2 * torch.randn_like(mixer.norm.bias))
    q, k, v, gates = _inputs(mixer, seed=1)
    o = _run(mixer, q, k, v, gates)
    ref = _mini_batch_reference(mixer, q, k, v, gates, titans=titans)
    torch.testing.assert_close(o, ref, atol=1e-9, rtol=1e-9)


def test_ttt_presets_have_the_inner_norm_and_residual() -> None:
    for preset in ("ttt-linear", "ttt-mlp"):
        mixer = _mixer(preset)
        assert mixer.mlp is not None and mixer.mlp.norm and mixer.mlp.residual, preset
        assert mixer.lr_divisor == mixer.d, preset


def test_read_norm_rescales_only_the_read_branch() -> None:
    """memory.read_norm: the read is q + g RMSNorm(M(q) − q) of the same memory, the state (the
    writes) is untouched."""
    torch.manual_seed(0)
    spec = load_spec(SPECS / "titans-lmm.yaml", overrides=["memories.titans.residual=true",
                                                           "memories.titans.read_norm=0.5"])
    mixer = next(m for m in nestdsl.compile(spec, compile=False).model.modules()
                 if isinstance(m, MemoryMixer))
    mixer.double()
    with torch.no_grad():
        mixer.read_norm.gain.add_(0.1 * torch.randn_like(mixer.read_norm.gain))
    q, k, v, gates = _inputs(mixer)
    o, st = mixer.scan(q, k, v, gates, None)
    rn, mixer.read_norm = mixer.read_norm, None
    o_plain, st_plain = mixer.scan(q, k, v, gates, None)
    b = o_plain - q
    expected = q + b * torch.rsqrt(b.pow(2).mean(-1, keepdim=True) + 1e-6) * rn.gain[:, None, :]
    torch.testing.assert_close(o, expected, rtol=1e-12, atol=1e-12)
    for w, w_plain in zip(st.weights, st_plain.weights, strict=True):
        torch.testing.assert_close(w, w_plain, rtol=0, atol=0)
