"""The token-shard format: flat token files plus a JSON sidecar, written once and memory-mapped.

A prepared folder holds

* ``train_00000.bin``, ``train_00001.bin``, … and ``val_00000.bin``, …: the token ids of a split,
  little-endian, no header, ``uint16`` when the vocabulary has at most 65536 ids, else ``uint32``.
  A file is nothing but the ids, so a reader maps it with ``numpy.memmap`` and touches only the
  pages a batch reads: memory does not grow with the corpus.
* ``shards.json`` (the sidecar): the format name and version, the dtype, the vocabulary size, the
  tokenizer (``bytes``, or a ``tokenizer.json`` copied into the folder with its sha256), the
  separator between documents, where the tokens came from, and per split its documents, source
  bytes, tokens and the list of shard files with their token count, size and sha256.
* ``tokenizer.json`` when the tokenizer is one.

The sidecar is what makes a folder a dataset: it is written last (and the folder renamed into
place after it, :mod:`nestdsl.data.prepare`), so a folder without one is incomplete. Opening a
folder checks every shard's size against the sidecar (a ``stat``, cheap); :func:`verify` with
``hashes=True`` also recomputes the sha256 of every file (reads everything, for ``nestdsl data
info --verify``).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nestdsl.data.errors import data_error

__all__ = [
    "FORMAT",
    "SIDECAR",
    "SPLITS",
    "TOKENIZER_FILE",
    "VERSION",
    "ShardInfo",
    "ShardSet",
    "ShardWriter",
    "Sidecar",
    "SplitInfo",
    "dtype_for",
    "file_sha256",
    "read_sidecar",
    "shard_name",
    "verify",
    "write_sidecar",
]

FORMAT = "nestdsl-token-shards"
VERSION = 1
SIDECAR = "shards.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")
#: How prepare assigns documents to val (nestdsl/data/prepare.py), recorded in every sidecar.
VAL_RULE = "document i (0-based, non-empty documents in source order) is val iff floor((i+1)*f) > floor(i*f)"
HINT = "prepare the folder again with `nestdsl data prepare`"


def dtype_for(vocab_size: int) -> np.dtype[Any]:
    """The narrowest id type that holds ``vocab_size`` ids: uint16 up to 65536, else uint32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise ValueError(f"vocab_size {vocab_size} does not fit uint32 token ids")


