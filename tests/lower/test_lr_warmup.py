"""Inner-lr warm-up (rule.lr_warmup): at outer step s the inner step is η·min(1, (s + 1)/N).

A memory warmed up over N steps computes, at step s, exactly what the same memory with the
constant η·min(1, (s + 1)/N) computes; the train loop sets the step, the checkpoint carries it.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from lower_helpers import build, model_spec

from nestdsl.lower.inner import LrWarmup, set_outer_step
from nestdsl.runtime.checkpoint import load_checkpoint
from nestdsl.runtime.train import train
from nestdsl.spec import parse_text


def _mixer_spec(lr: float, warmup: int | None, kind: str = "mlp") -> str:
    extra = f", lr_warmup: {warmup}" if warmup else ""
    shape = "depth: 2, hidden: 2, residual: true, " if kind == "mlp" else ""
    mem = (f"  m: {{kind: {kind}, {shape}objective: l2, "
           f"rule: {{kind: dgd, lr: {lr}, momentum: 0.5{extra}}}}}")
    return model_spec(mem, "      - {type: memory, memory: m}")


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_warmed_memory_equals_the_scaled_constant_step(kind):
    warm = build(_mixer_spec(0.4, 4, kind)).model
    tokens = torch.randint(0, 32, (2, 24), generator=torch.Generator().manual_seed(0))
    for step, factor in ((0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0), (50, 1.0)):
        set_outer_step(warm, step)
        plain = build(_mixer_spec(0.4 * factor, None, kind)).model
        missing, unexpected = plain.load_state_dict(warm.state_dict(), strict=False)
        assert not missing and all(k.endswith("lr_warmup.factor") for k in unexpected)
        with torch.no_grad():
            torch.testing.assert_close(warm(tokens), plain(tokens), rtol=1e-6, atol=1e-6)
    # the warm-up changes the computation (not a no-op): step 0 differs from the full step
    set_outer_step(warm, 0)
    full = build(_mixer_spec(0.4, None, kind)).model
    full.load_state_dict(warm.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(warm(tokens), full(tokens), atol=1e-4)


def test_a_fresh_model_starts_at_step_zero():
    (w,) = [m for m in build(_mixer_spec(0.4, 8)).model.modules() if isinstance(m, LrWarmup)]
    assert float(w.factor) == pytest.approx(1 / 8)


def test_train_sets_the_step_and_the_checkpoint_keeps_it(tmp_path):
    text = _mixer_spec(0.4, 10).replace("vocab: 32", "vocab: 256") + textwrap.dedent("""\
        data: {task: copy, length: 4, seq_len: 16, batch: 2}
        optimizer: {type: sgd, lr: 0.01}
        train: {steps: 3, log_every: 1, ckpt_every: 3, compile: false}
        """)
    _, spec = parse_text(text, "<test>", "yaml")
    train(spec, spec_text=text, run_dir=tmp_path / "run")
    ck = load_checkpoint(tmp_path / "run")
    (key,) = [k for k in ck.model_state if k.endswith("lr_warmup.factor")]
    assert float(ck.model_state[key]) == pytest.approx(0.3)      # last step s = 2: (2 + 1)/10
