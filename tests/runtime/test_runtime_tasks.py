"""Synthetic task generators: determinism, layout/answer positions, oracle accuracy."""

from __future__ import annotations

import re

import pytest
import torch
from pydantic import TypeAdapter

from nestdsl.runtime.tasks import (
    ContinualTask,
    CopyTask,
    DataError,
    MQARTask,
    NIAHTask,
    accuracy,
    exact_match,
    make_task,
    min_seq_len,
)
from nestdsl.runtime.tasks import niah as niah_mod
from nestdsl.spec import ir

DATA = TypeAdapter(ir.Data)


def data(**kw):
    return DATA.validate_python(kw)


SYNTHETIC = {
    "mqar": lambda: MQARTask(seq_len=64, batch=4, seed=1, num_pairs=8, num_queries=6),
    "copy": lambda: CopyTask(seq_len=40, batch=4, seed=1, length=12),
    "niah1": lambda: NIAHTask(seq_len=128, batch=4, seed=1, variant=1),
    "niah2": lambda: NIAHTask(seq_len=160, batch=4, seed=1, variant=2),
    "niah3": lambda: NIAHTask(seq_len=200, batch=4, seed=1, variant=3),
    "continual": lambda: ContinualTask(
        [MQARTask(seq_len=64, batch=4), CopyTask(seq_len=64, batch=4, length=8)], switch_every=2
    ),
}


@pytest.fixture(params=sorted(SYNTHETIC))
def task(request):
    return SYNTHETIC[request.param]()


def test_shapes_and_vocab(task):
    b = task.batch(0)
    B, T = task.batch_size, task.seq_len
    assert b.tokens.shape == b.targets.shape == b.loss_mask.shape == (B, T)
    assert b.tokens.dtype == torch.long and b.targets.dtype == torch.long
    assert b.loss_mask.dtype == torch.bool
    assert int(b.tokens.min()) >= 0 and int(b.tokens.max()) < task.vocab_size
    assert int(b.targets.max()) < task.vocab_size
    # next-token convention: targets are the tokens shifted by one
    assert torch.equal(b.tokens[:, 1:], b.targets[:, :-1])
    assert bool(b.loss_mask.any(dim=1).all())


def test_deterministic(task):
    a, b = task.batch(7), task.batch(7)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    # a freshly built task (e.g. after a resume) gives the same batch without replaying
    fresh = type(task).__new__(type(task))
    fresh.__dict__.update(task.__dict__)
    assert torch.equal(fresh.batch(7).tokens, a.tokens)
    assert not torch.equal(task.batch(8).tokens, a.tokens)
    assert not torch.equal(task.batch(7, "val").tokens, a.tokens)


def test_seed_changes_data():
    assert not torch.equal(MQARTask(seed=0).batch(0).tokens, MQARTask(seed=1).batch(0).tokens)
    assert not torch.equal(CopyTask(seed=0).batch(0).tokens, CopyTask(seed=1).batch(0).tokens)


def test_oracle_and_wrong(task):
    b = task.batch(3)
    assert task.accuracy(b.targets, b.targets, b.loss_mask) == 1.0
    logits = torch.nn.functional.one_hot(b.targets, task.vocab_size).float()
    assert task.accuracy(logits, b.targets, b.loss_mask) == 1.0
    wrong = (b.targets + 1) % task.vocab_size
    assert task.accuracy(wrong, b.targets, b.loss_mask) == 0.0
    # one wrong answer token in one sample: that sample fails, the others pass
    partial = b.targets.clone()
    t = int(b.loss_mask[0].nonzero()[-1])
    partial[0, t] = (partial[0, t] + 1) % task.vocab_size
    assert task.accuracy(partial, b.targets, b.loss_mask) == pytest.approx(
        (task.batch_size - 1) / task.batch_size
    )
    # errors outside the answer positions do not count
    noisy = torch.where(b.loss_mask, b.targets, (b.targets + 1) % task.vocab_size)
    assert task.accuracy(noisy, b.targets, b.loss_mask) == 1.0


def test_accuracy_helpers():
    t = torch.tensor([[1, 2, 3], [4, 5, 6]])
    m = torch.tensor([[False, True, True], [False, False, False]])
    assert exact_match(t, t, m).tolist() == [True, True]
    assert accuracy(t, t, m) == 1.0  # the sample without answers is left out
    with pytest.raises(ValueError, match="no answer positions"):
        accuracy(t, t, torch.zeros_like(m))
    with pytest.raises(ValueError, match="do not match"):
        accuracy(t[:, :2], t, m)


def test_mqar_answer_positions():
    task = MQARTask(seq_len=64, batch=8, seed=3, num_pairs=8, num_queries=5)
    b = task.batch(0)
    for i in range(task.batch_size):
        seq = torch.cat([b.tokens[i], b.targets[i, -1:]]).tolist()
        kv = dict(zip(seq[0:16:2], seq[1:16:2], strict=True))
        assert len(kv) == 8  # distinct keys
        assert all(task.key_start <= k < task.value_start for k in kv)
        assert all(task.value_start <= v < task.vocab_size for v in kv.values())
        pos = b.loss_mask[i].nonzero().flatten().tolist()
        assert len(pos) == 5
        queried = [b.tokens[i, p].item() for p in pos]
        assert len(set(queried)) == 5
        for p in pos:
            assert p >= 16  # queries come after the pairs
            assert b.targets[i, p].item() == kv[b.tokens[i, p].item()]
        # everything else in the query region is padding
        others = [t for j, t in enumerate(seq[16:], 16) if j - 1 not in pos and j not in pos]
        assert set(others) <= {0}


