"""Continual learning: a list of sub-tasks, switching every ``switch_every`` steps.

Step ``s`` trains on sub-task ``(s // switch_every) % len(tasks)`` (after the last sub-task the
sequence starts again, so revisits can be studied). All sub-tasks share one model, so they use
the continual node's ``seq_len`` and ``batch`` (a sub-task's own values are ignored), and the
vocabulary is the largest of theirs. Sub-task ``i``'s seed is derived from the continual seed and
its own seed, so the stream stays a pure function of ``(seed, step, split)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from nestdsl.runtime.tasks.base import Batch, DataError, Task

__all__ = ["ContinualTask", "derive_seed"]


def derive_seed(parent_seed: int, sub_seed: int) -> int:
    """Seed of a sub-task from the continual seed and the sub-task's own seed."""
    return int(parent_seed) * 1_000_003 + int(sub_seed)


class ContinualTask(Task):
    """Switch between already-built sub-tasks every ``switch_every`` steps."""

    name = "continual"

    def __init__(self, tasks: Sequence[Task], *, switch_every: int = 100, seed: int = 0) -> None:
        if len(tasks) < 1:
            raise DataError("continual: needs at least one sub-task")
        if switch_every < 1:
            raise DataError(f"continual: switch_every must be >= 1, got {switch_every}")
        shapes = {(t.seq_len, t.batch_size) for t in tasks}
        if len(shapes) != 1:
            raise DataError(f"continual: sub-tasks differ in (seq_len, batch): {sorted(shapes)}")
        self.tasks = list(tasks)
        self.switch_every = int(switch_every)
        self.seed = int(seed)
        self.seq_len, self.batch_size = next(iter(shapes))
        self.vocab_size = max(t.vocab_size for t in self.tasks)

    def current_task(self, step: int) -> int:
        """Index of the sub-task trained at ``step``."""
        return (int(step) // self.switch_every) % len(self.tasks)

    def task_at(self, step: int) -> Task:
        """The sub-task trained at ``step``."""
        return self.tasks[self.current_task(step)]

    def switch_points(self, total_steps: int) -> list[int]:
        """Steps ``0 < s < total_steps`` at which the sub-task changes."""
        return list(range(self.switch_every, int(total_steps), self.switch_every))

    def batch(self, step: int, split: str = "train") -> Batch:
        """The current sub-task's batch for ``(step, split)``."""
        return self.task_at(step).batch(step, split)
