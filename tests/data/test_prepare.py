"""`nestdsl.data.prepare`: each source kind round-trips (the shard tokens are the tokenizer's
encodings joined by the separator), the dtype follows the vocabulary, shards split at
--shard-tokens, val is every N-th document, and a failed prepare leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shard_helpers import (
    DOCS,
    EOS,
    expected,
    read_split,
    train_tokenizer,
    txt_order,
    word_tokenizer,
    write_txt_folder,
)

from nestdsl.data import sources
from nestdsl.data.prepare import is_val, prepare
from nestdsl.data.shards import dtype_for, read_sidecar, verify
from nestdsl.runtime.tasks.base import DataError


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def _hf_tok(path: Path):
    import tokenizers

    return tokenizers.Tokenizer.from_file(str(path))


def _enc(tok):
    return lambda d: tok.encode(d if isinstance(d, str) else d.decode(), add_special_tokens=False).ids


def _assert_round_trip(out: Path, docs, encode, sep, val_every) -> None:
    for split in ("train", "val"):
        want = expected(docs, encode, sep, val_every, split)
        assert np.array_equal(read_split(out, split), want), split
    sc = read_sidecar(out)
    assert sc.splits["train"].documents + sc.splits["val"].documents == len(docs)
    assert sc.splits["val"].documents == len(docs) // val_every
    n_bytes = sum(len(d.encode()) for d in docs)
    assert sc.splits["train"].source_bytes + sc.splits["val"].source_bytes == n_bytes


def test_txt_folder_bytes_round_trip(tmp_path):
    src = write_txt_folder(tmp_path / "corpus", DOCS)
    sc = prepare(src, tmp_path / "out", val_fraction=0.25)
    docs = txt_order(src)
    assert len(docs) == len(DOCS)                     # hidden, empty and non-.txt files skipped
    assert sc.dtype == "uint16" and sc.vocab_size == 256
    assert sc.separator == {"kind": "newline", "token": "\n", "ids": [10]}
    _assert_round_trip(tmp_path / "out", docs, lambda d: d.encode(), [10], val_every=4)
    assert sc.source["kind"] == "txt" and sc.tokenizer == {"kind": "bytes", "vocab_size": 256}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "shards.json", "train_00000.bin", "val_00000.bin"]


def test_jsonl_with_a_tokenizer_json_and_its_eos(tmp_path, tok_path):
    src = tmp_path / "docs"
    src.mkdir()
    rows = [{"body": d, "id": i} for i, d in enumerate(DOCS)]
    rows.insert(3, {"body": None})                    # null and empty rows are skipped
    rows.insert(5, {"body": ""})
    (src / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:7]) + "\n")
    (src / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[7:]))
    sc = prepare(src, tmp_path / "out", tokenizer=str(tok_path), text_column="body", val_fraction=0.25)
    tok = _hf_tok(tok_path)
    eos = tok.token_to_id(EOS)
    assert sc.separator == {"kind": "eos", "token": EOS, "ids": [eos]}
    assert sc.vocab_size == tok.get_vocab_size() and sc.dtype == "uint16"
    _assert_round_trip(tmp_path / "out", DOCS, _enc(tok), [eos], val_every=4)
    # the folder carries its tokenizer, byte for byte
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == tok_path.read_bytes()
    verify(tmp_path / "out", hashes=True)


def test_parquet_in_record_batches(tmp_path, tok_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(sources, "ROWS", 2)           # several batches per row group
    table = pa.table({"n": list(range(len(DOCS))), "text": DOCS})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=5)
    sc = prepare(tmp_path / "docs.parquet", tmp_path / "out", tokenizer=str(tok_path),
                 val_fraction=1 / 3, eos_token="none")
    tok = _hf_tok(tok_path)
    nl = tok.encode("\n", add_special_tokens=False).ids
    assert sc.separator["kind"] == "newline" and sc.separator["ids"] == nl
    _assert_round_trip(tmp_path / "out", DOCS, _enc(tok), nl, val_every=3)
    with pytest.raises(DataError, match="no column 'body'.*--text-column"):
        prepare(tmp_path / "docs.parquet", tmp_path / "out2", text_column="body")


def test_hf_datasets_folder_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": DOCS[:3], "k": [0, 1, 2]}),
        "validation": datasets.Dataset.from_dict({"text": DOCS, "k": list(range(len(DOCS)))}),
    })
    dd.save_to_disk(str(tmp_path / "hf"))
    sc = prepare(tmp_path / "hf", tmp_path / "out", split="validation", val_fraction=0.5)
    assert sc.source["kind"] == "hf" and sc.source["split"] == "validation"
    _assert_round_trip(tmp_path / "out", DOCS, lambda d: d.encode(), [10], val_every=2)
    with pytest.raises(DataError, match="no split 'test'.*--split"):
        prepare(tmp_path / "hf", tmp_path / "out2", split="test")


def test_dtype_follows_the_vocabulary(tmp_path):
    assert dtype_for(256).name == dtype_for(65536).name == "uint16"
    assert dtype_for(65537).name == "uint32"
    path = word_tokenizer(tmp_path / "words.json", 70_000)
    docs = ["w1 w65535 w65536", "w69999 w0", "w70000"]   # w70000 is not a word: <unk>
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    sc = prepare(tmp_path / "d.jsonl", tmp_path / "out", tokenizer=str(path), val_fraction=0)
    assert sc.dtype == "uint32" and sc.vocab_size == 70_002
    assert sc.separator["token"] == "</s>"
    ids = read_split(tmp_path / "out", "train")
    assert ids.tolist() == [1, 65535, 65536, 70000, 69999, 0, 70000, 70001, 70000]
    assert (tmp_path / "out" / "train_00000.bin").stat().st_size == 4 * len(ids)
    assert "val" not in sc.splits


def test_shards_split_at_shard_tokens(tmp_path):
    src = write_txt_folder(tmp_path / "corpus", DOCS)
    sc = prepare(src, tmp_path / "out", shard_tokens=37, val_fraction=0)
    docs = txt_order(src)
    stream = expected(docs, lambda d: d.encode(), [10], None, "train")
    shards = sc.splits["train"].shards
    assert len(shards) == -(-len(stream) // 37) > 3
    assert [s.tokens for s in shards[:-1]] == [37] * (len(shards) - 1)
    assert [s.file for s in shards] == [f"train_{i:05d}.bin" for i in range(len(shards))]
    assert np.array_equal(read_split(tmp_path / "out", "train"), stream)
    assert sc.totals()["tokens"] == len(stream) == sum(s.tokens for s in shards)


def test_a_large_file_is_read_in_blocks_of_whole_characters(tmp_path, tok_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK", 7)          # blocks cut mid-line and mid-character
    text = "héllo wörld — ünïcode ≈ ñ\nsecond line without much 😀 at all\n" * 3 + "tail ß"
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    prepare(tmp_path / "big.txt", tmp_path / "b", val_fraction=0)
    assert bytes(read_split(tmp_path / "b", "train").tolist()) == text.encode() + b"\n"
    prepare(tmp_path / "big.txt", tmp_path / "t", tokenizer=str(tok_path), val_fraction=0)
    tok = _hf_tok(tok_path)
    ids = read_split(tmp_path / "t", "train").tolist()
    assert tok.decode(ids[:-1]) == text               # no character split between two pieces
    assert ids[-1] == tok.token_to_id(EOS)


def test_val_is_every_nth_document():
    assert [i for i in range(1000) if is_val(i, 0.01)] == list(range(99, 1000, 100))
    assert [i for i in range(12) if is_val(i, 0.25)] == [3, 7, 11]
    assert sum(is_val(i, 0.3) for i in range(1000)) == 300
    assert not any(is_val(i, 0.0) for i in range(100))


def test_a_non_empty_out_is_refused_then_replaced_with_force(tmp_path):
    src = write_txt_folder(tmp_path / "corpus", DOCS[:4])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty; pass --force"):
        prepare(src, out)
    assert (out / "keep.txt").exists()
    prepare(src, out, force=True, val_fraction=0)
    assert not (out / "keep.txt").exists() and (out / "shards.json").exists()
    with pytest.raises(DataError, match="inside --out"):     # --force would delete the source
        prepare(src, tmp_path, force=True)
    assert (src / "b" / "doc00.txt").exists()


def test_a_failed_prepare_leaves_no_folder(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.jsonl").write_text(json.dumps({"text": "fine"}) + "\n")
    (src / "b.jsonl").write_text(json.dumps({"text": "fine"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"b\.jsonl:2: not a JSON object"):
        prepare(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]   # no out, no partial folder


def test_source_errors_are_one_line(tmp_path, tok_path):
    with pytest.raises(DataError, match="data path not found"):
        prepare(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("x")
    (tmp_path / "mixed" / "b.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="--format txt|jsonl"):
        prepare(tmp_path / "mixed", tmp_path / "out")
    with pytest.raises(DataError, match=r"b\.jsonl:1: no field 'text'"):
        prepare(tmp_path / "mixed", tmp_path / "out", format="jsonl")
    with pytest.raises(DataError, match="tokenizer file not found"):
        prepare(tmp_path / "mixed", tmp_path / "out", format="txt", tokenizer=str(tmp_path / "t.json"))
    with pytest.raises(DataError, match="'<eos>' is not a token"):
        prepare(tmp_path / "mixed", tmp_path / "out", format="txt", tokenizer=str(tok_path),
                eos_token="<eos>")
    with pytest.raises(DataError, match="bytes tokenizer has no special tokens"):
        prepare(tmp_path / "mixed", tmp_path / "out", format="txt", eos_token="</s>")
    assert not (tmp_path / "out").exists()


def test_a_missing_optional_package_names_the_extra(tmp_path, monkeypatch):
    import sys

    (tmp_path / "d.parquet").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"'pyarrow' package: pip install 'nestdsl\[data\]'"):
        prepare(tmp_path / "d.parquet", tmp_path / "out")
