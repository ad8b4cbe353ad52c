"""Language modelling on a token-shard folder (``nestdsl data prepare``, :mod:`nestdsl.data`).

A batch is ``batch`` random windows of ``seq_len + 1`` tokens of a split, every position scored.
Windows never cross a shard boundary: shard ``j`` of ``n_j`` tokens has ``w_j = n_j - L + 1``
windows (``L = seq_len + 1``; none if it is shorter), and a row draws one integer ``g`` uniform in
``[0, sum w_j)`` that names shard ``j`` (with probability ``w_j / sum w``) and the offset
``g - (w_0 + … + w_{j-1})`` in it: every window of the split is equally likely. The draws come
from ``make_rng(seed, step, split, "shards")``, so the batch is a pure function of the step,
which is what makes ``--resume`` exact (the data position is the step) without storing a stream.

The shards are memory maps opened on first use; a batch copies out only its rows. Under data
parallelism :meth:`ShardTask.rank_batch` draws the same global starts on every rank and reads
only this rank's rows (contiguous, as the default slicing of the global batch takes them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nestdsl.data.shards import ShardSet
from nestdsl.runtime.tasks.base import Batch, DataError, Task, make_rng, split_sequences

__all__ = ["ShardTask", "make"]

SPLITS = ("train", "val")


class ShardTask(Task):
    """Next-token prediction on random windows of prepared token shards."""

    name = "shards"

    def __init__(self, path: str | os.PathLike[str], *, seq_len: int = 128, batch: int = 8,
                 seed: int = 0) -> None:
        self.path = Path(path).expanduser()
        self.seq_len = int(seq_len)
        self.batch_size = int(batch)
        self.seed = int(seed)
        self.shards = ShardSet(self.path)
        sc = self.shards.sidecar
        self.vocab_size = int(sc.vocab_size)
        L = self.seq_len + 1
        #: per split: the cumulative window counts of its shards (``cum[j]`` = windows before j+1)
        self._cum: dict[str, np.ndarray] = {}
        for split in SPLITS:
            counts = np.array([max(0, sh.tokens - L + 1) for sh in self.shards.split(split).shards],
                              dtype=np.int64)
            self._cum[split] = np.cumsum(counts)
        if self._windows("train") == 0:
            longest = max((sh.tokens for sh in self.shards.split("train").shards), default=0)
            raise DataError(
                f"train split of {self.path} has no shard of at least seq_len+1 = {L} tokens "
                f"(the longest has {longest}); lower seq_len, or prepare with more text or a larger "
                f"--shard-tokens")
        self.num_tokens = sum(s.tokens for s in sc.splits.values())
        # bits per byte for `nestdsl eval`: the split it scores (val when there is one)
        scored = self.shards.split("val") if self._windows("val") else self.shards.split("train")
        if scored.source_bytes and scored.tokens:
            #: UTF-8 bytes of the source text per token (separators counted as tokens, not bytes)
            self.bytes_per_token = scored.source_bytes / scored.tokens
        self._tokenizer: Any = None
        sep = sc.separator
        #: the end-of-text id documents were joined with (None for a newline separator): the
        #: lm-eval adapter starts every request after it and stops generation at it
        self.eot_token_id: int | None = (int(sep["ids"][0]) if sep.get("kind") == "eos"
                                         and len(sep.get("ids", [])) == 1 else None)

    def _windows(self, split: str) -> int:
        cum = self._cum[split]
        return int(cum[-1]) if cum.size else 0

    def split_size(self, split: str = "train") -> int:
        """Number of tokens in a split."""
        if split not in SPLITS:
            raise ValueError(f"shards: unknown split {split!r} (expected one of {SPLITS})")
        return int(self.shards.split(split).tokens)

    def _starts(self, step: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The (shard, offset) of every row of the global batch of ``step``."""
        if split not in SPLITS:
            raise ValueError(f"shards: unknown split {split!r} (expected one of {SPLITS})")
        total = self._windows(split)
        if total == 0:
            if split == "val" and self.split_size("val") == 0:
                raise DataError(f"no validation split in {self.path} (it was prepared with "
                                f"--val-fraction {self.shards.sidecar.val_fraction:g} from "
                                f"{self.shards.split('train').documents} documents); prepare it "
                                f"with a larger --val-fraction or more documents")
            raise DataError(f"the {split} split of {self.path} has no shard of at least seq_len+1 "
                            f"= {self.seq_len + 1} tokens; lower seq_len")
        rng = make_rng(self.seed, step, split, "shards")
        g = rng.integers(0, total, size=self.batch_size)
        cum = self._cum[split]
        shard = np.searchsorted(cum, g, side="right")
        before = np.where(shard > 0, cum[np.maximum(shard - 1, 0)], 0)
        return shard, g - before

    def _rows(self, split: str, shard: np.ndarray, offset: np.ndarray) -> np.ndarray:
        L = self.seq_len + 1
        out = np.empty((shard.shape[0], L), dtype=np.int64)
        for r, (j, o) in enumerate(zip(shard.tolist(), offset.tolist(), strict=True)):
            out[r] = self.shards.window(split, j, o, L)
        self.shards.release()          # resident memory stays flat with the set's size
        return out

    def batch(self, step: int, split: str = "train") -> Batch:
        """``batch`` random windows of the split, chosen by a generator seeded from (seed, step, split)."""
        shard, offset = self._starts(step, split)
        return split_sequences(self._rows(split, shard, offset))

    def rank_batch(self, step: int, rank: int, world: int, split: str = "train") -> tuple[Batch, int]:
        """Rank ``rank``'s rows of the global batch (the rows ``torch.chunk(world)`` gives it),
        read from the shards alone, and the scored positions of the global batch."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world {world}")
        shard, offset = self._starts(step, split)
        n_global = self.batch_size * self.seq_len
        per = -(-self.batch_size // world)
        lo, hi = rank * per, min(self.batch_size, (rank + 1) * per)
        if lo >= hi:
            raise ValueError(f"batch {self.batch_size} has no rows for rank {rank} of {world}")
        return split_sequences(self._rows(split, shard[lo:hi], offset[lo:hi])), n_global

    # -- text ↔ ids (the sidecar's tokenizer) ------------------------------------------------

    def _tok(self) -> Any:
        if self._tokenizer is None:
            from nestdsl.data.tokenizer import ByteTokenizer, JsonTokenizer

            rec = self.shards.sidecar.tokenizer
            if rec.get("kind") == "bytes":
                self._tokenizer = ByteTokenizer()
            else:
                self._tokenizer = JsonTokenizer(self.path / str(rec.get("file", "tokenizer.json")))
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of a string (no special tokens added)."""
        return [int(i) for i in self._tok().encode(text)]

    def decode(self, ids: Any) -> str:
        """A string from token ids (1-D tensor, array or list)."""
        return str(self._tok().decode([int(i) for i in ids]))


def make(spec: Any, *, seq_len: int | None = None, batch: int | None = None,
         base_dir: str | os.PathLike[str] | None = None) -> ShardTask:
    """Build from an IR ``ShardsData`` node; a relative ``path`` is resolved against ``base_dir``."""
    path = Path(spec.path).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return ShardTask(path, seq_len=seq_len if seq_len is not None else spec.seq_len,
                     batch=batch if batch is not None else spec.batch, seed=spec.seed)
