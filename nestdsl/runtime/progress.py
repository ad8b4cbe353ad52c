"""A rich progress display for training: step, loss, tokens/s, ETA, learning rate."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    """Context manager; `update(record)` takes a metrics record from the train loop."""

    def __init__(self, total: int, *, enabled: bool = True, title: str = "train", console: Console | None = None):
        self.enabled = enabled
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
            console=console or Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._bar.add_task(title, total=total, loss="-", tps="-", lr="-")

    def __enter__(self) -> Progress:
        self._bar.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._bar.stop()

    def update(self, record: dict[str, float]) -> None:
        self._bar.update(
            self._task,
            completed=int(record["step"]),
            loss=f"{record['loss']:.4f}",
            tps=f"{record['tokens_per_s']:,.0f}",
            lr=f"{record['lr']:.2e}",
        )
        if not self._bar.live.is_started or not self.enabled:
            return
        # Keep a scrollback line every log step so a finished run shows its curve in the terminal.
        self._bar.console.print(
            f"step {int(record['step']):>6}  loss {record['loss']:.4f}  "
            f"{record['tokens_per_s']:,.0f} tok/s  lr {record['lr']:.2e}",
            highlight=False,
        )
