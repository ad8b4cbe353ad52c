"""What the token-shard tests share: a small corpus, a tokenizer.json trained on the spot, and
the expected token stream of a split (built here independently of nestdsl.data.prepare)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TINY_SPEC = (ROOT / "examples" / "new_spec" / "tiny-delta.yaml").read_text()

#: Twelve documents of different lengths, some non-ASCII.
DOCS = [
    f"Document {i}: " + " ".join(["the quick brown fox", "jumps over", "the lazy dog", "héllo wörld",
                                  "naïve café", "≈ 3.14"][: 1 + i % 6]) + f" — end {i}.\n" * (1 + i % 3)
    for i in range(12)
]
EOS = "<|endoftext|>"


def train_tokenizer(path: Path, *, special: Sequence[str] = (EOS,), vocab_size: int = 300) -> Path:
    """A byte-level BPE trained on DOCS, saved as a tokenizer.json (a second or less)."""
    import tokenizers as tk

    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special),
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    tok.train_from_iterator(DOCS, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def word_tokenizer(path: Path, n_words: int) -> Path:
    """A word-level tokenizer.json with ``n_words`` words ``w0 … w{n-1}`` (ids = their number)
    and ``</s>``, ``<unk>`` after them: a vocabulary larger than uint16 without training anything."""
    import tokenizers as tk

    vocab = {f"w{i}": i for i in range(n_words)}
    vocab["</s>"] = n_words
    vocab["<unk>"] = n_words + 1
    tok = tk.Tokenizer(tk.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tk.pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["</s>"])
    tok.save(str(path))
    return path


def read_split(folder: Path, split: str) -> np.ndarray:
    """Every shard of ``split`` concatenated, read with plain numpy (not nestdsl's reader)."""
    import json

    sc = json.loads((folder / "shards.json").read_text())
    dtype = np.dtype(sc["dtype"]).newbyteorder("<")
    files = [folder / s["file"] for s in sc["splits"].get(split, {"shards": []})["shards"]]
    if not files:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.fromfile(f, dtype=dtype) for f in files]).astype(np.int64)


def expected(docs: Sequence[str | bytes], encode: Any, sep: Sequence[int], val_every: int | None,
             split: str) -> np.ndarray:
    """enc(d) + sep over the documents of ``split``; val is every ``val_every``-th document
    (index ``val_every - 1``, ``2 * val_every - 1``, …), the rule of ``--val-fraction 1/N``."""
    out: list[int] = []
    for i, d in enumerate(docs):
        is_val = val_every is not None and (i + 1) % val_every == 0
        if is_val == (split == "val"):
            out.extend(int(x) for x in encode(d))
            out.extend(sep)
    return np.asarray(out, dtype=np.int64)


def write_txt_folder(folder: Path, docs: Sequence[str]) -> Path:
    """One file per document (sorted names), plus what the walk must skip."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        sub = folder / ("a" if i % 2 else "b")       # nested: the walk is recursive
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i:02d}.txt").write_text(d, encoding="utf-8")
    (folder / ".hidden.txt").write_text("never read")
    (folder / "notes.md").write_text("never read")
    (folder / "empty.txt").write_text("")
    return folder


def txt_order(folder: Path) -> list[str]:
    """The documents of a folder in the walk's order (sorted paths)."""
    return [f.read_text(encoding="utf-8") for f in sorted(folder.rglob("*.txt"))
            if not f.name.startswith(".") and f.stat().st_size]


def spec_text(data: str, steps: int = 6) -> str:
    """The tiny delta-rule spec with another data section and step count."""
    return (TINY_SPEC.replace("data: {task: copy, length: 4, seq_len: 16, batch: 2}", f"data: {data}")
            .replace("train: {steps: 4,", f"train: {{steps: {steps},"))