def shard_name(split: str, index: int) -> str:
    """``train_00000.bin``: split and index, zero-padded so the names sort in order."""
    return f"{split}_{index:05d}.bin"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks (never whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The sidecar


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: its name (in the folder), token count, size in bytes and sha256."""

    file: str
    tokens: int
    size: int
    sha256: str


@dataclass
class SplitInfo:
    """One split: its documents, the UTF-8 bytes of their text (None when unknown), its tokens
    (separators included) and its shards in order (their concatenation is the split's stream)."""

    documents: int = 0
    source_bytes: int | None = 0
    tokens: int = 0
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass
class Sidecar:
    """The content of ``shards.json`` (see the module docstring)."""

    dtype: str
    vocab_size: int
    tokenizer: dict[str, Any]
    separator: dict[str, Any]
    source: dict[str, Any]
    splits: dict[str, SplitInfo]
    val_fraction: float = 0.0
    shard_tokens: int = 0
    created_by: str = ""

    @property
    def itemsize(self) -> int:
        return int(np.dtype(self.dtype).itemsize)

    def totals(self) -> dict[str, Any]:
        """Tokens, documents, source bytes and shards over both splits."""
        sb = [s.source_bytes for s in self.splits.values()]
        return {
            "tokens": sum(s.tokens for s in self.splits.values()),
            "documents": sum(s.documents for s in self.splits.values()),
            "source_bytes": None if any(b is None for b in sb) else sum(b for b in sb if b is not None),
            "shards": sum(len(s.shards) for s in self.splits.values()),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "dtype": self.dtype,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer,
            "separator": self.separator,
            "source": self.source,
            "val_fraction": self.val_fraction,
            "val_rule": VAL_RULE,
            "shard_tokens": self.shard_tokens,
            "created_by": self.created_by,
            "splits": {
                name: {
                    "documents": s.documents,
                    "source_bytes": s.source_bytes,
                    "tokens": s.tokens,
                    "shards": [vars(sh) for sh in s.shards],
                }
                for name, s in self.splits.items()
            },
            "totals": self.totals(),
        }


def write_sidecar(folder: Path, sidecar: Sidecar) -> Path:
    """Write ``folder/shards.json`` atomically (a temporary file, then a rename)."""
    path = Path(folder) / SIDECAR
    tmp = path.with_name(f".{SIDECAR}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(sidecar.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _want(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise data_error(f"{where}: missing '{key}' ({HINT})")
    v = d[key]
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise data_error(f"{where}: '{key}' has the wrong type ({HINT})")
    return v


def read_sidecar(folder: str | os.PathLike[str]) -> Sidecar:
    """Parse ``folder/shards.json``; a missing folder or sidecar, or one that is not this format,
    is a ``DataError`` naming the file."""
    folder = Path(folder).expanduser()
    path = folder / SIDECAR
    if not folder.exists():
        raise data_error(f"shards folder not found: {folder} (create it with `nestdsl data prepare`)")
    if not folder.is_dir():
        raise data_error(f"{folder} is not a folder of token shards (create one with `nestdsl data prepare`)")
    if not path.is_file():
        raise data_error(f"no {SIDECAR} in {folder}: not a prepared (or a complete) shards folder; "
                         f"create it with `nestdsl data prepare`")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise data_error(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise data_error(f"{path} is not valid JSON ({e}); {HINT}") from None
    where = str(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise data_error(f"{path} is not a {FORMAT} sidecar; {HINT}")
    version = _want(doc, "version", int, where)
    if version != VERSION:
        raise data_error(f"{path} is version {version} of the shard format; this nestdsl reads "
                         f"version {VERSION} ({HINT})")
    dtype = _want(doc, "dtype", str, where)
    if dtype not in DTYPES:
        raise data_error(f"{where}: dtype {dtype!r} is not one of {', '.join(DTYPES)} ({HINT})")
    vocab = _want(doc, "vocab_size", int, where)
    if vocab < 1 or vocab > np.iinfo(np.dtype(dtype)).max + 1:
        raise data_error(f"{where}: vocab_size {vocab} does not fit dtype {dtype} ({HINT})")
    splits: dict[str, SplitInfo] = {}
    raw_splits = _want(doc, "splits", dict, where)
    if "train" not in raw_splits:
        raise data_error(f"{where}: no 'train' split ({HINT})")
    for name, s in raw_splits.items():
        if name not in SPLITS or not isinstance(s, dict):
            raise data_error(f"{where}: unknown split {name!r} ({HINT})")
        w = f"{where} (split {name})"
        shards = []
        for sh in _want(s, "shards", list, w):
            if not isinstance(sh, dict):
                raise data_error(f"{w}: a shard entry is not a mapping ({HINT})")
            info = ShardInfo(file=_want(sh, "file", str, w), tokens=_want(sh, "tokens", int, w),
                             size=_want(sh, "size", int, w), sha256=_want(sh, "sha256", str, w))
            if Path(info.file).name != info.file or info.tokens < 0:
                raise data_error(f"{w}: bad shard entry {info.file!r} ({HINT})")
            shards.append(info)
        sb = s.get("source_bytes")
        split = SplitInfo(documents=_want(s, "documents", int, w),
                          source_bytes=sb if isinstance(sb, int) and not isinstance(sb, bool) else None,
                          tokens=_want(s, "tokens", int, w), shards=shards)
        if split.tokens != sum(x.tokens for x in shards):
            raise data_error(f"{w}: 'tokens' is not the sum of its shards' tokens ({HINT})")
        splits[name] = split
    source = doc.get("source")
    return Sidecar(
        dtype=dtype, vocab_size=vocab,
        tokenizer=_want(doc, "tokenizer", dict, where),
        separator=_want(doc, "separator", dict, where),
        source=source if isinstance(source, dict) else {},
        splits=splits,
        val_fraction=float(doc.get("val_fraction") or 0.0),
        shard_tokens=int(doc.get("shard_tokens") or 0),
        created_by=str(doc.get("created_by") or ""),
    )


def _shards(sidecar: Sidecar) -> Iterator[tuple[str, ShardInfo]]:
    for name, split in sidecar.splits.items():
        for sh in split.shards:
            yield name, sh


def verify(folder: str | os.PathLike[str], sidecar: Sidecar | None = None, *,
           hashes: bool = False) -> Sidecar:
    """Check every shard of ``folder`` (and its tokenizer file) against the sidecar: the file
    exists and its size is ``tokens * itemsize`` and the recorded size; with ``hashes`` also its
    sha256. The first problem is a ``DataError`` naming the file; returns the sidecar."""
    folder = Path(folder).expanduser()
    sc = sidecar if sidecar is not None else read_sidecar(folder)
    for _, sh in _shards(sc):
        path = folder / sh.file
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise data_error(f"shard {path} is missing ({HINT})") from None
        except OSError as e:
            raise data_error(f"cannot read shard {path}: {e.strerror or e}") from None
        if sh.size != sh.tokens * sc.itemsize:
            raise data_error(f"{folder / SIDECAR}: shard {sh.file} records {sh.tokens} tokens but "
                             f"{sh.size} bytes ({HINT})")
        if size != sh.size:
            what = "truncated" if size < sh.size else "longer than written"
            raise data_error(f"shard {path} is {size} bytes, the sidecar says {sh.size} ({what}; {HINT})")
        if hashes and file_sha256(path) != sh.sha256:
            raise data_error(f"shard {path} does not match its sha256 in {SIDECAR} (corrupted; {HINT})")
    if sc.tokenizer.get("kind") == "tokenizer.json":
        path = folder / str(sc.tokenizer.get("file", TOKENIZER_FILE))
        if not path.is_file():
            raise data_error(f"tokenizer file {path} is missing ({HINT})")
        if hashes and file_sha256(path) != sc.tokenizer.get("sha256"):
            raise data_error(f"tokenizer file {path} does not match its sha256 in {SIDECAR} ({HINT})")
    return sc


# ---------------------------------------------------------------------------------------------
# Writing


class ShardWriter:
    """Appends one split's token ids to ``<split>_NNNNN.bin`` files of at most ``shard_tokens``
    ids each, hashing as it writes; memory is the ids of one :meth:`write` call."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype[Any] | str, shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.folder = Path(folder)
        self.split = split
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.shard_tokens = int(shard_tokens)
        self.shards: list[ShardInfo] = []
        self._file: Any = None
        self._hash: Any = None
        self._count = 0

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards) + self._count

    def write(self, ids: np.ndarray) -> None:
        """Append ``ids`` (any integer array), starting a new shard whenever one is full."""
        arr = np.ascontiguousarray(ids).astype(self.dtype, copy=False).ravel()
        pos = 0
        while pos < arr.shape[0]:
            if self._file is None:
                self._open()
            take = min(arr.shape[0] - pos, self.shard_tokens - self._count)
            block = arr[pos:pos + take].tobytes()
            self._file.write(block)
            self._hash.update(block)
            self._count += take
            pos += take
            if self._count == self.shard_tokens:
                self._finish()

    def _open(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._file = open(self.folder / name, "wb")  # noqa: SIM115 - closed in _finish
        self._hash = hashlib.sha256()
        self._count = 0

    def _finish(self) -> None:
        f = self._file
        f.flush()
        os.fsync(f.fileno())
        f.close()
        name = Path(f.name).name
        self.shards.append(ShardInfo(file=name, tokens=self._count,
                                     size=self._count * self.dtype.itemsize,
                                     sha256=self._hash.hexdigest()))
        self._file = None
        self._count = 0

    def close(self) -> list[ShardInfo]:
        """Finish the open shard (if any) and return every shard written."""
        if self._file is not None:
            self._finish()
        return list(self.shards)

    def abort(self) -> None:
        """Close without recording (the folder is being thrown away)."""
        if self._file is not None:
            self._file.close()
            self._file = None


# ---------------------------------------------------------------------------------------------
# Reading


def _advise(mm: np.memmap[Any, Any], name: str) -> None:
    """``madvise(name)`` on a map; a no-op where the platform has no ``madvise`` (or numpy keeps
    its map elsewhere). ``MADV_RANDOM`` at open: no read-ahead around each window, so a batch
    brings a few pages per row into memory, not a large block of the file (measured in
    benchmarks/data_shards_rss.py); ``MADV_DONTNEED`` after a batch: `ShardSet.release`."""
    handle = getattr(mm, "_mmap", None)
    advice = getattr(mmap, name, None)
    if handle is not None and advice is not None and hasattr(handle, "madvise"):
        try:
            handle.madvise(advice)
        except OSError:
            pass


class ShardSet:
    """A prepared folder, read through lazily opened memory maps (one per shard, on first use).

    Opening reads the sidecar and checks the shard sizes (:func:`verify` without hashes); no
    shard is read until a window of it is asked for, and then only that window's pages.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser()
        self.sidecar = verify(self.folder)
        self.dtype = np.dtype(self.sidecar.dtype).newbyteorder("<")
        self._maps: dict[tuple[str, int], np.memmap[Any, Any]] = {}

    @property
    def vocab_size(self) -> int:
        return self.sidecar.vocab_size

    def split(self, name: str) -> SplitInfo:
        """The split's record; an empty ``SplitInfo`` for a split the folder does not have."""
        return self.sidecar.splits.get(name, SplitInfo(documents=0, source_bytes=0, tokens=0))

    def memmap(self, split: str, index: int) -> np.memmap[Any, Any]:
        """Shard ``index`` of ``split`` as a read-only memory map (opened once)."""
        key = (split, index)
        mm = self._maps.get(key)
        if mm is None:
            sh = self.split(split).shards[index]
            path = self.folder / sh.file
            try:
                mm = np.memmap(path, dtype=self.dtype, mode="r", shape=(sh.tokens,))
            except (OSError, ValueError) as e:
                raise data_error(f"cannot map shard {path}: {e} ({HINT})") from None
            _advise(mm, "MADV_RANDOM")
            self._maps[key] = mm
        return mm

    def release(self) -> None:
        """Unmap the pages the reads touched from this process (``MADV_DONTNEED``; they stay in
        the page cache). With the file cached, the kernel maps a whole large folio per fault,
        so without this a long run's resident memory grew towards the size of the hot shards
        (1.17 GB after 200 batches from a cached 1 GB set, 239 MB for a 10 MB one). Called
        after every batch."""
        for mm in self._maps.values():
            _advise(mm, "MADV_DONTNEED")

    def window(self, split: str, index: int, start: int, length: int) -> np.ndarray:
        """``length`` ids of shard ``index`` from ``start``, copied out of the map."""
        return np.asarray(self.memmap(split, index)[start:start + length])
