"""Single needle in a haystack, in the style of RULER S-NIAH-1/2/3, at the byte level.

Sequences are ASCII text, tokenised as bytes (``vocab_size = 256``, the same as the ``text``
task), so a model trained on bytes can be evaluated on them directly. One sequence ``S`` of
``seq_len + 1`` bytes is::

    <haystack part 1><needle><haystack part 2><query><answer>

and ends exactly with the answer, which is the only scored part (``loss_mask`` is true on the
``len(answer)`` last target positions). The needle is inserted at a sentence boundary of the
haystack at a relative *depth* (uniform at random, or fixed with ``depth=``).

Variants (RULER names in brackets):

1. [S-NIAH-1] a 7-digit pass key in repeated noise
   ("The grass is green. The sky is blue. ..."); needle ``"The pass key is 1234567. "``,
   query ``"\\nWhat is the pass key? "``.
2. [S-NIAH-2] a 7-digit number for a key word in a haystack of sentences of synthetic words;
   needle ``"The magic number for <word> is 1234567. "``,
   query ``"\\nWhat is the magic number for <word>? "``.
3. [S-NIAH-3] a UUID-like value (8-4-4 lowercase hex groups, 18 characters) for a key word in
   the synthetic word haystack; needle ``"The magic uuid for <word> is 3f2a9c1e-7b4d-a0c2. "``.

Any ``seq_len >= min_seq_len(variant)`` works (64, 96, 128 for variants 1, 2, 3), so an
evaluation can sweep lengths, e.g. 256..2048, with ``make(spec, seq_len=n)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from nestdsl.runtime.tasks.base import Batch, DataError, Task, make_rng, split_sequences

__all__ = ["NIAHTask", "make", "min_seq_len"]

_NOISE = [
    "The grass is green. ",
    "The sky is blue. ",
    "The sun is yellow. ",
    "Here we go. ",
    "There and back again. ",
]
_HAY_MARGIN = 8  # at least this many haystack bytes at the minimum length
_MAX_WORD = 8


@lru_cache(maxsize=1)
def _lexicon() -> tuple[str, ...]:
    """A fixed list of 1024 distinct pronounceable synthetic words (4..8 letters)."""
    rng = np.random.Generator(np.random.PCG64(20250101))
    cons, vows = "bcdfghklmnprstvz", "aeiou"
    words: set[str] = set()
    out: list[str] = []
    while len(out) < 1024:
        n_syl = int(rng.integers(2, 5))
        w = "".join(cons[rng.integers(len(cons))] + vows[rng.integers(len(vows))] for _ in range(n_syl))
        if w not in words:
            words.add(w)
            out.append(w)
    return tuple(out)


def _templates(variant: int, key: str, value: str) -> tuple[str, str]:
    if variant == 1:
        return f"The pass key is {value}. ", "\nWhat is the pass key? "
    if variant == 2:
        return f"The magic number for {key} is {value}. ", f"\nWhat is the magic number for {key}? "
    return f"The magic uuid for {key} is {value}. ", f"\nWhat is the magic uuid for {key}? "


def _fixed_len(variant: int) -> int:
    key = "x" * _MAX_WORD
    value = "1234567" if variant in (1, 2) else "0" * 18
    needle, query = _templates(variant, key, value)
    return len(needle) + len(query) + len(value)


def min_seq_len(variant: int) -> int:
    """Smallest supported ``seq_len`` for a variant (needle + query + answer + some haystack)."""
    if variant not in (1, 2, 3):
        raise DataError(f"niah: variant must be 1, 2 or 3, got {variant}")
    n = _fixed_len(variant) + _HAY_MARGIN - 1
    return max(64, -(-n // 16) * 16)


class NIAHTask(Task):
    """Byte-level single-needle retrieval (see the module docstring)."""

    name = "niah"

    def __init__(
        self,
        *,
        seq_len: int = 128,
        batch: int = 8,
        seed: int = 0,
        variant: int = 1,
        depth: float | None = None,
    ) -> None:
        self.variant = int(variant)
        lo = min_seq_len(self.variant)
        if seq_len < lo:
            raise DataError(f"niah: variant {variant} needs seq_len >= {lo}, got {seq_len}")
        if depth is not None and not 0.0 <= depth <= 1.0:
            raise DataError(f"niah: depth must be in [0, 1], got {depth}")
        self.vocab_size = 256
        self.seq_len = int(seq_len)
        self.batch_size = int(batch)
        self.seed = int(seed)
        self.depth = depth
        self.answer_len = 7 if self.variant in (1, 2) else 18

    # -- pieces ------------------------------------------------------------------------------

    def _value(self, rng: np.random.Generator) -> str:
        if self.variant in (1, 2):
            return str(int(rng.integers(1_000_000, 10_000_000)))
        h = "".join("0123456789abcdef"[i] for i in rng.integers(0, 16, size=16))
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}"

    def _haystack(self, rng: np.random.Generator, n: int) -> tuple[str, list[int]]:
        """Exactly ``n`` characters of haystack and its sentence-start offsets (``<= n``)."""
        parts: list[str] = []
        starts: list[int] = []
        total = 0
        if self.variant == 1:
            i = 0
            while total < n:
                starts.append(total)
                s = _NOISE[i % len(_NOISE)]
                parts.append(s)
                total += len(s)
                i += 1
        else:
            lex = _lexicon()
            while total < n:
                starts.append(total)
                words = [lex[j] for j in rng.integers(0, len(lex), size=int(rng.integers(4, 11)))]
                s = " ".join(words).capitalize() + ". "
                parts.append(s)
                total += len(s)
        starts.append(n)
        return "".join(parts)[:n], [s for s in starts if s <= n]

    def sample_text(self, rng: np.random.Generator) -> tuple[str, str]:
        """One full sequence text (``seq_len + 1`` characters) and its answer suffix."""
        key = _lexicon()[int(rng.integers(0, len(_lexicon())))]
        value = self._value(rng)
        needle, query = _templates(self.variant, key, value)
        n_hay = self.seq_len + 1 - len(needle) - len(query) - len(value)
        hay, starts = self._haystack(rng, n_hay)
        depth = float(rng.random()) if self.depth is None else self.depth
        target = depth * n_hay
        cut = min(starts, key=lambda s: (abs(s - target), s))
        text = hay[:cut] + needle + hay[cut:] + query + value
        assert len(text) == self.seq_len + 1
        return text, value

    # -- public ------------------------------------------------------------------------------

    def batch(self, step: int, split: str = "train") -> Batch:
        """Deterministic batch for ``(seed, step, split)``."""
        rng = make_rng(self.seed, step, split, f"niah{self.variant}")
        L = self.seq_len + 1
        seqs = np.empty((self.batch_size, L), dtype=np.int64)
        for b in range(self.batch_size):
            text, _ = self.sample_text(rng)
            seqs[b] = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        answer = np.zeros((self.batch_size, L), dtype=np.bool_)
        answer[:, L - self.answer_len :] = True
        return split_sequences(seqs, answer)

    @staticmethod
    def decode(ids: Any) -> str:
        """Bytes ids (a 1-D tensor/array/list) back to text."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def make(
    spec: Any,
    *,
    seq_len: int | None = None,
    batch: int | None = None,
    depth: float | None = None,
) -> NIAHTask:
    """Build from an IR ``NIAHData`` node; ``seq_len``/``batch``/``depth`` override (for sweeps)."""
    return NIAHTask(
        seq_len=seq_len if seq_len is not None else spec.seq_len,
        batch=batch if batch is not None else spec.batch,
        seed=spec.seed,
        variant=spec.variant,
        depth=depth,
    )
