"""One battery over every nestdsl optimizer (optax style: a parametrised table of cases).

Each case pairs an optimizer spec with a hand-written reference step (per-tensor loop,
written to read like the docstring equations). The fixed problem is a small linear
regression: nn.Linear(3, 5) (weight (5, 3) + bias) on 32 samples.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestdsl.optim import build, register_dgd_hooks
from nestdsl.spec import ir

STEPS = 20

# ---------------------------------------------------------------------------------------------
# The fixed problem


def make_problem(dtype: torch.dtype = torch.float32) -> tuple[nn.Linear, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(32, 3, generator=gen)
    W_true = torch.randn(5, 3, generator=gen)
    Y = X @ W_true.T + 0.5 + 0.1 * torch.randn(32, 5, generator=gen)
    torch.manual_seed(1)
    model = nn.Linear(3, 5).to(dtype)
    return model, X.to(dtype), Y.to(dtype)


def loss_fn(model: nn.Module, X: Tensor, Y: Tensor) -> Tensor:
    return F.mse_loss(model(X).float(), Y.float())


# ---------------------------------------------------------------------------------------------
# Hand-written references: ref(params, grads, state, t, spec, X) updates params in place.


def ns_ref(G: Tensor, steps: int) -> Tensor:
    """Quintic Newton-Schulz, written out."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def rows(t: Tensor) -> Tensor:
    return t.reshape(1, -1) if t.ndim == 1 else t


def decay(W: Tensor, spec: ir.Optimizer, lr: float | None = None) -> None:
    W.mul_(1 - (lr or spec.lr) * spec.weight_decay)


def read_out(m: Tensor, spec: ir.Optimizer) -> Tensor:
    """What the parameters take from a momentum memory m: m itself, or with the Newton-Schulz
    output lr · s · NS(m) (Muon's shape scale s; NS discards m's scale, so lr enters after)."""
    if spec.output != "newton_schulz":
        return m
    r = rows(m)
    scale = max(1.0, r.shape[0] / r.shape[1]) ** 0.5
    return spec.lr * scale * ns_ref(r, spec.ns_steps).reshape(m.shape)


def ref_sgd(Ps, Gs, S, t, spec, X):
    for W, g in zip(Ps, Gs, strict=True):
        decay(W, spec)
        W.add_(-spec.lr * g)


def ref_momentum(Ps, Gs, S, t, spec, X):
    for i, (W, g) in enumerate(zip(Ps, Gs, strict=True)):
        m = S.setdefault(i, torch.zeros_like(W))
        m.copy_(spec.beta * m - spec.lr * g)
        decay(W, spec)
        W.add_(read_out(m, spec))


def ref_precond(Ps, Gs, S, t, spec, X):
    for i, (W, g) in enumerate(zip(Ps, Gs, strict=True)):
        m = S.setdefault(("m", i), torch.zeros_like(W))
        v = S.setdefault(("v", i), torch.zeros_like(W))
        v.copy_(spec.beta2 * v + (1 - spec.beta2) * g * g)
        P_g = g / (torch.sqrt(v / (1 - spec.beta2**t)) + spec.eps)
        m.copy_(spec.beta * m - spec.lr * P_g)
        decay(W, spec)
        W.add_(m)


def ref_delta(Ps, Gs, S, t, spec, X):
    for i, (W, g) in enumerate(zip(Ps, Gs, strict=True)):
        m = S.setdefault(i, torch.zeros_like(W))
        if W.ndim == 2:
            if spec.normalize == "row":
                gh = g / g.norm(dim=1, keepdim=True) / math.sqrt(g.shape[0])
            elif spec.normalize == "global":
                gh = g / g.norm()
            else:
                gh = g
            eye = torch.eye(W.shape[1])
            new_m = m @ (spec.beta * eye - spec.momentum_lr * gh.T @ gh) - spec.lr * g
        else:
            gh = g if spec.normalize == "none" else g / g.norm()
            new_m = m * (spec.beta - spec.momentum_lr * gh * gh) - spec.lr * g
        m.copy_(new_m)
        decay(W, spec)
        W.add_(read_out(m, spec))


def ref_dmgd(Ps, Gs, S, t, spec, X):
    from nestdsl.optim.dmgd import _SEED  # the documented seed convention of the key map W1

    for i, (W, g) in enumerate(zip(Ps, Gs, strict=True)):
        G = g.reshape(-1, 1) if g.ndim == 1 else g  # (5, 3): rows = the longer side
        n, d = G.shape
        H = spec.hidden * d
        if i not in S:
            gen = torch.Generator().manual_seed(_SEED + i)
            S[i] = {
                "M": torch.zeros_like(W),
                "W1": torch.randn(H, d, generator=gen) / math.sqrt(d),
                "W2": torch.zeros(d, H),
            }
        st = S[i]
        rms = G.pow(2).mean().sqrt()
        U = G / rms
        T = torch.tanh(U @ st["W1"].T)
        Fm = T / math.sqrt(H)
        grad_W2 = U.T @ Fm
        grad_W1 = ((U @ st["W2"]) * (1 - T**2) / math.sqrt(H)).T @ U
        st["M"] = spec.beta * st["M"] - g
        st["W2"] = spec.beta * st["W2"] - spec.momentum_lr * grad_W2
        st["W1"] = st["W1"] - spec.momentum_lr * grad_W1
        read = rms * (torch.tanh(U @ st["W1"].T) / math.sqrt(H)) @ st["W2"].T
        u = st["M"] + read.reshape(W.shape)
        decay(W, spec)
        if spec.output == "newton_schulz":
            r = rows(u)
            scale = max(1.0, r.shape[0] / r.shape[1]) ** 0.5
            W.add_(spec.lr * scale * ns_ref(r, spec.ns_steps).reshape(W.shape))
        else:
            W.add_(spec.lr * u)


