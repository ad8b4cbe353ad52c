"""PNG plots: loss curves comparing runs, and NIAH accuracy heatmaps.

Uses matplotlib's Agg canvas directly (no global backend switch, no display needed). Files are
written to a temporary name and renamed, so a reader never sees a half-written PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nestdsl.runtime.metrics import read_metrics

__all__ = ["PlotError", "plot_heatmap", "plot_runs"]


class PlotError(Exception):
    """Nothing to plot (no metrics, unknown key, empty table); one-line message."""

    user_error = True


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out_png: str | os.PathLike[str]) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(str(tmp), format="png", bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    names = [p.resolve().name or str(p) for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.resolve().parent.name}/{p.resolve().name}" for p in run_dirs]


def _smooth(ys: list[float], alpha: float) -> list[float]:
    """Exponential moving average (``alpha`` = weight of the past, 0 = none)."""
    if alpha <= 0:
        return ys
    out, acc = [], None
    for y in ys:
        if not math.isfinite(y):
            out.append(y)
            continue
        acc = y if acc is None else alpha * acc + (1 - alpha) * y
        out.append(acc)
    return out


def plot_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_png: str | os.PathLike[str],
    *,
    keys: Sequence[str] = ("loss",),
    labels: Sequence[str] | None = None,
    smooth: float = 0.0,
    logy: bool = False,
    title: str | None = None,
) -> Path:
    """Plot ``keys`` (default ``loss``) against ``step`` for each run folder into one PNG.

    Each key of each run is a line (keys after the first are dashed, e.g. ``val_loss``).
    Raises :class:`PlotError` if no run has any of the keys.
    """
    runs = [Path(d) for d in run_dirs]
    if not runs:
        raise PlotError("no run folders given")
    names = list(labels) if labels is not None else _labels(runs)
    if len(names) != len(runs):
        raise PlotError(f"{len(names)} labels for {len(runs)} runs")
    fig = _figure(8, 5)
    ax = fig.add_subplot(1, 1, 1)
    styles = ["-", "--", ":", "-."]
    drawn = 0
    missing = []
    for i, (run, name) in enumerate(zip(runs, names, strict=True)):
        records = read_metrics(run)
        if not records:
            missing.append(str(run))
            continue
        color = f"C{i % 10}"
        for j, key in enumerate(keys):
            pts = sorted(
                {int(r["step"]): float(r[key]) for r in records if "step" in r and isinstance(r.get(key), int | float)}.items()
            )
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = _smooth([p[1] for p in pts], smooth)
            label = name if len(keys) == 1 else f"{name} {key}"
            ax.plot(xs, ys, styles[j % len(styles)], color=color, label=label, linewidth=1.5)
            drawn += 1
    if drawn == 0:
        where = f" (no metrics in: {', '.join(missing)})" if missing else ""
        raise PlotError(f"nothing to plot: no run has {', '.join(keys)}{where}")
    ax.set_xlabel("step")
    ax.set_ylabel(keys[0] if len(keys) == 1 else "value")
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or f"{' / '.join(keys)} by step")
    return _save(fig, out_png)


MEMORY_STATS = (("state_norm", "state norm ‖θ_T‖"), ("update_norm", "update norm ‖θ_T − θ_0‖"),
                ("loss_before", "inner loss before write"), ("loss_after", "inner loss after write"))


def has_memory_stats(run_dirs: Sequence[str | os.PathLike[str]]) -> bool:
    return any("memories" in r for d in run_dirs for r in read_metrics(Path(d)))


def plot_memories(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_png: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
) -> Path:
    """The inner-loop telemetry (metrics' ``memories`` records) of each run: one panel per
    statistic (state norm, update norm, inner loss before/after the writes), one line per
    run and memory, against the step (log scale: divergence shows as a straight climb)."""
    runs = [Path(d) for d in run_dirs]
    names = list(labels) if labels is not None else _labels(runs)
    fig = _figure(11, 7)
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(len(MEMORY_STATS))]
    drawn = 0
    for i, (run, name) in enumerate(zip(runs, names, strict=True)):
        records = [r for r in read_metrics(run) if isinstance(r.get("memories"), dict)]
        memories = list(dict.fromkeys(m for r in records for m in r["memories"]))
        for j, mem in enumerate(memories):
            for ax, (key, _) in zip(axes, MEMORY_STATS, strict=True):
                pts = [(int(r["step"]), float(r["memories"][mem][key])) for r in records
                       if key in r["memories"].get(mem, {})]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], ["-", "--", ":", "-."][i % 4],
                            color=f"C{j % 10}", label=f"{name}: {mem}", linewidth=1.2)
                    drawn += 1
    if drawn == 0:
        raise PlotError("nothing to plot: no run has inner-loop telemetry (train.telemetry)")
    for ax, (_, title) in zip(axes, MEMORY_STATS, strict=True):
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="best", fontsize="x-small")
    return _save(fig, out_png)


def plot_heatmap(
    table: Mapping[Any, Any],
    out_png: str | os.PathLike[str],
    *,
    title: str = "NIAH accuracy",
    xlabel: str = "context length",
    ylabel: str = "",
) -> Path:
    """Heatmap of accuracies in ``[0, 1]``, annotated with percentages.

    ``table`` is either ``{column: accuracy}`` (one row, e.g. ``{256: 1.0, 512: 0.75}``) or
    ``{row_label: {column: accuracy}}`` (e.g. rows = models, variants or needle depths;
    columns = lengths). Missing cells are blank. Numeric columns are sorted.
    """
    if not table:
        raise PlotError("empty accuracy table")
    if all(isinstance(v, Mapping) for v in table.values()):
        rows: dict[str, Mapping[Any, Any]] = {str(k): v for k, v in table.items()}
    elif all(isinstance(v, int | float) for v in table.values()):
        rows = {"": table}
    else:
        raise PlotError("table must map columns to accuracies, or rows to such mappings")
    cols: list[Any] = []
    for r in rows.values():
        for c in r:
            if c not in cols:
                cols.append(c)
    if not cols:
        raise PlotError("empty accuracy table")
    if all(isinstance(c, int | float) for c in cols):
        cols.sort()
    nan = float("nan")
    grid = [[float(r.get(c, nan)) for c in cols] for r in rows.values()]

    fig = _figure(max(4.0, 1.0 + 0.9 * len(cols)), max(2.0, 1.2 + 0.5 * len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), list(rows))
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if math.isfinite(v):
                ax.text(j, i, f"{100 * v:.0f}%", ha="center", va="center", fontsize=9)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, out_png)