def test_mqar_too_short():
    with pytest.raises(DataError, match="too short"):
        MQARTask(seq_len=20, num_pairs=8)
    with pytest.raises(DataError, match="num_pairs"):
        MQARTask(seq_len=1024, num_pairs=200)


def test_copy_answer_positions():
    task = CopyTask(seq_len=50, batch=3, seed=2, length=10)
    b = task.batch(5)
    for i in range(3):
        src = b.tokens[i, :10]
        assert b.tokens[i, 10].item() == 1  # SEP
        assert b.loss_mask[i].nonzero().flatten().tolist() == list(range(10, 20))
        assert torch.equal(b.targets[i, 10:20], src)
        assert (src >= 2).all()
    with pytest.raises(DataError, match="too short"):
        CopyTask(seq_len=10, length=8)


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_niah_needle_and_answer(variant):
    task = NIAHTask(seq_len=300, batch=4, seed=5, variant=variant)
    b = task.batch(2)
    for i in range(4):
        text = task.decode(torch.cat([b.tokens[i], b.targets[i, -1:]]))
        assert len(text) == 301
        answer = task.decode(b.targets[i][b.loss_mask[i]])
        assert text.endswith(answer)
        assert b.loss_mask[i].nonzero().flatten().tolist() == list(range(300 - task.answer_len, 300))
        if variant == 1:
            assert re.fullmatch(r"[1-9]\d{6}", answer)
            assert f"The pass key is {answer}. " in text
        elif variant == 2:
            key = re.search(r"magic number for (\w+)\? $", text[: -len(answer)]).group(1)
            assert f"The magic number for {key} is {answer}. " in text
        else:
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}", answer)
            key = re.search(r"magic uuid for (\w+)\? $", text[: -len(answer)]).group(1)
            assert f"The magic uuid for {key} is {answer}. " in text


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_niah_length_sweep(variant):
    spec = data(task="niah", variant=variant, batch=2)
    lo = min_seq_len(variant)
    assert lo <= 128
    assert min_seq_len(1) == 64
    for n in sorted({lo, lo + 1, 256, 512, 1024, 2048}):
        t = niah_mod.make(spec, seq_len=n)
        b = t.batch(0)
        assert b.tokens.shape == (2, n)
        assert t.accuracy(b.targets, b.targets, b.loss_mask) == 1.0
    with pytest.raises(DataError, match="needs seq_len >="):
        niah_mod.make(spec, seq_len=lo - 1)


def test_niah_depth():
    t0 = NIAHTask(seq_len=512, batch=2, variant=1, depth=0.0)
    text = t0.decode(t0.batch(0).tokens[0])
    assert text.startswith("The pass key is ")
    t1 = NIAHTask(seq_len=512, batch=2, variant=1, depth=1.0)
    text = t1.decode(t1.batch(0).tokens[0])
    assert text.index("The pass key is") > 400
    with pytest.raises(DataError, match="depth"):
        NIAHTask(depth=1.5)


def test_make_task_from_ir():
    assert isinstance(make_task(data(task="mqar", num_pairs=4, seq_len=32)), MQARTask)
    assert isinstance(make_task(data(task="copy", length=4, seq_len=32)), CopyTask)
    t = make_task(data(task="niah", variant=2), seq_len=1024, batch=3)
    assert isinstance(t, NIAHTask) and t.seq_len == 1024 and t.batch_size == 3 and t.variant == 2
    t = make_task(data(task="mqar", seed=9, batch=5))
    assert (t.seed, t.batch_size, t.seq_len) == (9, 5, 128)


def test_continual():
    spec = data(
        task="continual",
        seq_len=96,
        batch=2,
        switch_every=3,
        tasks=[{"task": "mqar", "num_pairs": 4}, {"task": "copy", "length": 8}, {"task": "niah"}],
    )
    t = make_task(spec)
    assert isinstance(t, ContinualTask)
    assert [t.current_task(s) for s in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    assert t.switch_points(10) == [3, 6, 9]
    assert t.vocab_size == max(s.vocab_size for s in t.tasks)
    assert all((s.seq_len, s.batch_size) == (96, 2) for s in t.tasks)
    for step in (0, 4, 7):
        b = t.batch(step)
        assert torch.equal(b.tokens, t.task_at(step).batch(step).tokens)
        assert t.accuracy(b.targets, b.targets, b.loss_mask) == 1.0
    assert isinstance(t.task_at(4), CopyTask)
    with pytest.raises(DataError, match="differ"):
        ContinualTask([MQARTask(seq_len=64), CopyTask(seq_len=32, length=4)])