def ref_muon(Ps, Gs, S, t, spec, X):
    for i, (W, g) in enumerate(zip(Ps, Gs, strict=True)):
        m = S.setdefault(i, torch.zeros_like(W))
        m.copy_(spec.beta * m + g)
        r = rows(m)
        scale = max(1.0, r.shape[0] / r.shape[1]) ** 0.5
        decay(W, spec)
        W.add_(-spec.lr * scale * ns_ref(r, spec.ns_steps).reshape(W.shape))


def ref_m3(Ps, Gs, S, t, spec, X):
    for i, (W, g) in enumerate(zip(Ps, Gs, strict=True)):
        if i not in S:
            S[i] = {k: torch.zeros_like(W) for k in ("M1", "M2", "A", "O2", "V")}
        st = S[i]
        st["M1"] = spec.beta * st["M1"] + (1 - spec.beta) * g
        st["V"] = spec.beta2 * st["V"] + (1 - spec.beta2) * g**2
        st["A"] = st["A"] + g
        O1 = ns_ref(rows(st["M1"]), spec.ns_steps).reshape(W.shape)
        update = (O1 + spec.alpha * st["O2"]) / (
            torch.sqrt(st["V"] / (1 - spec.beta2**t)) + spec.eps
        )
        decay(W, spec)
        W.add_(-spec.lr * update)
        if t % spec.slow_every == 0:
            st["M2"] = spec.beta_slow * st["M2"] + (1 - spec.beta_slow) * st["A"]
            st["A"] = torch.zeros_like(W)
            st["O2"] = ns_ref(rows(st["M2"]), spec.ns_steps).reshape(W.shape)


def ref_adamw(Ps, Gs, S, t, spec, X):
    for i, (W, g) in enumerate(zip(Ps, Gs, strict=True)):
        m = S.setdefault(("m", i), torch.zeros_like(W))
        v = S.setdefault(("v", i), torch.zeros_like(W))
        m.copy_(spec.beta * m + (1 - spec.beta) * g)
        v.copy_(spec.beta2 * v + (1 - spec.beta2) * g * g)
        m_hat = m / (1 - spec.beta**t)
        v_hat = v / (1 - spec.beta2**t)
        decay(W, spec)
        W.add_(-spec.lr * m_hat / (v_hat.sqrt() + spec.eps))


def ref_dgd(Ps, Gs, S, t, spec, X):
    for W, g in zip(Ps, Gs, strict=True):
        if W.ndim == 2:  # the nn.Linear weight: inputs were captured
            C = X.T @ X / X.shape[0]
            eta_p = spec.lr / (1 + spec.lr * torch.trace(C))
            erase = W @ C  # read before the decoupled decay, like every other state
            decay(W, spec)
            W.add_(-eta_p * erase - spec.lr * g)
        else:  # the bias: no inputs -> plain GD
            decay(W, spec)
            W.add_(-spec.lr * g)


# ---------------------------------------------------------------------------------------------
# The table


@dataclass
class Case:
    id: str
    spec: ir.Optimizer
    ref: Callable[..., None]
    ref_atol: float = 1e-6
    syncs_ok: bool = True  # False: not ours (torch's AdamW calls .item() on CPU)
    extra: dict[str, Any] = field(default_factory=dict)


def spec_(**kw: Any) -> ir.Optimizer:
    return ir.optimizer(**kw)


