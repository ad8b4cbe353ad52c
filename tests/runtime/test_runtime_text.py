"""Text task: byte-level windows, splits, folders, every DataError case, optional BPE."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter

from nestdsl.runtime.tasks import DataError, TextTask, make_task
from nestdsl.spec import ir

CORPUS = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(CORPUS)
    return p


def test_byte_windows(corpus: Path):
    t = TextTask(corpus, seq_len=32, batch=4, seed=0, val_fraction=0.1)
    assert t.vocab_size == 256 and t.bytes_per_token == 1.0
    raw = corpus.read_bytes()
    n_val = round(len(raw) * 0.1)
    train, val = raw[: len(raw) - n_val], raw[len(raw) - n_val :]
    b = t.batch(0)
    assert b.tokens.shape == (4, 32) and bool(b.loss_mask.all())
    for i in range(4):
        window = bytes(b.tokens[i].tolist()) + bytes([b.targets[i, -1].item()])
        assert window in train
        assert torch.equal(b.tokens[i, 1:], b.targets[i, :-1])
    bv = t.batch(0, "val")
    for i in range(4):
        assert bytes(bv.tokens[i].tolist()) in val
    assert torch.equal(t.batch(3).tokens, TextTask(corpus, seq_len=32, batch=4).batch(3).tokens)
    assert not torch.equal(t.batch(3).tokens, t.batch(4).tokens)
    assert t.decode(b.tokens[0]) == bytes(b.tokens[0].tolist()).decode()
    with pytest.raises(ValueError, match="unknown split"):
        t.batch(0, "test")


def test_no_val_split(corpus: Path):
    t = TextTask(corpus, seq_len=32, val_fraction=0.0)
    assert t.split_size("train") == len(CORPUS)
    with pytest.raises(DataError, match="no validation split"):
        t.batch(0, "val")


def test_folder(tmp_path: Path):
    d = tmp_path / "books"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("A" * 100)
    (d / "sub" / "b.TXT").write_text("B" * 100)
    (d / "notes.md").write_text("M" * 100)
    (d / ".hidden.txt").write_text("H" * 100)
    t = TextTask(d, seq_len=16, batch=2, val_fraction=0.0)
    assert t.num_bytes == 201  # a + "\n" + b, markdown and hidden files skipped
    spec = TypeAdapter(ir.Data).validate_python({"task": "text", "path": "books", "seq_len": 16})
    t2 = make_task(spec, base_dir=tmp_path)
    assert t2.num_bytes == 201


def test_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def err(path, **kw):
        with pytest.raises(DataError) as e:
            TextTask(path, **kw)
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    assert "data path not found" in err(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert "data file is empty" in err(tmp_path / "empty.txt")
    (tmp_path / "emptydir").mkdir()
    assert "data folder is empty" in err(tmp_path / "emptydir")
    (tmp_path / "md").mkdir()
    (tmp_path / "md" / "x.md").write_text("hello " * 100)
    assert "no .txt files" in err(tmp_path / "md")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "x.txt").write_text("")
    assert "are empty" in err(tmp_path / "blank")
    (tmp_path / "short.txt").write_text("x" * 64)
    msg = err(tmp_path / "short.txt", seq_len=64, val_fraction=0.0)
    assert "has 64 bytes; need at least seq_len+1 = 65" in msg
    (tmp_path / "smallval.txt").write_text("x" * 400)
    assert "validation split" in err(tmp_path / "smallval.txt", seq_len=64, val_fraction=0.1)
    assert "unknown tokenizer" in err(tmp_path / "smallval.txt", tokenizer="words", seq_len=8)

    locked = tmp_path / "locked.txt"
    locked.write_text("y" * 1000)
    real = Path.read_bytes

    def deny(self: Path) -> bytes:
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    msg = err(locked)
    assert msg == f"cannot read data file {locked}: Permission denied"


def test_bpe_missing_package(corpus: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import raises ImportError
    with pytest.raises(DataError, match=r"pip install 'nestdsl\[bpe\]'"):
        TextTask(corpus, tokenizer="bpe", vocab_size=300, seq_len=16)


@pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None, reason="tokenizers not installed")
def test_bpe(corpus: Path, tmp_path: Path):
    cache = tmp_path / "run"
    t = TextTask(corpus, tokenizer="bpe", vocab_size=300, seq_len=16, batch=2, cache_dir=cache)
    assert 256 < t.vocab_size <= 300
    assert t.bytes_per_token > 1.0
    files = list(cache.glob("tokenizer-bpe300-*.json"))
    assert len(files) == 1
    b = t.batch(0)
    assert int(b.tokens.max()) < t.vocab_size
    assert t.decode(t.encode("the quick brown fox")) == "the quick brown fox"
    t2 = TextTask(corpus, tokenizer="bpe", vocab_size=300, seq_len=16, batch=2, cache_dir=cache)
    assert torch.equal(t2.batch(5).tokens, t.batch(5).tokens)
    with pytest.raises(DataError, match=">= 257"):
        TextTask(corpus, tokenizer="bpe", vocab_size=100, seq_len=16)


@pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None, reason="tokenizers not installed")
def test_eval_of_other_text_uses_the_runs_bpe_tokenizer(tmp_path: Path, monkeypatch):
    """`eval --task text --path OTHER` on a BPE run tokenises OTHER with the run's tokenizer
    (a tokenizer trained on OTHER would give the model ids that mean other tokens), also when
    the training corpus is gone."""
    from tests.runtime.cli_helpers import TINY, cli

    monkeypatch.chdir(tmp_path)
    Path("train.txt").write_text(CORPUS)
    other = "".join(f"Verse {i}: a lazy dog sleeps while the brown fox runs.\n" for i in range(150))
    Path("other.txt").write_text(other)
    spec = TINY.replace("vocab: 256", "vocab: 300").replace(
        "data: {task: copy, length: 4, seq_len: 16, batch: 2}",
        "data: {task: text, path: train.txt, tokenizer: bpe, vocab_size: 300, seq_len: 16, batch: 2}")
    Path("bpe.yaml").write_text(spec)
    assert cli("train", "bpe.yaml", "--out", "run", "-q").exit_code == 0
    (saved,) = Path("run").glob("tokenizer-bpe300-*.json")
    import tokenizers

    run_tokenizer = tokenizers.Tokenizer.from_file(str(saved))
    own = TextTask("other.txt", tokenizer="bpe", vocab_size=300, seq_len=16)
    assert own.encode(other) != run_tokenizer.encode(other).ids  # the trap this test guards

    from nestdsl.pipeline import load_spec
    from nestdsl.runtime.evaluate import _other_text_in_run_vocabulary

    loaded = load_spec("bpe.yaml")
    Path("train.txt").unlink()
    task = _other_text_in_run_vocabulary(Path("other.txt"), loaded.data, loaded, Path("run"))
    assert task.encode(other) == run_tokenizer.encode(other).ids
    evaluated = cli("eval", "--ckpt", "run", "--task", "text", "--path", "other.txt")
    assert evaluated.exit_code == 0 and "bits_per_byte" in evaluated.output, evaluated.output
