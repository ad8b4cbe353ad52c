"""Language modelling on a local text file or folder of ``.txt`` files.

Tokenisers:

* ``bytes`` (default): every byte is a token, ``vocab_size = 256``.
* ``bpe``: a byte-level BPE tokenizer trained locally on the corpus with the optional
  ``tokenizers`` package (``pip install 'nestdsl[bpe]'``). With ``cache_dir`` the trained
  tokenizer is saved there as ``tokenizer-bpe<V>-<corpus sha>.json`` and reused.
* ``PATH.json``: a local ``tokenizer.json`` (e.g. GPT-2's), read with
  ``tokenizers.Tokenizer.from_file``; its vocabulary is the file's. Text is encoded without the
  tokenizer's own special tokens (a post-processor would add them to every chunk).

A folder is read recursively: every ``*.txt`` file (case-insensitive, hidden files skipped) in
sorted path order, joined with a newline. The token stream is split once: the first
``1 - val_fraction`` of it is ``train``, the rest ``val``. A batch is ``batch`` random windows of
``seq_len + 1`` tokens whose starts come from a generator seeded from ``(seed, step, split)``,
and every position is scored. Problems with the data raise :class:`DataError` with a one-line
message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nestdsl.runtime.tasks.base import Batch, DataError, Task, make_rng, split_sequences

__all__ = ["SPLITS", "TextTask", "load_corpus", "make"]

SPLITS = ("train", "val")
DEFAULT_BPE_VOCAB = 1024


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None


def load_corpus(path: str | os.PathLike[str]) -> bytes:
    """Read a text file, or every ``.txt`` file under a folder, as one byte string.

    Raises :class:`DataError` for a missing path, an empty file or folder, an unreadable file,
    or a folder without ``.txt`` files.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path not found: {p}")
    if p.is_dir():
        try:
            entries = [f for f in sorted(p.rglob("*")) if not f.name.startswith(".")]
        except OSError as e:
            raise DataError(f"cannot read data folder {p}: {e.strerror or e}") from None
        if not entries:
            raise DataError(f"data folder is empty: {p}")
        files = [f for f in entries if f.suffix.lower() == ".txt" and f.is_file()]
        if not files:
            raise DataError(f"no .txt files in data folder {p}")
        parts = [b for b in (_read(f) for f in files) if b]
        if not parts:
            raise DataError(f"all .txt files in data folder {p} are empty")
        return b"\n".join(parts)
    data = _read(p)
    if not data:
        raise DataError(f"data file is empty: {p}")
    return data


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            "tokenizer 'bpe' needs the optional 'tokenizers' package: pip install 'nestdsl[bpe]'"
        ) from None
    return tokenizers


def _json_tokenizer(path: Path) -> Any:
    """A local tokenizer.json (a missing or unreadable file is a DataError)."""
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}")
    try:
        import tokenizers
    except ImportError:
        raise DataError(f"tokenizer {path.name} needs the optional 'tokenizers' package: "
                        "pip install 'nestdsl[data]'") from None
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the library's parse errors have no common type
        first = str(e).splitlines()[0] if str(e) else repr(e)
        raise DataError(f"cannot read tokenizer {path}: {first}") from None


