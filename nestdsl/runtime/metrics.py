"""Training metrics: one JSON object per line in ``RUN/metrics.jsonl`` (+ TensorBoard if installed).

Each :meth:`MetricsWriter.log` call appends one line such as
``{"step": 10, "loss": 2.31, "tokens_per_s": 5120.0, "lr": 0.001, "elapsed": 3.2}`` and flushes
it, so a crash loses at most the line being written (:func:`read_metrics` skips a torn last
line). Non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict
JSON) and read back as floats. On resume, ``MetricsWriter(run_dir, truncate_after=step)`` drops
the records logged after the checkpoint, so the file matches an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["METRICS_FILE", "MetricsWriter", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _scalar(v: Any) -> Any:
    """Plain JSON value for a metric (tensors/numpy scalars via ``.item()``)."""
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, bool) or v is None or isinstance(v, int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, Mapping):
        return {str(k): _scalar(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_scalar(x) for x in v]
    try:
        return _scalar(float(v))
    except (TypeError, ValueError):
        return str(v)


def _restore(v: Any) -> Any:
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    if isinstance(v, dict):
        return {k: _restore(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_restore(x) for x in v]
    return v


def _parse_lines(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line from a crash mid-write
        if isinstance(rec, dict):
            out.append(_restore(rec))
    return out


class MetricsWriter:
    """Append metrics records to ``RUN/metrics.jsonl`` (and TensorBoard when available).

    ``tensorboard``: ``None`` uses it if ``torch.utils.tensorboard`` and ``tensorboard`` are
    importable (silently skipped otherwise), ``False`` never, ``True`` requires it.
    ``truncate_after``: first rewrite the file (atomically) keeping only records with
    ``step <= truncate_after`` (use the resumed checkpoint's step). ``history``: the records
    the checkpoint carries; a record missing from the file (a damaged or deleted line, or the
    whole file) is restored from it.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        filename: str = METRICS_FILE,
        tensorboard: bool | None = None,
        truncate_after: int | None = None,
        start_elapsed: float = 0.0,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / filename
        if truncate_after is not None and (self.path.exists() or history):
            lines = _parse_lines(self.path) if self.path.exists() else []
            kept = [r for r in lines if int(r.get("step", 0)) <= truncate_after]
            have = {int(r.get("step", 0)) for r in kept}
            kept += [dict(r) for r in history or []
                     if int(r["step"]) <= truncate_after and int(r["step"]) not in have]
            kept.sort(key=lambda r: int(r.get("step", 0)))
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for r in kept:
                    f.write(json.dumps(_scalar(r), allow_nan=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._t0 = time.monotonic() - float(start_elapsed)
        self._tb: Any = None
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except Exception:  # noqa: BLE001 - optional dependency
                if tensorboard:
                    raise
                self._tb = None

    @property
    def elapsed(self) -> float:
        """Seconds since the writer was created (plus ``start_elapsed``)."""
        return time.monotonic() - self._t0

    def log(self, step: int, **values: Any) -> dict[str, Any]:
        """Append one record ``{"step": step, **values}``; ``elapsed`` is added if not given."""
        rec: dict[str, Any] = {"step": int(step)}
        rec.update({k: _scalar(v) for k, v in values.items()})
        rec.setdefault("elapsed", round(self.elapsed, 6))
        self._file.write(json.dumps(rec, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, int(step))
            self._tb.flush()
        return _restore(rec)

    def close(self) -> None:
        """Flush and close the file (and TensorBoard writer)."""
        if not self._file.closed:
            self._file.flush()
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_metrics(run_dir: str | os.PathLike[str], *, filename: str = METRICS_FILE) -> list[dict[str, Any]]:
    """All records of a run folder's (or a given ``.jsonl`` file's) metrics, in file order.

    Returns ``[]`` if there is no metrics file; torn or non-JSON lines are skipped.
    """
    p = Path(run_dir)
    path = p if p.is_file() else p / filename
    if not path.is_file():
        return []
    return _parse_lines(path)
