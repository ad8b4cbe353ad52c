"""Document sources for ``nestdsl data prepare``: streams of documents, never a whole corpus.

A source yields :class:`Piece` s: a document's text, or a part of it. Kinds:

* ``txt``: a ``.txt`` file, or a folder read like the ``text`` task reads one (every ``*.txt``
  under it, recursively, any case of the suffix, hidden files skipped, sorted path order); one
  document per file. A file is read in blocks of about 8 MiB cut after a newline, so a large
  file is several pieces of one document and memory stays bounded (a cut inside a line only
  when a block holds no newline, and then at a UTF-8 character boundary). Pieces are bytes: the
  ``bytes`` tokenizer keeps a file's bytes exactly.
* ``jsonl``: a ``.jsonl`` file or a folder of them (same walk); one JSON object per line, the
  document is its text field (``--text-column``, default ``text``). Blank lines and rows whose
  text is null or empty are skipped.
* ``parquet``: a ``.parquet`` file or a folder of them; the text column is read in record
  batches (``pyarrow.parquet.ParquetFile.iter_batches``), never as a whole table.
* ``hf``: a folder written by Hugging Face ``datasets``' ``save_to_disk`` (a ``Dataset`` or a
  ``DatasetDict``, whose ``--split`` is read), opened with ``datasets.load_from_disk`` (Arrow
  files, memory-mapped) and iterated in batches.

Documents are numbered in order from 0, counting only the non-empty ones; the number decides
the split (:func:`nestdsl.data.prepare.is_val`). Each source knows a ``total`` for a progress bar,
in ``unit`` bytes (``txt``, ``jsonl``: of the files) or documents (``parquet``, ``hf``: rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestdsl.data.errors import data_error, missing_package

__all__ = ["FORMATS", "Piece", "Source", "open_source"]

FORMATS = ("auto", "txt", "jsonl", "parquet", "hf")
#: Suffix of each file kind (folders are searched for it).
SUFFIX = {"txt": ".txt", "jsonl": ".jsonl", "parquet": ".parquet"}
BLOCK = 8 << 20
ROWS = 1024


@dataclass(frozen=True)
class Piece:
    """Text of document ``doc`` (``last``: its final piece); ``advance`` moves the progress bar."""

    doc: int
    text: str | bytes
    last: bool = True
    advance: int = 0


def _walk(folder: Path, suffix: str) -> list[Path]:
    try:
        return [f for f in sorted(folder.rglob("*"))
                if not f.name.startswith(".") and f.suffix.lower() == suffix and f.is_file()]
    except OSError as e:
        raise data_error(f"cannot read folder {folder}: {e.strerror or e}") from None


def _is_hf(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())


class Source:
    """A stream of documents: ``iter(source)`` yields :class:`Piece` s."""

    kind: str = "?"
    unit: str = "bytes"

    def __init__(self, path: Path, files: list[Path], text_column: str = "text") -> None:
        self.path = path
        self.files = files
        self.text_column = text_column
        self.total = sum(_size(f) for f in files)

    #: whether documents come from a column of records (jsonl, parquet, datasets)
    has_columns = True

    def describe(self) -> dict[str, Any]:
        """The sidecar's ``source`` record."""
        rec = {"kind": self.kind, "path": str(self.path.resolve()), "files": len(self.files)}
        return {**rec, "text_column": self.text_column} if self.has_columns else rec

    def __iter__(self) -> Iterator[Piece]:
        """The documents, in order, cut into pieces: each source kind below reads its own way
        (`open_source` builds only those)."""
        raise NotImplementedError(type(self).__name__)


def _size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:
        return 0


def _open(f: Path) -> Any:
    try:
        return open(f, "rb")  # noqa: SIM115 - closed by the caller's `with`
    except OSError as e:
        raise data_error(f"cannot read data file {f}: {e.strerror or e}") from None


def _char_boundary(buf: bytes) -> int:
    """The end of the last complete UTF-8 character of ``buf`` (``len(buf)`` when it is one, or
    when no character starts in the last four bytes: not UTF-8, cut anywhere)."""
    n = len(buf)
    for back in range(1, min(4, n) + 1):
        b = buf[n - back]
        if b & 0xC0 == 0x80:            # a continuation byte: keep looking for the lead
            continue
        need = 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4
        return n if back >= need else n - back
    return n


class TxtSource(Source):
    kind = "txt"
    has_columns = False

    def __iter__(self) -> Iterator[Piece]:
        doc = 0
        for f in self.files:
            if _size(f) == 0:
                continue
            with _open(f) as fh:
                pending = b""
                while True:
                    try:
                        block = fh.read(BLOCK)
                    except OSError as e:
                        raise data_error(f"cannot read data file {f}: {e.strerror or e}") from None
                    if not block:
                        break
                    buf = pending + block
                    cut = buf.rfind(b"\n") + 1 or _char_boundary(buf)
                    pending = buf[cut:]
                    if cut:
                        yield Piece(doc, buf[:cut], last=False, advance=len(buf[:cut]))
                yield Piece(doc, pending, last=True, advance=len(pending))
            doc += 1


class JsonlSource(Source):
    kind = "jsonl"

    def __iter__(self) -> Iterator[Piece]:
        doc = 0
        col = self.text_column
        for f in self.files:
            with _open(f) as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise data_error(f"{f}:{n}: not a JSON object (a .jsonl file holds one per line)") from None
                    if not isinstance(row, dict):
                        raise data_error(f"{f}:{n}: not a JSON object (a .jsonl file holds one per line)")
                    if col not in row:
                        keys = ", ".join(list(row)[:8]) or "none"
                        raise data_error(f"{f}:{n}: no field {col!r} (fields: {keys}); choose the text "
                                         f"field with --text-column")
                    text = row[col]
                    if text is None or text == "":
                        yield Piece(-1, "", advance=len(line))
                        continue
                    if not isinstance(text, str):
                        raise data_error(f"{f}:{n}: field {col!r} is a {type(text).__name__}, not text "
                                         f"(choose the text field with --text-column)")
                    yield Piece(doc, text, advance=len(line))
                    doc += 1


