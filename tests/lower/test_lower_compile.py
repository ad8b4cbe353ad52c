"""torch.compile'd model == its eager twin (forward and every gradient), for the tiny presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nestdsl
from nestdsl.pipeline import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.mark.slow
@pytest.mark.parametrize("name,T", [("titans-lmm", 32), ("hope", 64)])
def test_compiled_equals_eager(name: str, T: int) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    torch.manual_seed(0)
    system = nestdsl.compile(spec, compile=True)
    model = system.model
    tokens = torch.randint(0, model.vocab, (2, T))

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model.loss(tokens, tokens)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    if name == "titans-lmm":
        # One graph per compiled piece: the second chunk must reuse the first chunk's graph (a
        # stride-0 initial state, a requires_grad-less zero momentum or a cache read inside the
        # graph each once cost a second full compile).
        torch._dynamo.reset()
        with torch._dynamo.config.patch(error_on_recompile=True):
            loss_c, grads_c = run()
    else:
        run()
        # Hope's memories legitimately share one chunk-step function with two configurations;
        # after the first step every piece must be reused as is.
        with torch._dynamo.config.patch(error_on_recompile=True):
            loss_c, grads_c = run()
    assert not model._compile_config.failures, model._compile_config.failures
    assert all(r.compiled != "eager (FALLBACK)" for r in system.plan)
    system.set_compile(False)
    loss_e, grads_e = run()
    torch.testing.assert_close(loss_c, loss_e, atol=1e-5, rtol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    for n in grads_c:
        torch.testing.assert_close(grads_c[n], grads_e[n], atol=1e-5, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