CASES = [
    Case("sgd", spec_(type="sgd", lr=0.1, weight_decay=0.01), ref_sgd),
    Case("momentum", spec_(type="momentum", lr=0.03, beta=0.9, weight_decay=0.01), ref_momentum),
    Case("momentum_ns", spec_(type="momentum", lr=0.03, output="newton_schulz", ns_steps=4),
         ref_momentum),
    Case("precond_momentum", spec_(type="precond_momentum", lr=0.01, beta=0.9), ref_precond),
    Case(
        "delta_row",
        spec_(type="delta_momentum", lr=0.03, momentum_lr=0.5, weight_decay=0.01),
        ref_delta,
    ),
    Case("delta_global", spec_(type="delta_momentum", lr=0.03, normalize="global"), ref_delta),
    Case(
        "delta_none",
        spec_(type="delta_momentum", lr=0.03, normalize="none", momentum_lr=0.01),
        ref_delta,
    ),
    Case("delta_ns", spec_(type="delta_momentum", lr=0.03, output="newton_schulz"), ref_delta),
    Case("dmgd", spec_(type="dmgd", lr=0.03, momentum_lr=0.1, weight_decay=0.01), ref_dmgd),
    Case("dmgd_ns", spec_(type="dmgd", lr=0.03, momentum_lr=0.1, output="newton_schulz"), ref_dmgd),
    Case("muon", spec_(type="muon", lr=0.05, beta=0.9, weight_decay=0.01), ref_muon),
    Case(
        "m3",
        spec_(type="m3", lr=0.05, slow_every=4, beta_slow=0.9, alpha=0.5, weight_decay=0.01),
        ref_m3,
    ),
    Case(
        "adamw",
        spec_(type="adamw", lr=0.05, weight_decay=0.01),
        ref_adamw,
        ref_atol=1e-5,
        syncs_ok=False,
    ),
    Case("dgd", spec_(type="dgd", lr=0.1, weight_decay=0.01), ref_dgd),
]
IDS = [c.id for c in CASES]


def make_opt(case: Case, model: nn.Module) -> torch.optim.Optimizer:
    opt = build(case.spec, model.named_parameters())
    register_dgd_hooks(model, opt)
    return opt


def train(
    model: nn.Module, opt: torch.optim.Optimizer, X: Tensor, Y: Tensor, steps: int
) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model, X, Y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------
# The battery


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference(case: Case) -> None:
    model, X, Y = make_problem()
    params = [p.detach().clone() for p in model.parameters()]
    opt = make_opt(case, model)
    train(model, opt, X, Y, STEPS)

    state: dict[Any, Any] = {}
    for t in range(1, STEPS + 1):
        Ps = [p.requires_grad_(True) for p in params]
        loss = F.mse_loss(F.linear(X, Ps[0], Ps[1]), Y)
        grads = torch.autograd.grad(loss, Ps)
        with torch.no_grad():
            case.ref([p.detach() for p in Ps], grads, state, t, case.spec, X)
    for got, want in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(got.detach(), want.detach(), atol=case.ref_atol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_round_trip(case: Case, dtype: torch.dtype) -> None:
    model, X, Y = make_problem(dtype)
    straight = copy.deepcopy(model)
    train(straight, make_opt(case, straight), X, Y, 2 * (STEPS // 2))

    opt = make_opt(case, model)
    train(model, opt, X, Y, STEPS // 2)
    saved = copy.deepcopy(opt.state_dict())
    resumed = copy.deepcopy(model)
    opt2 = make_opt(case, resumed)
    opt2.load_state_dict(saved)
    train(resumed, opt2, X, Y, STEPS // 2)
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dtypes_decrease_loss(case: Case, dtype: torch.dtype) -> None:
    model, X, Y = make_problem(dtype)
    opt = make_opt(case, model)
    losses = train(model, opt, X, Y, STEPS)
    assert all(p.dtype == dtype for p in model.parameters())
    assert math.isfinite(losses[-1])
    assert losses[-1] < 0.7 * losses[0], losses
    if case.spec.type != "adamw":  # ours keep float32 state for any param dtype
        for st in _states(opt):
            for v in st.values():
                if isinstance(v, Tensor) and v.is_floating_point():
                    assert v.dtype == torch.float32


def _states(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    children = getattr(opt, "optimizers", [opt])
    return [st for o in children for st in o.state.values()]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_no_host_sync_in_step(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    if not case.syncs_ok:
        pytest.skip("torch.optim.AdamW reads its step counter with .item() on CPU")
    model, X, Y = make_problem()
    opt = make_opt(case, model)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("host synchronisation inside step()")

    for step in range(6):  # several steps: M3's slow level fires at step 4
        opt.zero_grad()
        loss_fn(model, X, Y).backward()
        with monkeypatch.context() as mp:
            for name in (
                "item",
                "cpu",
                "tolist",
                "numpy",
                "__bool__",
                "__float__",
                "__int__",
                "__index__",
            ):
                mp.setattr(torch.Tensor, name, boom)
            opt.step()
        assert step >= 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_params_without_grad_are_skipped(case: Case) -> None:
    model, X, Y = make_problem()
    model.unused = nn.Parameter(torch.randn(4, 4))  # never receives a gradient
    before = model.unused.detach().clone()
    opt = make_opt(case, model)
    train(model, opt, X, Y, 3)
    assert model.unused.grad is None
    torch.testing.assert_close(model.unused.detach(), before, atol=0, rtol=0)
    children = getattr(opt, "optimizers", [opt])
    assert all(model.unused not in o.state for o in children)


def test_sync_detector_catches_item(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patching above really intercepts a sync (guards against a vacuous battery)."""
    model, X, Y = make_problem()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # calls .item() on CPU
    loss_fn(model, X, Y).backward()
    with monkeypatch.context() as mp:
        mp.setattr(
            torch.Tensor, "item", lambda *a, **k: (_ for _ in ()).throw(AssertionError("sync"))
        )
        with pytest.raises(AssertionError, match="sync"):
            opt.step()