def _column_values(rows: Any, where: str, col: str) -> list[Any]:
    values = rows.to_pylist() if hasattr(rows, "to_pylist") else list(rows)
    for v in values:
        if v is not None and not isinstance(v, str):
            raise data_error(f"{where}: column {col!r} holds {type(v).__name__} values, not text "
                             f"(choose the text column with --text-column)")
    return values


class ParquetSource(Source):
    kind = "parquet"
    unit = "documents"

    def __init__(self, path: Path, files: list[Path], text_column: str = "text") -> None:
        super().__init__(path, files, text_column)
        self._pq = _require("pyarrow", "a parquet source").parquet
        total = 0
        for f in files:
            pf = self._file(f)
            if text_column not in pf.schema_arrow.names:
                cols = ", ".join(pf.schema_arrow.names[:12]) or "none"
                raise data_error(f"{f} has no column {text_column!r} (columns: {cols}); choose the "
                                 f"text column with --text-column")
            total += pf.metadata.num_rows
        self.total = total

    def _file(self, f: Path) -> Any:
        try:
            return self._pq.ParquetFile(str(f))
        except Exception as e:  # noqa: BLE001 - pyarrow's errors (ArrowInvalid, OSError)
            raise data_error(f"cannot read parquet file {f}: {e}") from None

    def __iter__(self) -> Iterator[Piece]:
        doc = 0
        col = self.text_column
        for f in self.files:
            pf = self._file(f)
            for batch in pf.iter_batches(batch_size=ROWS, columns=[col]):
                for text in _column_values(batch.column(0), str(f), col):
                    if not text:
                        yield Piece(-1, "", advance=1)
                        continue
                    yield Piece(doc, text, advance=1)
                    doc += 1


class HFSource(Source):
    kind = "hf"
    unit = "documents"

    def __init__(self, path: Path, text_column: str = "text", split: str = "train") -> None:
        super().__init__(path, [], text_column)
        datasets = _require("datasets", "a Hugging Face datasets folder")
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets raises FileNotFoundError, ValueError, ...
            raise data_error(f"cannot open the datasets folder {path}: {e}") from None
        self.split = None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise data_error(f"the datasets folder {path} has no split {split!r} (splits: "
                                 f"{', '.join(ds)}); choose one with --split")
            ds = ds[split]
            self.split = split
        if text_column not in ds.column_names:
            raise data_error(f"the datasets folder {path} has no column {text_column!r} (columns: "
                             f"{', '.join(ds.column_names[:12])}); choose the text column with --text-column")
        self.ds = ds.select_columns([text_column])
        self.total = int(ds.num_rows)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path.resolve()), "split": self.split,
                "text_column": self.text_column, "rows": self.total}

    def __iter__(self) -> Iterator[Piece]:
        doc = 0
        col = self.text_column
        for batch in self.ds.iter(batch_size=ROWS):
            for text in _column_values(batch[col], str(self.path), col):
                if not text:
                    yield Piece(-1, "", advance=1)
                    continue
                yield Piece(doc, text, advance=1)
                doc += 1


def _require(package: str, what: str) -> Any:
    try:
        if package == "pyarrow":
            import pyarrow
            import pyarrow.parquet  # noqa: F401 - the submodule is what is used

            return pyarrow
        if package == "datasets":
            import datasets

            return datasets
    except ImportError:
        raise missing_package(package, what) from None
    raise AssertionError(package)  # pragma: no cover


def _kind_of(path: Path) -> str:
    if path.is_dir():
        if _is_hf(path):
            return "hf"
        found = [k for k, suf in SUFFIX.items() if _walk(path, suf)]
        if not found:
            raise data_error(f"no .txt, .jsonl or .parquet files in {path} (and not a Hugging Face "
                             f"datasets folder saved with save_to_disk)")
        if len(found) > 1:
            raise data_error(f"{path} holds {' and '.join('.' + k for k in found)} files; choose "
                             f"which with --format {'|'.join(found)}")
        return found[0]
    for k, suf in SUFFIX.items():
        if path.suffix.lower() == suf:
            return k
    raise data_error(f"cannot tell the kind of {path} from its name; use --format txt|jsonl|parquet")


def open_source(path: str | os.PathLike[str], *, format: str = "auto", text_column: str = "text",
                split: str = "train") -> Source:
    """The source at ``path`` (``format``: one of :data:`FORMATS`; ``auto`` decides by the
    folder's content or the file's suffix)."""
    p = Path(path).expanduser()
    if format not in FORMATS:
        raise data_error(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    if not p.exists():
        raise data_error(f"data path not found: {p}")
    kind = _kind_of(p) if format == "auto" else format
    if kind == "hf":
        if not p.is_dir():
            raise data_error(f"{p} is not a folder (a datasets folder is what save_to_disk writes)")
        return HFSource(p, text_column, split)
    files = _walk(p, SUFFIX[kind]) if p.is_dir() else [p]
    if not files:
        raise data_error(f"no {SUFFIX[kind]} files in {p}")
    cls = {"txt": TxtSource, "jsonl": JsonlSource, "parquet": ParquetSource}[kind]
    return cls(p, files, text_column)
