"""Tokenizers for prepared data: ``bytes`` or a local ``tokenizer.json``.

``bytes`` needs nothing: one id per UTF-8 byte, 256 ids, no special tokens. A ``tokenizer.json``
(the Hugging Face ``tokenizers`` format, e.g. GPT-2's or one trained locally) is read with
``tokenizers.Tokenizer.from_file`` (the optional package, ``pip install 'nestdsl[data]'``).
Nothing is downloaded: a tokenizer is a file on disk, copied into the prepared folder so the
folder alone says what its ids mean.

Documents are encoded without the tokenizer's own special tokens (``add_special_tokens=False``):
a post-processor that adds BOS/EOS to every call would also add them to every piece of a long
document. The boundary between documents is one explicit separator, chosen by
:func:`separator`: the tokenizer's end-of-text token when it has one (``<|endoftext|>`` or
``</s>``, or the one named), else the ids of a newline, which is how the ``text`` task joins
files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nestdsl.data.errors import data_error, missing_package

__all__ = [
    "EOS_NAMES",
    "ByteTokenizer",
    "JsonTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "require_tokenizers",
    "separator",
]

#: End-of-text tokens looked for (in this order) when no --eos-token is given.
EOS_NAMES = ("<|endoftext|>", "</s>")


def require_tokenizers(what: str = "a tokenizer.json") -> Any:
    """The ``tokenizers`` module, or a ``DataError`` saying how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise missing_package("tokenizers", what) from None
    return tokenizers


def _text(doc: str | bytes) -> str:
    return doc.decode("utf-8", errors="replace") if isinstance(doc, bytes) else doc


class Tokenizer(ABC):
    """What prepare and the ``shards`` task need from a tokenizer."""

    #: ``bytes`` or ``tokenizer.json`` (the sidecar's ``tokenizer.kind``)
    kind: str
    vocab_size: int

    @abstractmethod
    def encode_batch(self, docs: Sequence[str | bytes]) -> list[np.ndarray]:
        """The ids of each piece of text (no special tokens added)."""

    def encode(self, text: str) -> list[int]:
        """The ids of one string."""
        return [int(i) for i in self.encode_batch([text])[0]]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of some ids."""

    def token_id(self, name: str) -> int | None:
        """The id of a special token by name (None: no such token)."""
        return None


class ByteTokenizer(Tokenizer):
    """One id per byte of UTF-8: bytes stay as they are (a ``.txt`` file's invalid UTF-8 too)."""

    kind = "bytes"
    vocab_size = 256

    def encode_batch(self, docs: Sequence[str | bytes]) -> list[np.ndarray]:
        return [np.frombuffer(d if isinstance(d, bytes) else d.encode("utf-8"), dtype=np.uint8)
                for d in docs]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class JsonTokenizer(Tokenizer):
    """A ``tokenizer.json`` read with the ``tokenizers`` package."""

    kind = "tokenizer.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if self.path.suffix.lower() != ".json":
            raise data_error(f"a tokenizer file must be a tokenizer.json (ending in .json), got {self.path}")
        if not self.path.is_file():
            raise data_error(f"tokenizer file not found: {self.path}")
        tk = require_tokenizers(f"tokenizer {self.path.name}")
        try:
            self.tok = tk.Tokenizer.from_file(str(self.path))
        except Exception as e:  # noqa: BLE001 - the library's parse errors have no common type
            raise data_error(f"cannot read tokenizer {self.path}: {str(e).splitlines()[0] if str(e) else e!r}") from None
        self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))

    def encode_batch(self, docs: Sequence[str | bytes]) -> list[np.ndarray]:
        encs = self.tok.encode_batch([_text(d) for d in docs], add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode([int(i) for i in ids], skip_special_tokens=False))

    def token_id(self, name: str) -> int | None:
        i = self.tok.token_to_id(name)
        return None if i is None else int(i)


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """``bytes``, or the path of a ``tokenizer.json``."""
    if str(spec) == "bytes":
        return ByteTokenizer()
    return JsonTokenizer(spec)


def separator(tok: Tokenizer, eos_token: str | None = None) -> dict[str, Any]:
    """The sidecar's ``separator``: what follows every document.

    ``eos_token`` names a special token (``none``: use a newline). Without it the tokenizer's
    ``<|endoftext|>`` or ``</s>`` is used when it has one, else the ids of ``"\\n"`` (one byte,
    10, for ``bytes``).
    """
    if eos_token is not None and eos_token.lower() != "none":
        if isinstance(tok, ByteTokenizer):
            raise data_error(f"the bytes tokenizer has no special tokens, so no {eos_token!r}; "
                             "documents are joined with a newline byte (drop --eos-token)")
        i = tok.token_id(eos_token)
        if i is None:
            raise data_error(f"--eos-token {eos_token!r} is not a token of the tokenizer "
                             f"(use a special token it has, or 'none' for a newline)")
        return {"kind": "eos", "token": eos_token, "ids": [i]}
    if eos_token is None:
        for name in EOS_NAMES:
            i = tok.token_id(name)
            if i is not None:
                return {"kind": "eos", "token": name, "ids": [i]}
    ids = tok.encode("\n")
    if not ids:
        raise data_error("the tokenizer encodes a newline to no ids, and has no end-of-text token; "
                         "name one with --eos-token")
    return {"kind": "newline", "token": "\n", "ids": ids}
