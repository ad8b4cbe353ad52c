"""The `shards` task: batches are a pure function of the step, windows stay inside one shard
(every window equally likely), a rank reads exactly its slice of the global batch, and a bad
folder is a one-line DataError."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from shard_helpers import DOCS, train_tokenizer, write_txt_folder

from nestdsl.data.prepare import prepare
from nestdsl.data.shards import ShardWriter, Sidecar, SplitInfo, write_sidecar
from nestdsl.runtime.tasks import DataError, ShardTask, Task, make_task
from nestdsl.spec import ir


def constant_shards(folder: Path, lengths: list[int], *, val: list[int] | None = None) -> Path:
    """A hand-written shard folder: shard k of the train split holds ``lengths[k]`` copies of
    the id k (val: 100 + k), so a window shows which shard it came from."""
    folder.mkdir(parents=True)
    splits = {}
    for split, lens, base in (("train", lengths, 0), ("val", val or [], 100)):
        if not lens:
            continue
        w = ShardWriter(folder, split, np.uint16, shard_tokens=10**6)
        for k, n in enumerate(lens):
            w.write(np.full(n, base + k))
            w.close()                                 # one shard per length
        shards = w.close()
        splits[split] = SplitInfo(documents=len(lens), source_bytes=None, tokens=sum(lens), shards=shards)
    write_sidecar(folder, Sidecar(dtype="uint16", vocab_size=256, tokenizer={"kind": "bytes"},
                                  separator={"kind": "newline", "ids": [10]}, source={}, splits=splits))
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("prepared")
    src = write_txt_folder(tmp / "corpus", DOCS * 4)
    prepare(src, tmp / "shards", shard_tokens=300, val_fraction=0.125)
    return tmp / "shards"


def test_batches_are_a_pure_function_of_the_step(prepared):
    a = ShardTask(prepared, seq_len=32, batch=4, seed=7)
    b = ShardTask(prepared, seq_len=32, batch=4, seed=7)   # another process would build this one
    for step in (0, 1, 5, 1000):
        x, y = a.batch(step), b.batch(step)
        assert all(torch.equal(s, t) for s, t in zip(x, y, strict=True))
    x0, x1 = a.batch(0), a.batch(1)
    assert not torch.equal(x0.tokens, x1.tokens)
    assert not torch.equal(a.batch(0, "val").tokens, x0.tokens)
    assert not torch.equal(ShardTask(prepared, seq_len=32, batch=4, seed=8).batch(0).tokens, x0.tokens)
    assert x0.tokens.shape == (4, 32) and x0.tokens.dtype == torch.int64
    assert torch.equal(x0.tokens[:, 1:], x0.targets[:, :-1]) and bool(x0.loss_mask.all())
    # the rows are windows of the split's stream
    stream = b"".join((prepared / s.file).read_bytes() for s in a.shards.split("train").shards)
    ids = np.frombuffer(stream, dtype="<u2").tobytes()
    for row in torch.cat([x0.tokens[:, :1], x0.targets], 1):
        assert row.numpy().astype("<u2").tobytes() in ids


def test_windows_never_cross_a_shard_and_are_equally_likely(tmp_path):
    # train shards of 40, 10 (shorter than a window: never drawn) and 25 tokens; L = 17
    task = ShardTask(constant_shards(tmp_path / "s", [40, 10, 25]), seq_len=16, batch=64)
    seen: Counter[int] = Counter()
    for step in range(40):
        b = task.batch(step)
        full = torch.cat([b.tokens[:, :1], b.targets], 1)
        assert bool((full == full[:, :1]).all()), "a window crossed a shard boundary"
        seen.update(full[:, 0].tolist())
    assert set(seen) == {0, 2}
    share = seen[0] / (seen[0] + seen[2])            # windows: 24 and 9 -> 24/33 = 0.727
    assert abs(share - 24 / 33) < 0.05


@pytest.mark.parametrize("world", [2, 4])
def test_rank_batch_is_the_global_batch_slice(prepared, world):
    task = ShardTask(prepared, seq_len=24, batch=8, seed=3)
    for split in ("train", "val"):
        for step in (0, 9):
            want_rows = Task.rank_batch(task, step, 0, 1, split)   # the default: build, slice
            for rank in range(world):
                got, n = task.rank_batch(step, rank, world, split)
                want, n_want = Task.rank_batch(task, step, rank, world, split)
                assert n == n_want == 8 * 24 == want_rows[1]
                assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
                assert got.tokens.shape == (8 // world, 24)


def test_rank_batch_reads_only_its_rows(prepared, monkeypatch):
    task = ShardTask(prepared, seq_len=24, batch=8, seed=3)
    reads = []
    real = task.shards.window
    monkeypatch.setattr(task.shards, "window", lambda *a: reads.append(a) or real(*a))
    task.rank_batch(4, 1, 4)
    assert len(reads) == 2


def test_folder_and_sidecar_problems_are_one_line(tmp_path, prepared):
    with pytest.raises(DataError, match="shards folder not found.*nestdsl data prepare"):
        ShardTask(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no shards.json.*nestdsl data prepare"):
        ShardTask(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "shards.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        ShardTask(bad)
    (bad / "shards.json").write_text(json.dumps({"format": "nestdsl-token-shards", "version": 9}))
    with pytest.raises(DataError, match="version 9"):
        ShardTask(bad)
    with pytest.raises(DataError, match="at least seq_len\\+1 = 1001 tokens.*lower seq_len"):
        ShardTask(prepared, seq_len=1000)


def test_truncated_and_corrupted_shards(tmp_path):
    from nestdsl.data.shards import verify

    src = write_txt_folder(tmp_path / "corpus", DOCS)
    prepare(src, tmp_path / "s", shard_tokens=200, val_fraction=0)
    shard = tmp_path / "s" / "train_00001.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF                                  # same size, other content
    shard.write_bytes(bytes(data))
    ShardTask(tmp_path / "s", seq_len=16)              # opening checks sizes only
    with pytest.raises(DataError, match="train_00001.bin does not match its sha256"):
        verify(tmp_path / "s", hashes=True)
    shard.write_bytes(bytes(data[:-6]))
    with pytest.raises(DataError, match=r"train_00001\.bin is 394 bytes, the sidecar says 400 \(truncated"):
        ShardTask(tmp_path / "s", seq_len=16)
    shard.unlink()
    with pytest.raises(DataError, match="train_00001.bin is missing"):
        ShardTask(tmp_path / "s", seq_len=16)


def test_no_val_split(tmp_path):
    task = ShardTask(constant_shards(tmp_path / "s", [40]), seq_len=8, batch=2)
    with pytest.raises(DataError, match="no validation split"):
        task.batch(0, "val")
    assert task.split_size("val") == 0 and task.split_size("train") == 40


def test_vocab_tokenizer_and_bytes_per_token_from_the_sidecar(tmp_path):
    tok_path = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    src = write_txt_folder(tmp_path / "corpus", DOCS * 2)
    sc = prepare(src, tmp_path / "s", tokenizer=str(tok_path), val_fraction=0.25)
    task = ShardTask(tmp_path / "s", seq_len=8, batch=2)
    assert task.vocab_size == sc.vocab_size == 300
    text = "the lazy dog — naïve café"
    assert task.decode(task.encode(text)) == text
    val = sc.splits["val"]
    assert task.bytes_per_token == pytest.approx(val.source_bytes / val.tokens) and task.bytes_per_token > 1.5
    assert task.num_tokens == sc.totals()["tokens"]
    assert task.eot_token_id == task.encode("<|endoftext|>")[0] == sc.separator["ids"][0]
    assert ShardTask(constant_shards(tmp_path / "c", [40]), seq_len=8).decode([104, 105]) == "hi"
    assert not hasattr(ShardTask(tmp_path / "c", seq_len=8), "bytes_per_token")  # unknown bytes
    assert ShardTask(tmp_path / "c", seq_len=8).eot_token_id is None      # no eos separator


def test_make_task_from_the_ir(prepared):
    node = ir.ShardsData(task="shards", path=prepared.name, seq_len=16, batch=4, seed=1)
    task = make_task(node, base_dir=prepared.parent)
    assert isinstance(task, ShardTask) and task.batch_size == 4 and task.seq_len == 16
    assert make_task(node, base_dir=prepared.parent, seq_len=32, batch=2).batch(0).tokens.shape == (2, 32)
