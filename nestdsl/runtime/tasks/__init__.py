"""Seeded, deterministic task generators and the factory that builds one from the spec IR.

Every task (``text``, ``shards``, ``mqar``, ``niah``, ``copy``, ``continual``) has
``vocab_size``, ``seq_len``, ``batch_size``, ``seed`` and
``batch(step, split="train") -> Batch(tokens, targets, loss_mask)``, a pure function of
``(seed, step, split)``; recall tasks score with ``accuracy(logits_or_predictions, targets, mask)``
(exact match per sample over the answer positions). See :mod:`nestdsl.runtime.tasks.base` for
the next-token convention.
"""

from __future__ import annotations

import os
from typing import Any

from nestdsl.runtime.tasks.base import Batch, DataError, Task, accuracy, exact_match, make_rng
from nestdsl.runtime.tasks.continual import ContinualTask, derive_seed
from nestdsl.runtime.tasks.copy import CopyTask
from nestdsl.runtime.tasks.mqar import MQARTask
from nestdsl.runtime.tasks.niah import NIAHTask, min_seq_len
from nestdsl.runtime.tasks.shards import ShardTask
from nestdsl.runtime.tasks.text import TextTask

__all__ = [
    "Batch",
    "ContinualTask",
    "CopyTask",
    "DataError",
    "MQARTask",
    "NIAHTask",
    "ShardTask",
    "Task",
    "TextTask",
    "accuracy",
    "exact_match",
    "make_rng",
    "make_task",
    "min_seq_len",
]


def make_task(
    data_spec: Any,
    *,
    seq_len: int | None = None,
    batch: int | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Task:
    """Build the task described by an IR data node (``TextData``, ``ShardsData``, ``MQARData``, ...).

    ``seq_len``/``batch`` override the node's values (e.g. an evaluation length sweep).
    ``base_dir`` resolves a relative text or shards ``path`` (e.g. the spec file's folder;
    default: the working directory); ``cache_dir`` is where a locally trained BPE tokenizer is cached.
    For ``continual`` the node's own ``seq_len``/``batch`` (or the overrides) apply to every
    sub-task.
    """
    kind = getattr(data_spec, "task", None)
    if kind == "text":
        from nestdsl.runtime.tasks import text

        return text.make(data_spec, seq_len=seq_len, batch=batch, base_dir=base_dir, cache_dir=cache_dir)
    if kind == "shards":
        from nestdsl.runtime.tasks import shards

        return shards.make(data_spec, seq_len=seq_len, batch=batch, base_dir=base_dir)
    if kind == "mqar":
        from nestdsl.runtime.tasks import mqar

        return mqar.make(data_spec, seq_len=seq_len, batch=batch)
    if kind == "niah":
        from nestdsl.runtime.tasks import niah

        return niah.make(data_spec, seq_len=seq_len, batch=batch)
    if kind == "copy":
        from nestdsl.runtime.tasks import copy

        return copy.make(data_spec, seq_len=seq_len, batch=batch)
    if kind == "continual":
        T = seq_len if seq_len is not None else data_spec.seq_len
        B = batch if batch is not None else data_spec.batch
        subs = []
        for sub in data_spec.tasks:
            sub = sub.model_copy(update={"seed": derive_seed(data_spec.seed, sub.seed)})
            subs.append(make_task(sub, seq_len=T, batch=B, base_dir=base_dir, cache_dir=cache_dir))
        return ContinualTask(subs, switch_every=data_spec.switch_every, seed=data_spec.seed)
    raise DataError(f"unknown data task {kind!r}")
