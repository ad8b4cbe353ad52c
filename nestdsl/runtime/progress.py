"""Progress displays: training (step, loss, lr, tokens/s, elapsed) and a counter for long loops.

On a terminal, training shows a rich bar and keeps one scrollback line per log step; when the
output is not a terminal (a pipe, a log file, CI) there is no bar — a bar there comes out as
truncated lines (`━━━━ 20… 0:0… ETA 0:0…`) — only exactly one plain line per log step:

    step 20/200  loss 3.4120  lr 1.00e-03  12,345 tok/s  0:00:12
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0.0))))


def log_line(record: dict[str, Any], total: int) -> str:
    """The plain line of one log step: `step 20/200  loss 3.4120  lr 1.00e-03  12,345 tok/s  0:00:12`."""
    line = (f"step {int(record['step'])}/{total}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['tokens_per_s']:,.0f} tok/s")
    if "elapsed" in record:
        line += f"  {_clock(record['elapsed'])}"
    return line


class Progress:
    """Context manager; `update(record)` takes a metrics record from the train loop, `status(text)`
    what the loop is doing between log steps ("compiling" before a compiled first step, "" after).

    `enabled=False` shows nothing. Whether the bar is drawn follows the console: a terminal gets
    the bar, anything else plain lines."""

    def __init__(self, total: int, *, enabled: bool = True, title: str = "train", console: Console | None = None):
        self.enabled = enabled
        self.total = total
        self.title = title
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self._bar: RichProgress | None = None
        if self.live:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TextColumn("lr {task.fields[lr]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task(title, total=total, loss="-", tps="-", lr="-")

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()

    def status(self, text: str) -> None:
        """Show what the loop is doing ("" clears it). Off a terminal, only "compiling" prints a
        line (once), so a log shows why the first step takes long."""
        if not self.enabled:
            return
        if self._bar is not None:
            desc = f"{self.title} · {text}…" if text else self.title
            self._bar.update(self._task, description=desc)
            self._bar.refresh()                   # now: the step it announces may take minutes
        elif text == "compiling":
            self.console.print("compiling (torch.compile): the first step includes it; tok/s "
                               "is measured after it", markup=False, highlight=False, soft_wrap=True)

    def update(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = log_line(record, self.total)
        if self._bar is None:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        self._bar.update(
            self._task,
            completed=int(record["step"]),
            loss=f"{record['loss']:.4f}",
            tps=f"{record['tokens_per_s']:,.0f}",
            lr=f"{record['lr']:.2e}",
        )
        # Keep a scrollback line every log step so a finished run shows its curve in the terminal.
        self._bar.console.print(line, markup=False, highlight=False)


class Counter:
    """What `counter` yields: `working_on(label)` names the item being computed, `advance()`
    marks one done. A no-op off a terminal."""

    def __init__(self, bar: RichProgress | None = None, task: Any = None) -> None:
        self._bar, self._task = bar, task

    def working_on(self, label: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, label=label)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1)


@contextmanager
def counter(console: Console, total: int, title: str) -> Iterator[Counter]:
    """A `done/total` counter for a long loop, on a terminal only (a transient bar, gone when the
    loop ends, so the table that follows stands alone); elsewhere nothing is printed."""
    if not console.is_terminal or total <= 0:
        yield Counter()
        return
    bar = RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[label]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(title, total=total, label="")
    with bar:
        yield Counter(bar, task)
