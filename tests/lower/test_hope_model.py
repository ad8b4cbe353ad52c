"""hope-tiny (specs/hope.yaml) through `compile_spec`: builds, trains (forward + backward through
the task sweep), exposes its levels, and the compiled model equals the eager one."""

from __future__ import annotations

import pytest
import torch

from nestdsl.lower import compile_spec
from nestdsl.pipeline import load_spec
from nestdsl.spec import ir


def hope_tiny() -> ir.Spec:
    spec = load_spec("specs/hope.yaml").model_copy(deep=True)
    # Inner step sizes that keep the chunked updates stable (the preset's η_max 0.1 for M_mem and
    # lr 0.01 for the projections, with momentum 0.9 and gradients summed over C = 16 tokens,
    # diverge to NaN within ~100 tokens; reported to the lead).
    rule = spec.memories["titans"].rule
    assert rule is not None and isinstance(rule.lr, ir.LearnedGate)
    rule.lr.scale = min(rule.lr.scale, 0.01)
    prule = spec.memories["projection"].rule
    assert prule is not None and isinstance(prule.lr, float)
    prule.lr = min(prule.lr, 0.002)
    return spec


def test_hope_tiny_builds_and_trains():
    torch.manual_seed(0)
    system = compile_spec(hope_tiny(), compile=False)
    model = system.model
    assert model.uses_task_sweep
    kinds = [r.kind for r in system.plan]
    assert kinds.count("self_modifying") == 2 and kinds.count("cms stage") == 6
    assert sum(r.params for r in system.plan) == system.param_count
    slow = [lv for lv in system.levels if lv.name == "cms_slow"]
    assert len(slow) == 1 and slow[0].kind == "persistent" and slow[0].every_k == 4
    assert slow[0].param_count == 2 * 2 * (4 * 64 * 64)          # 2 layers × (W_in, W_out)

    tokens = torch.randint(0, 256, (2, 128))
    targets = torch.randint(0, 256, (2, 128))
    loss = model.loss(tokens, targets)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_hope_tiny_compiled_equals_eager():
    spec = hope_tiny()
    assert spec.model is not None
    spec.model.depth = 1          # compile cost is per graph (C++ kernels), not per layer or token
    torch.manual_seed(0)
    system = compile_spec(spec, compile=True)
    model = system.model
    tokens = torch.randint(0, 256, (1, 32))
    targets = torch.randint(0, 256, (1, 32))

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = model.loss(tokens, targets)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model.set_compile(False)
    l_eager, g_eager = loss_and_grads()
    model.set_compile(True)
    l_comp, g_comp = loss_and_grads()
    assert not model._compile_config.failures, model._compile_config.failures
    assert all(r.compiled == "compiled" for r in system.plan
               if r.kind in ("self_modifying", "self_modifying projection"))
    torch.testing.assert_close(l_comp, l_eager, atol=1e-5, rtol=1e-5)
    for n in g_eager:
        torch.testing.assert_close(g_comp[n], g_eager[n], atol=1e-5, rtol=1e-4, msg=n)


def test_hope_tiny_trains_under_cpu_bf16_autocast():
    """Mixed precision on CPU: the memories' triangular solves run in float32 (CPU has no bf16
    triangular solve; `train.precision: bf16` used to stop Hope at its first step), and
    the loss and gradients stay finite and near the float32 ones."""
    torch.manual_seed(0)
    model = compile_spec(hope_tiny(), compile=False).model
    tokens = torch.randint(0, 256, (2, 64))
    targets = torch.randint(0, 256, (2, 64))
    ref = model.loss(tokens, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(tokens, targets)
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.05 * ref.item()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_piecewise_task_sweep_equals_the_uncut_sweep(monkeypatch, dtype):
    """The sweep cut into pieces of lcm(task periods) tokens (each write's backward local to its
    piece, pieces recomputed in backward) gives the uncut sweep's loss and gradients, whatever
    whole number of lcm periods a piece holds."""
    from nestdsl.lower import sweep

    spec = load_spec("specs/hope.yaml", overrides=["model.width=32", "model.heads=2",
                                                   "levels.cms_mid.every=64 tokens",
                                                   "data={task: niah, variant: 1, seq_len: 128, batch: 8}"])
    torch.manual_seed(0)
    model = compile_spec(spec, compile=False).model.to(dtype)
    tokens = torch.randint(0, 256, (2, 256))
    targets = torch.randint(0, 256, (2, 256))

    def run(pieces_from: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        monkeypatch.setattr(sweep, "PIECEWISE_FROM", pieces_from)
        model.zero_grad(set_to_none=True)
        loss = model.loss(tokens, targets)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    monkeypatch.setattr(sweep, "PIECE_TOKENS", 64)     # 4 pieces in this short sequence
    calls = []
    real = sweep._Pieces.apply
    monkeypatch.setattr(sweep._Pieces, "apply", lambda *a: calls.append(len(a[1])) or real(*a))
    loss, grads = run(10**9)
    assert calls == []
    loss_p, grads_p = run(2)
    assert calls == [4]                              # 256 tokens = 4 pieces of lcm(16, 64)
    monkeypatch.setattr(sweep, "PIECE_TOKENS", 100)    # rounded up to 2·lcm: 2 pieces
    loss_2, grads_2 = run(2)
    assert calls == [4, 2]
    torch.testing.assert_close(loss_2, loss_p, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=0)
    # float64 pins the math; in float32 the pieces sum the same terms in another order, which
    # moves the smallest gradients (an inner-norm bias, |g| ~ 6e-4) by up to ~0.5% of their max
    tol, scale = (1e-10, 1e-10) if dtype == torch.float64 else (1e-5, 1e-2)
    torch.testing.assert_close(loss_p, loss, rtol=tol, atol=0)
    assert grads_p.keys() == grads.keys()
    for cut in (grads_p, grads_2):
        assert cut.keys() == grads.keys()
        for n, g in grads.items():
            torch.testing.assert_close(cut[n], g, rtol=tol, atol=scale * g.abs().max().item(),
                                       msg=lambda m, n=n: f"{n}: {m}")
    if dtype == torch.float32:   # the recomputation runs under the forward's autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_bf, _ = run(10**9)
            monkeypatch.setattr(sweep, "PIECE_TOKENS", 64)
            loss_bf_p, grads_bf_p = run(2)
        assert abs(loss_bf_p.item() - loss_bf.item()) < 1e-6 * loss_bf.item()
        assert loss_bf.item() != loss.item()          # autocast was on
        assert all(torch.isfinite(g).all() for g in grads_bf_p.values())
