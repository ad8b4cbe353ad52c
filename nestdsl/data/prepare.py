"""``nestdsl data prepare``: documents → tokens → shard files, streamed, written atomically.

The pipeline reads a source (:mod:`nestdsl.data.sources`) piece by piece, encodes the pieces in
batches (about 8 MiB of text or 1024 pieces, :mod:`nestdsl.data.tokenizer`), and appends each
document's ids, then the separator, to its split's :class:`~nestdsl.data.shards.ShardWriter`.
Memory is one batch of text and its ids, whatever the corpus size.

Validation split: document ``i`` (numbered from 0 over the non-empty documents, in source
order) is ``val`` when ``floor((i + 1) f) > floor(i f)`` for ``f = val_fraction``, i.e. every
``1/f``-th document (``f = 0.01``: documents 99, 199, 299, …). Every-N-th rather than a hash:
the count is exact (``floor(n f)`` of ``n``), val is spread evenly over a corpus that is
ordered (by time, by topic), and a document's split depends on its number only, so appending
documents never moves earlier ones. A corpus of fewer than ``1/f`` documents has no val split
(training works; evaluation asks for one).

Each split's token stream is ``enc(d0) SEP enc(d1) SEP …`` over its documents; shards cut that
stream every ``shard_tokens`` ids (a document may straddle two shards).

Atomicity: everything is written into a hidden sibling folder ``.<out>.partial-<pid>``, the
sidecar last, and the folder is renamed to ``out`` only when complete; a failure removes it,
and a killed prepare leaves only that hidden folder, never one that looks prepared. A non-empty
``out`` is refused unless ``force``, and then replaced only after the new one is complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nestdsl.data.errors import data_error
from nestdsl.data.shards import (
    SPLITS,
    TOKENIZER_FILE,
    ShardWriter,
    Sidecar,
    SplitInfo,
    dtype_for,
    file_sha256,
    write_sidecar,
)
from nestdsl.data.sources import Piece, Source, open_source
from nestdsl.data.tokenizer import JsonTokenizer, Tokenizer, load_tokenizer, separator

__all__ = ["DEFAULT_SHARD_TOKENS", "DEFAULT_VAL_FRACTION", "Progress", "is_val", "prepare"]

DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_VAL_FRACTION = 0.01
#: Text per encode call (characters or bytes) and pieces per call.
BATCH_CHARS = 8 << 20
BATCH_PIECES = 1024


class Progress(Protocol):
    """What prepare reports to: the total once, then how far it got."""

    def start(self, total: int, unit: str) -> None: ...

    def advance(self, n: int) -> None: ...


def as_fraction(x: float) -> Fraction:
    """The fraction with the smallest denominator (at most 10**12) nearest to ``x``: a float
    differs from the decimal or ratio it was written as by far less than any other such
    fraction does."""
    return Fraction(float(x)).limit_denominator(10**12)


def is_val(doc: int, val_fraction: float | Fraction) -> bool:
    """Whether document ``doc`` is in the val split (every ``1/f``-th: see the module docstring).

    Exact rational arithmetic on the simplest fraction the float stands for (``0.01`` is 1/100
    and ``1/3`` is 1/3, not their binary floats), so the rule is the same on every machine.
    """
    f = val_fraction if isinstance(val_fraction, Fraction) else as_fraction(val_fraction)
    if f <= 0:
        return False
    p, q = f.numerator, f.denominator
    return ((doc + 1) * p) // q > (doc * p) // q


def _batches(pieces: Iterator[Piece]) -> Iterator[list[Piece]]:
    batch: list[Piece] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= BATCH_CHARS or len(batch) >= BATCH_PIECES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _check_out(out: Path, src: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise data_error(f"--out {out} is a file; name a folder")
    if src.resolve() == out.resolve() or src.resolve().is_relative_to(out.resolve()):
        raise data_error(f"the source {src} is inside --out {out}; write the shards elsewhere")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise data_error(f"--out {out} is not empty; pass --force to replace it, or choose "
                         "another folder (nothing was written)")


def _install(tmp: Path, out: Path) -> None:
    """Rename the complete ``tmp`` to ``out``, replacing what ``out`` held (already allowed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tokenizer: str = "bytes",
    text_column: str = "text",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    split: str = "train",
    format: str = "auto",
    eos_token: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Sidecar:
    """Tokenise the documents of ``src`` into a shard folder at ``out`` and return its sidecar.

    ``tokenizer``: ``bytes`` or a ``tokenizer.json`` path; ``text_column``: the text field of
    jsonl/parquet/datasets rows; ``split``: the split of a ``DatasetDict`` folder; ``format``:
    the source kind (``auto`` guesses); ``eos_token``: the separator token (default: the
    tokenizer's end-of-text token, else a newline; ``none``: a newline).
    """
    from nestdsl import __version__

    if shard_tokens < 1:
        raise data_error(f"--shard-tokens must be >= 1, got {shard_tokens}")
    if not 0.0 <= val_fraction < 1.0:
        raise data_error(f"--val-fraction must be in [0, 1), got {val_fraction}")
    src_p, out_p = Path(src).expanduser(), Path(out).expanduser()
    source = open_source(src_p, format=format, text_column=text_column, split=split)
    tok = load_tokenizer(tokenizer)
    sep_rec = separator(tok, eos_token)
    _check_out(out_p, src_p, force)
    dtype = dtype_for(tok.vocab_size)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_p.with_name(f".{out_p.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    writers = {s: ShardWriter(tmp, s, dtype, shard_tokens) for s in SPLITS}
    try:
        tok_rec: dict[str, Any] = {"kind": tok.kind, "vocab_size": tok.vocab_size}
        if isinstance(tok, JsonTokenizer):
            shutil.copyfile(tok.path, tmp / TOKENIZER_FILE)
            tok_rec.update(file=TOKENIZER_FILE, sha256=file_sha256(tmp / TOKENIZER_FILE),
                           source=str(tok.path.resolve()))
        info = {s: SplitInfo() for s in SPLITS}
        _stream(source, tok, np.asarray(sep_rec["ids"], dtype=np.int64), as_fraction(val_fraction),
                writers, info, progress)
        for s in SPLITS:
            info[s].shards = writers[s].close()
        if info["train"].tokens == 0:
            raise data_error(f"no text in {src_p}: the train split is empty (every document "
                             "empty, or all of them in val)")
        splits = {s: info[s] for s in SPLITS if info[s].tokens or s == "train"}
        sidecar = Sidecar(
            dtype=dtype.name, vocab_size=tok.vocab_size, tokenizer=tok_rec, separator=sep_rec,
            source=source.describe(), splits=splits, val_fraction=float(val_fraction),
            shard_tokens=int(shard_tokens), created_by=f"nestdsl {__version__}",
        )
        write_sidecar(tmp, sidecar)
        _install(tmp, out_p)
    except BaseException:
        for w in writers.values():
            w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sidecar


def _stream(source: Source, tok: Tokenizer, sep: np.ndarray, f: Fraction,
            writers: dict[str, ShardWriter], info: dict[str, SplitInfo],
            progress: Progress | None) -> None:
    """Encode and write every document of ``source``: the body of :func:`prepare`."""
    if progress is not None:
        progress.start(source.total, source.unit)
    for batch in _batches(iter(source)):
        kept = [p for p in batch if p.doc >= 0]
        ids = tok.encode_batch([p.text for p in kept]) if kept else []
        parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for piece, piece_ids in zip(kept, ids, strict=True):
            s = "val" if is_val(piece.doc, f) else "train"
            parts[s].append(piece_ids)
            rec = info[s]
            rec.source_bytes = (rec.source_bytes or 0) + (
                len(piece.text) if isinstance(piece.text, bytes) else len(piece.text.encode("utf-8")))
            if piece.last:
                parts[s].append(sep)
                rec.documents += 1
        for s, arrays in parts.items():
            if arrays:
                block = np.concatenate(arrays)
                if block.size and (int(block.max()) >= tok.vocab_size or int(block.min()) < 0):
                    raise data_error(f"the tokenizer produced id {int(block.max())}, outside its "
                                     f"vocabulary of {tok.vocab_size}")
                writers[s].write(block)
                info[s].tokens += int(block.size)
        if progress is not None:
            progress.advance(sum(p.advance for p in batch))
