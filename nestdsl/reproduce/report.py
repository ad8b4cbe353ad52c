"""The reproduction report: from the stored run records alone, per suite a table of nestdsl's
figures (mean ± sample std over seeds) beside the paper's, and a verdict per claim.

A claim "A beats B" is judged on the kind's metric, per pair of rows:

* reproduced:    A is better than B by more than the seeds' spread (the larger of the two
                 rows' standard deviations);
* not reproduced: B is better than A by more than that spread;
* inconclusive:  the difference is within the spread, or a row has fewer than two seeds.

A claim against several rows is reproduced when every pair is, not reproduced when any pair is
reversed, inconclusive otherwise. The direction is what is compared: the paper's models are
760M-1.3B parameters trained on 30-100B tokens; these are ~0.1M-parameter models trained for
minutes on a CPU, so absolute figures are not comparable.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestdsl.reproduce.runner import load_records

__all__ = ["Verdict", "aggregate", "judge", "render_report", "write_report"]

#: The metric a claim compares by default, and whether lower is better, per suite kind.
METRICS: dict[str, tuple[str, bool]] = {
    "lm": ("bits_per_byte", True),
    "niah": ("mean_acc", False),
    "continual": ("forgetting", True),
    "optim": ("final_loss", True),
}


def _value(rec: dict[str, Any], metric: str) -> float | None:
    if "diverged" in rec:
        return None
    if metric == "mean_acc" and "at_length" in rec:
        xs = list(rec["at_length"].values())
        return sum(xs) / len(xs)
    v = rec.get("at_noise", {}).get(metric.removeprefix("noise_")) if metric.startswith("noise_") \
        else rec.get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def aggregate(records: list[dict[str, Any]], metric: str) -> dict[str, list[float]]:
    """Per row, the metric of each seed (niah: each seed's mean over its variants)."""
    per: dict[str, dict[int, list[float]]] = {}
    for rec in records:
        v = _value(rec, metric)
        if v is not None:
            per.setdefault(rec["row"], {}).setdefault(int(rec["seed"]), []).append(v)
    return {row: [sum(v) / len(v) for _, v in sorted(seeds.items())] for row, seeds in per.items()}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (sum(xs) / len(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan)


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str          # "reproduced" | "not reproduced" | "inconclusive"
    detail: str


def _pair(a: list[float], b: list[float], lower_is_better: bool) -> tuple[str, float, float]:
    if len(a) < 2 or len(b) < 2:
        return "inconclusive", math.nan, math.nan
    (ma, sa), (mb, sb) = _mean_std(a), _mean_std(b)
    gain = (mb - ma) if lower_is_better else (ma - mb)      # > 0: A is better
    spread = max(sa, sb)
    if gain > spread:
        return "reproduced", gain, spread
    if -gain > spread:
        return "not reproduced", gain, spread
    return "inconclusive", gain, spread


#: Forgetting says nothing about a task that was never learned: a continual claim is judged only
#: between rows whose best answer accuracy on the earlier tasks reached this (mean over seeds).
LEARNED = 0.5


def _learned(records: list[dict[str, Any]], row: str) -> float | None:
    """Mean over seeds of a continual row's best score on each earlier task (None: not an
    accuracy matrix)."""
    vals = []
    for r in records:
        if r["row"] != row or "diverged" in r or not r.get("matrix") or r.get("metric") != "answer_acc":
            continue
        m, n = r["matrix"], len(r["matrix"])
        vals.append(statistics.mean(max(m[i][j] for i in range(j, n)) for j in range(n - 1)))
    return statistics.mean(vals) if vals else None


def judge(meta: dict[str, Any], records: list[dict[str, Any]]) -> list[Verdict]:
    out = []
    for claim in meta.get("claims", []):
        metric, lower = METRICS[meta["kind"]]
        metric = claim.get("metric") or metric
        values = aggregate(records, metric)
        a = values.get(claim["better"], [])
        parts, verdicts = [], []
        for other in claim["than"]:
            unlearned = [(n, x) for n in (claim["better"], other)
                         if metric == "forgetting" and (x := _learned(records, n)) is not None and x < LEARNED]
            if unlearned:
                verdicts.append("inconclusive")
                parts.append(f"vs {other}: inconclusive ("
                             + "; ".join(f"{n} never learned the earlier tasks: best accuracy {x:.2f}"
                                         for n, x in unlearned) + ")")
                continue
            v, gain, spread = _pair(a, values.get(other, []), lower)
            verdicts.append(v)
            parts.append(f"vs {other}: {v} (gain {gain:+.3g}, spread {spread:.2g})"
                         if math.isfinite(gain) else f"vs {other}: {v} (fewer than 2 seeds)")
        if all(v == "reproduced" for v in verdicts):
            verdict = "reproduced"
        elif any(v == "not reproduced" for v in verdicts):
            verdict = "not reproduced"
        else:
            verdict = "inconclusive"
        out.append(Verdict(claim["claim"], verdict, f"{metric}: " + "; ".join(parts)))
    return out


def _fmt(xs: list[float], digits: int = 3) -> str:
    if not xs:
        return "—"
    m, s = _mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if math.isfinite(s) else f"{m:.{digits}f}"


def _paper(row: dict[str, Any]) -> str:
    p = row.get("paper")
    if p is None:
        return "—"
    return " / ".join("—" if x is None else f"{x:g}" for x in p) if isinstance(p, list) else f"{p:g}"


def _seeds(recs: list[dict[str, Any]]) -> str:
    ok = {r["seed"] for r in recs if "diverged" not in r}
    bad = len([r for r in recs if "diverged" in r])
    return f"{len(ok)}" + (f" (+{bad} diverged runs)" if bad else "")


def _niah_tables(meta: dict[str, Any], by_row: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One table per S-NIAH variant: answer accuracy (%) at each length, the paper's beside it."""
    lengths, lines = meta["lengths"], []
    for vi, v in enumerate(meta["variants"]):
        head = ["row", "params", *[f"{m}× ours" for m in lengths], *[f"{m}× paper" for m in lengths], "seeds"]
        lines += ["", f"S-NIAH-{v} ({['pass-key', 'number', 'word'][v - 1]} needle), answer accuracy %:", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in meta["rows"]:
            recs = [r for r in by_row.get(row["name"], []) if r.get("variant") == v]
            ok = [r for r in recs if "diverged" not in r]
            params = f"{ok[0]['params']:,}" if ok and "params" in ok[0] else "—"
            ours = [_fmt([100 * r["at_length"][str(m)] for r in ok], 1) for m in lengths]
            paper = row.get("paper")
            theirs = (paper[vi * len(lengths):(vi + 1) * len(lengths)] if isinstance(paper, list)
                      else [None] * len(lengths))
            lines.append("| " + " | ".join([row["name"], params, *ours,
                                            *["—" if x is None else f"{x:g}" for x in theirs],
                                            _seeds(recs)]) + " |")
    return lines[1:]


def _forgetting_matrices(meta: dict[str, Any], by_row: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per row, the mean over seeds of score[after task i][on task j]."""
    lines: list[str] = []
    for row in meta["rows"]:
        ok = [r for r in by_row.get(row["name"], []) if "diverged" not in r and r.get("matrix")]
        if not ok:
            continue
        tasks, n = ok[0]["tasks"], len(ok[0]["matrix"])
        if not lines:
            metric = ok[0].get("metric", "answer_acc").replace("_", " ")
            lines += ["", f"Forgetting matrices ({metric} on each task, rows: after training on it; mean over seeds):", "",
                      "| row | after | " + " | ".join(f"on {t}" for t in tasks) + " |",
                      "|" + "---|" * (len(tasks) + 2)]
        for i in range(n):
            cells = [f"{statistics.mean(r['matrix'][i][j] for r in ok):.3f}" for j in range(len(tasks))]
            lines.append(f"| {row['name'] if i == 0 else ''} | {tasks[i]} | " + " | ".join(cells) + " |")
    return lines


def _table(meta: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    kind = meta["kind"]
    by_row: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_row.setdefault(rec["row"], []).append(rec)
    if kind == "niah":
        return _niah_tables(meta, by_row)
    if kind == "continual":
        head = ["row", "params", "forgetting ↓", "final average", "paper", "seeds"]
    elif kind == "optim":
        head = ["row", "tuned lr", *[f"loss at noise {n} ↓" for n in meta["noise"]], "paper", "seeds"]
    else:
        head = ["row", "params", "bits/byte ↓", "perplexity ↓", "tokens/s", "paper", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in meta["rows"]:
        recs = by_row.get(row["name"], [])
        ok = [r for r in recs if "diverged" not in r]
        params = f"{ok[0]['params']:,}" if ok and "params" in ok[0] else "—"
        if kind == "optim":      # a tuned lr at the end of its grid was not really tuned
            grid = row.get("lr") or []
            params = ", ".join(f"{lr:g}" + (" (grid edge)" if grid and lr in (min(grid), max(grid)) else "")
                               for lr in sorted({r["lr"] for r in ok})) or "—"
        if kind == "continual":
            cells = [_fmt([r["forgetting"] for r in ok]), _fmt([r["final_avg"] for r in ok])]
        elif kind == "optim":
            cells = [_fmt([r["at_noise"][str(n)] for r in ok if math.isfinite(r["at_noise"][str(n)])])
                     for n in meta["noise"]]
        else:
            cells = [_fmt([r["bits_per_byte"] for r in ok]), _fmt([r["perplexity"] for r in ok]),
                     f"{statistics.mean(r['tokens_per_s'] for r in ok):,.0f}" if ok else "—"]
        lines.append("| " + " | ".join([row["name"], params, *cells, _paper(row), _seeds(recs)]) + " |")
    if kind == "continual":
        lines += _forgetting_matrices(meta, by_row)
    return lines


def render_suite(folder: Path) -> list[str]:
    meta = json.loads((folder / "suite.json").read_text())
    records = load_records(folder)
    steps = meta.get("steps_run", meta["steps"])
    lines = [f"## {meta['title']} (`{meta['suite']}`)", "",
             f"Paper: {meta['paper']}.", "",
             f"Here: {steps} steps per run at scale {meta.get('scale', 1)}, seeds "
             f"{', '.join(map(str, sorted({r['seed'] for r in records}) or meta['seeds']))}, on {meta.get('device', 'cpu')} "
             f"({meta.get('machine', {}).get('cpus', '?')} CPUs); {len(records)} runs recorded in "
             f"`benchmarks/results/reproduce/{meta['suite']}/`.", ""]
    lines += _table(meta, records)
    png = folder / f"{meta['suite']}.png"
    if png.is_file():
        lines += ["", f"![{meta['suite']}](../benchmarks/results/reproduce/{meta['suite']}/{png.name})"]
    lines += ["", "| claim | verdict | detail |", "|---|---|---|"]
    for v in judge(meta, records):
        lines.append(f"| {v.claim} | **{v.verdict}** | {v.detail} |")
    if meta.get("notes"):
        lines += ["", meta["notes"].strip()]
    return lines + [""]


HEADER = """# Reproducing the paper's claims at laptop scale

<!-- generated by `nestdsl reproduce --report-only` from benchmarks/results/reproduce/; do not edit by hand -->

Each suite is a file in `examples/reproduce/` (rows = a spec plus `--set` overrides, the paper's
figure beside each row, the claims the rows test); `nestdsl reproduce <suite>` runs it (parallel
jobs, one thread each, resumable) and regenerates this page from the stored records alone.
Figures are means ± sample standard deviations over seeds on held-out batches. The paper's
models have 340M-1.3B parameters and 15-100B tokens; these have ~0.1-1M parameters and
minutes of CPU, so only the *direction* of each claim is judged: **reproduced** (better by more
than the seeds' spread), **not reproduced** (worse by more than it) or **inconclusive**.
"""


def report_names(root: Path, shipped: list[str]) -> list[str]:
    """The suites the report covers: every shipped one, and any other with records under `root`."""
    return sorted({*shipped, *(p.parent.name for p in root.glob("*/suite.json"))})


def _summary(root: Path, suite_names: list[str]) -> list[str]:
    """Every claim of every suite that has records, with its verdict, in one table."""
    rows = []
    for name in suite_names:
        folder = root / name
        if not (folder / "suite.json").is_file():
            continue
        meta = json.loads((folder / "suite.json").read_text())
        steps = meta.get("steps_run", meta["steps"])
        for v in judge(meta, load_records(folder)):
            rows.append(f"| `{name}` ({steps} steps) | {v.claim} | **{v.verdict}** |")
    if not rows:
        return []
    return ["| suite | claim | verdict |", "|---|---|---|", *rows, ""]


def render_report(root: Path, suite_names: list[str]) -> str:
    lines = [HEADER, *_summary(root, suite_names)]
    for name in suite_names:
        folder = root / name
        if (folder / "suite.json").is_file():
            lines += render_suite(folder)
        else:
            lines += [f"## `{name}`", "", f"Not run yet: `nestdsl reproduce {name}`.", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(root: Path, suite_names: list[str], path: Path) -> Path:
    for name in suite_names:
        if (root / name / "suite.json").is_file():
            plot_suite(root / name)
    path.write_text(render_report(root, suite_names))
    return path


def plot_suite(folder: Path) -> Path | None:
    """A PNG per suite (matplotlib, when installed): loss curves (lm), an accuracy heatmap by
    length (niah), forgetting per row (continual)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    meta = json.loads((folder / "suite.json").read_text())
    records = [r for r in load_records(folder) if "diverged" not in r]
    if not records:
        return None
    names = [r["name"] for r in meta["rows"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if meta["kind"] == "niah":
        cols = [(v, m) for v in meta["variants"] for m in meta["lengths"]]
        grid = [[statistics.mean([r["at_length"][str(m)] for r in records
                                  if r["row"] == n and r.get("variant") == v] or [math.nan])
                 for v, m in cols] for n in names]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), [f"{v}:{m}×" for v, m in cols], fontsize=7)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("S-NIAH variant : evaluation length / training length")
        fig.colorbar(im, ax=ax, label="answer accuracy")
    elif meta["kind"] == "optim":
        for n in names:
            recs = [r for r in records if r["row"] == n]
            if not recs:
                continue
            ys = [statistics.mean(r["at_noise"][str(x)] for r in recs) for x in meta["noise"]]
            ax.plot(meta["noise"], ys, marker="o", label=n)
        ax.set_xlabel("gradient noise level")
        ax.set_ylabel("final loss")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    elif meta["kind"] == "continual":      # forgetting beside what there was to forget
        ys = list(range(len(names)))
        forgetting = [statistics.mean([r["forgetting"] for r in records if r["row"] == n] or [math.nan])
                      for n in names]
        learned = [_learned(records, n) for n in names]
        ax.barh([y + 0.2 for y in ys], forgetting, height=0.4, label="average forgetting")
        ax.barh([y - 0.2 for y in ys], [math.nan if x is None else x for x in learned], height=0.4,
                label="best accuracy on the earlier tasks")
        ax.set_yticks(ys, names, fontsize=7)
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    else:
        for n in names:
            curves = [r["curve"] for r in records if r["row"] == n and r.get("curve")]
            if curves:
                steps = [p["step"] for p in curves[0]]
                mean = [statistics.mean(c[i]["loss"] for c in curves if i < len(c))
                        for i in range(len(steps))]
                ax.plot(steps, [m / math.log(2) for m in mean], label=n)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (bits/byte)")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    ax.set_title(meta["title"], fontsize=9)
    fig.tight_layout()
    path = folder / f"{meta['suite']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
