"""Preemption: SIGTERM / SIGINT end a run at a step boundary with a checkpoint.

A cluster scheduler (Slurm, Kubernetes, a spot-instance reclaim) sends SIGTERM and waits a grace
period before SIGKILL; a person presses Ctrl-C (SIGINT). Either way the training loop should not
lose the work since its last periodic checkpoint:

- the first signal only raises a flag: the loop finishes the step it is in (forward, backward,
  every level's optimizer update), writes a checkpoint of that step (the normal atomic, verified
  write) and returns; the CLI exits with `EXIT_PREEMPTED` and says how to resume;
- a second signal stops at once (`Interrupted`, exit 128 + signal number as a shell reports it).
  Nothing is corrupted: a checkpoint being written lives in a temporary folder until its final
  rename, so the previous checkpoint stays the newest one `find_latest` returns. A second signal
  within `DUPLICATE_S` of the first is the same notice delivered twice, not a second request:
  a scheduler that signals the whole job (Slurm's SIGTERM to every process of the step) reaches
  each worker directly and once more through torchrun, which forwards the SIGTERM it received.

Under torchrun every rank gets the signal, but not at the same instant: the ranks agree on
stopping once per step (`Ranks.any_`), so they all checkpoint the same step. Handlers are
installed only in the main thread and restored on exit.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

__all__ = ["EXIT_PREEMPTED", "Interrupted", "Preemption"]

#: Exit status of a run stopped by a signal after checkpointing the step it finished: 75 is
#: sysexits' EX_TEMPFAIL ("temporary failure; the user is invited to retry"), which is what a
#: requeueing job script should test for before `nestdsl train --resume`.
EXIT_PREEMPTED = 75

SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Seconds within which a repeated signal counts as the first one delivered again.
DUPLICATE_S = 1.0


class Interrupted(BaseException):
    """A second signal arrived: stop now (a BaseException, like KeyboardInterrupt, so no
    `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Preemption:
    """`with Preemption() as stop:` … `if stop.requested:` checkpoint and leave the loop."""

    def __init__(self, enabled: bool = True, duplicate_s: float = DUPLICATE_S) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.duplicate_s = duplicate_s
        self.signum: int | None = None
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum is not None:
            if now - self._first < self.duplicate_s:
                return                       # the same notice, delivered twice
            raise Interrupted(signum)
        self.signum, self._first = signum, now

    def __enter__(self) -> Preemption:
        if self.enabled:
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