def _text_chunks(text: str, size: int = 1 << 20) -> Iterator[str]:
    """Cut text into pieces of about ``size`` characters at line ends (keeps every character)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            if nl > start:
                end = nl + 1
        yield text[start:end]
        start = end


def _encode(tok: Any, text: str, **kw: Any) -> np.ndarray:
    """The ids of ``text``, encoded in chunks of about 1 MiB cut at line ends (int32)."""
    out: list[int] = []
    for enc in tok.encode_batch(list(_text_chunks(text)), **kw):
        out.extend(enc.ids)
    return np.asarray(out, dtype=np.int32)


def _bpe_tokenizer(text: str, vocab_size: int, corpus_sha: str, cache_dir: Path | None) -> Any:
    tk = _require_tokenizers()
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"tokenizer-bpe{vocab_size}-{corpus_sha[:12]}.json"
        if cache.is_file():
            try:
                return tk.Tokenizer.from_file(str(cache))
            except Exception:  # noqa: BLE001 - a corrupt cache is retrained
                pass
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(_text_chunks(text), trainer)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
            tok.save(str(tmp))
            os.replace(tmp, cache)
        except OSError as e:
            raise DataError(f"cannot write tokenizer cache {cache}: {e.strerror or e}") from None
    return tok


def saved_tokenizer(folder: Path, vocab_size: int | None) -> Any:
    """The BPE tokenizer a run saved in its folder (`tokenizer-bpe<V>-<sha>.json`), or None when
    there is not exactly one."""
    v = int(vocab_size) if vocab_size is not None else DEFAULT_BPE_VOCAB
    found = sorted(Path(folder).glob(f"tokenizer-bpe{v}-*.json"))
    if len(found) != 1:
        return None
    try:
        return _require_tokenizers().Tokenizer.from_file(str(found[0]))
    except Exception:  # noqa: BLE001 - a damaged file: the caller retrains from the corpus
        return None


class TextTask(Task):
    """Next-token prediction on random windows of a local text corpus."""

    name = "text"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        seq_len: int = 128,
        batch: int = 8,
        seed: int = 0,
        val_fraction: float = 0.1,
        tokenizer: str = "bytes",
        vocab_size: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        trained_tokenizer: Any = None,
    ) -> None:
        """`trained_tokenizer`: a BPE tokenizer to use instead of training one on this text (a
        run's own, to evaluate other text in the model's vocabulary)."""
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.path = Path(path).expanduser()
        self.seq_len = int(seq_len)
        self.batch_size = int(batch)
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.tokenizer_kind = tokenizer
        self.tokenizer: Any = None
        raw = load_corpus(self.path)
        self.num_bytes = len(raw)
        if tokenizer == "bytes":
            self.vocab_size = 256
            ids = np.frombuffer(raw, dtype=np.uint8)
            unit = "bytes"
        elif tokenizer.lower().endswith(".json"):
            if vocab_size is not None:
                raise DataError(f"data.vocab_size is for tokenizer: bpe; the tokenizer file "
                                f"{tokenizer} has its own vocabulary (remove data.vocab_size)")
            self.tokenizer = trained_tokenizer or _json_tokenizer(Path(tokenizer).expanduser())
            self.vocab_size = int(self.tokenizer.get_vocab_size(with_added_tokens=True))
            text = raw.decode("utf-8", errors="replace")
            ids = _encode(self.tokenizer, text, add_special_tokens=False)
            unit = "tokens"
        elif tokenizer == "bpe":
            v = int(vocab_size) if vocab_size is not None else DEFAULT_BPE_VOCAB
            if v < 257:
                raise DataError(f"bpe vocab_size must be >= 257 (256 byte symbols + merges), got {v}")
            text = raw.decode("utf-8", errors="replace")
            sha = hashlib.sha256(raw).hexdigest()
            self.tokenizer = trained_tokenizer or _bpe_tokenizer(
                text, v, sha, Path(cache_dir) if cache_dir else None)
            self.vocab_size = int(self.tokenizer.get_vocab_size())
            ids = _encode(self.tokenizer, text)
            unit = "tokens"
        else:
            raise DataError(f"unknown tokenizer {tokenizer!r} (expected 'bytes', 'bpe' or a "
                            f"tokenizer.json file)")
        need = self.seq_len + 1
        n = int(ids.shape[0])
        if n < need:
            raise DataError(
                f"data at {self.path} has {n} {unit}; need at least seq_len+1 = {need}"
            )
        n_val = int(round(n * self.val_fraction))
        self._splits = {"train": ids[: n - n_val], "val": ids[n - n_val :]}
        if len(self._splits["train"]) < need:
            raise DataError(
                f"train split of {self.path} has {len(self._splits['train'])} {unit}; need at "
                f"least seq_len+1 = {need} (lower data.val_fraction or use more text)"
            )
        if n_val and n_val < need:
            raise DataError(
                f"validation split of {self.path} has {n_val} {unit}; need at least "
                f"seq_len+1 = {need} (use more text, or set data.val_fraction to 0)"
            )
        self.num_tokens = n
        #: bytes per token over the corpus (1.0 for bytes); converts nats/token to bits/byte.
        self.bytes_per_token = self.num_bytes / n

    def split_size(self, split: str = "train") -> int:
        """Number of tokens in a split."""
        return int(self._ids(split).shape[0])

    def _ids(self, split: str) -> np.ndarray:
        if split not in self._splits:
            raise ValueError(f"text: unknown split {split!r} (expected one of {SPLITS})")
        ids = self._splits[split]
        if ids.shape[0] == 0:
            raise DataError(f"no validation split for {self.path} (data.val_fraction is 0)")
        return ids

    def batch(self, step: int, split: str = "train") -> Batch:
        """``batch`` random windows of the split, chosen by a generator seeded from (seed, step, split)."""
        ids = self._ids(split)
        rng = make_rng(self.seed, step, split, "text")
        L = self.seq_len + 1
        starts = rng.integers(0, ids.shape[0] - L + 1, size=self.batch_size)
        seqs = ids[starts[:, None] + np.arange(L)[None, :]]
        return split_sequences(seqs.astype(np.int64))

    def encode(self, text: str) -> list[int]:
        """Token ids of a string."""
        if self.tokenizer is None:
            return list(text.encode("utf-8"))
        if self.tokenizer_kind != "bpe":      # a tokenizer.json: no special tokens, as the corpus
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids: Any) -> str:
        """A string from token ids (1-D tensor, array or list)."""
        seq = [int(i) for i in ids]
        if self.tokenizer is None:
            return bytes(seq).decode("utf-8", errors="replace")
        return str(self.tokenizer.decode(seq))


def make(
    spec: Any,
    *,
    seq_len: int | None = None,
    batch: int | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TextTask:
    """Build from an IR ``TextData`` node; a relative ``path`` is resolved against ``base_dir``."""
    path = Path(spec.path).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    tokenizer = spec.tokenizer
    if tokenizer.lower().endswith(".json"):
        tok = Path(tokenizer).expanduser()
        if base_dir is not None and not tok.is_absolute() and not tok.exists() \
                and (Path(base_dir) / tok).exists():
            tokenizer = str(Path(base_dir) / tok)
    return TextTask(
        path,
        seq_len=seq_len if seq_len is not None else spec.seq_len,
        batch=batch if batch is not None else spec.batch,
        seed=spec.seed,
        val_fraction=spec.val_fraction,
        tokenizer=tokenizer,
        vocab_size=spec.vocab_size,
        cache_dir=cache_dir,
    )
