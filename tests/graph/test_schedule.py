"""The schedule: which level fires at which token / optimizer step (docs/design.md §3.3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from nestdsl.graph import schedule
from nestdsl.spec import ir
from nestdsl.spec.shipped import OPTIMIZER_DIR

Loader = Callable[[str | Path], ir.Spec]


def test_token_level_fires_every_16_tokens(hope: ir.Spec) -> None:
    s = schedule(hope)
    assert s.seq_len == 128 and s.tokens_per_step == 1024
    assert list(s.firing_tokens("chunk")) == [16, 32, 48, 64, 80, 96, 112, 128]
    assert s.fires("chunk", token=16) and s.fires("chunk", token=32)
    assert not s.fires("chunk", token=15) and not s.fires("chunk", token=17)
    assert s.fires("cms_mid", token=64) and not s.fires("cms_mid", token=32)
    assert s.fires("chunk", step=3)  # in-context levels run inside every step
    assert s.level("chunk").kind == "in-context"


def test_step_level_fires_every_4_steps(hope: ir.Spec) -> None:
    s = schedule(hope, steps=16)
    assert s.firing_steps("cms_slow") == [4, 8, 12, 16]
    assert not s.fires("cms_slow", step=3)
    assert not s.fires("cms_slow", token=16)  # persistent levels never fire inside a sequence
    assert s.level("cms_slow").kind == "persistent"
    assert s.firing_steps("step") == list(range(1, 17))


def test_token_period_multiple_of_tokens_per_step_maps_to_k_steps(load_preset: Loader) -> None:
    spec = load_preset("scale/hope-340m.yaml")
    s = schedule(spec)
    assert s.tokens_per_step == 4096 * 128
    mid, slow = s.level("cms_mid"), s.level("cms_slow")
    assert (mid.steps_every, slow.steps_every) == (2, 32)
    assert mid.period_text == "1048576 tokens = 2 steps"
    assert s.firing_steps("cms_mid", steps=8) == [2, 4, 6, 8]
    assert s.fires("cms_slow", step=32) and not s.fires("cms_slow", step=16)


def test_seq_len_override_changes_classification(hope: ir.Spec) -> None:
    # With 8 x 8 = 64 tokens per step, the 64-token level becomes a 1-step persistent level.
    s = schedule(hope, seq_len=8, batch=8)
    assert s.level("cms_mid").kind == "persistent" and s.level("cms_mid").steps_every == 1
    assert s.level("chunk").kind == "between"  # 16 >= seq_len 8 but < 64: invalid, never fires
    assert not s.fires("chunk", token=16) and not s.fires("chunk", step=1)


def test_levels_ordered_fastest_first(hope: ir.Spec) -> None:
    names = [lv.name for lv in schedule(hope).levels]
    assert names.index("chunk") < names.index("cms_mid") < names.index("step") < names.index("cms_slow")


def test_m3_slow_momentum_level(load_preset: Loader) -> None:
    s = schedule(load_preset(OPTIMIZER_DIR / "m3.yaml"), steps=16)
    slow = [lv for lv in s.levels if lv.owner == "optimizer" and lv.every == 8]
    assert slow, [lv.name for lv in s.levels]
    assert s.firing_steps(slow[0]) == [8, 16]


def test_listing_and_timeline(hope: ir.Spec) -> None:
    s = schedule(hope)
    text = s.listing()
    for name in ("chunk", "cms_fast", "cms_mid", "cms_slow", "step"):
        assert name in text
    tok_head, tok_rows, step_head, step_rows = s.timeline(width=128)
    rows = dict(tok_rows)
    assert rows["chunk"].index("|") == 15 and rows["chunk"].count("|") == 8
    assert dict(step_rows)["cms_slow"].startswith("...|")


def test_bad_queries(hope: ir.Spec) -> None:
    s = schedule(hope)
    with pytest.raises(ValueError):
        s.fires("chunk")
    with pytest.raises(ValueError):
        s.fires("chunk", token=0)
    with pytest.raises(KeyError):
        s.fires("nope", token=1)



def test_a_huge_sequence_length_schedules_in_constant_memory(hope: ir.Spec) -> None:
    import tracemalloc

    tracemalloc.start()
    s = schedule(hope, seq_len=10**9)
    head, rows, _, _ = s.timeline()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(s.firing_tokens("chunk")) == 10**9 // 16 and "tokens 1..1000000000" in head
    assert dict(rows)["chunk"] == "|" * 64
    assert peak < 10 * 2**20
