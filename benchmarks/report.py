"""Write docs/results.md from benchmarks/results/: every recorded run, one table per result file.

    python benchmarks/report.py            # regenerate docs/results.md
    python benchmarks/report.py --check    # exit 1 when docs/results.md is stale

The page is generated so that it cannot drift from the measurements: a result file added,
changed or removed without regenerating fails `tests/docs/test_results_page.py`. What the
numbers mean — which run answered which question — is written by hand in docs/lab-notes.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REPRODUCE = RESULTS / "reproduce"  # one folder per suite; its tables are docs/reproduction.md
PAGE = ROOT / "docs" / "results.md"

# Sections of the page, in reading order: what a result file's `benchmark` field (or, for older
# files without one, its name) says it measured.
SECTIONS = {
    "reproduce": "Reproduction suites (`nestdsl reproduce`)",
    "learn": "Does it learn (benchmarks/learn.py)",
    "probe_map": "Memory probes at initialisation (benchmarks/probe_map.py, `nestdsl probe`)",
    "sensitivity": "Needle sensitivity (`nestdsl probe` end to end)",
    "optim": "Deep Optimizers (benchmarks/bench_optim.py)",
    "memory": "What a step keeps and launches (benchmarks/bench_memory.py)",
    "models": "Tokens per second and compile time (benchmarks/bench_models.py)",
    "sweep": "Hope's piecewise CMS sweep (benchmarks/bench_sweep.py)",
    "ops": "Memory ops: reference vs chunked vs compiled (benchmarks/bench_ops.py)",
    "hostile_inputs": "A user's mistakes: one-line errors (benchmarks/hostile_inputs.py)",
    "other": "Other measurements",
}
DESCRIPTION_KEYS = (
    "what",
    "note",
    "command",
    "environment",
    "code",
    "grid",
    "spec",
    "task",
    "machine",
)
RECORD_KEYS = ("records", "results")
MAX_CELL = 90


def kind_of(path: Path, data: object) -> str:
    named = data.get("benchmark") if isinstance(data, dict) else None
    if named in SECTIONS:
        return named
    relative = path.relative_to(RESULTS).as_posix()
    for kind in SECTIONS:
        if relative.startswith(kind):
            return kind
    if relative.startswith(("hope-map/", "mqar-chunk-probes/", "hope-niah-probes/")):
        return "learn" if _records(data) else "probe_map"
    if relative.startswith(("mlp-step", "titans-pytorch")):
        return "ops"
    if relative.startswith("first-loss"):
        return "models"
    return "other"


def _records(data: object) -> list[dict] | None:
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    if isinstance(data, dict):
        for key in RECORD_KEYS:
            value = data.get(key)
            if isinstance(value, list) and all(isinstance(r, dict) for r in value):
                return value
    return None


def cell(value: object, limit: int = MAX_CELL) -> str:
    """One table cell: numbers to 4 significant digits, lists joined, pipes escaped."""
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    elif isinstance(value, int):
        text = f"{value:,}" if abs(value) >= 10_000 else str(value)
    elif isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        text = "; ".join(cell(v) for v in value)
    elif isinstance(value, list) and all(isinstance(v, dict) and "verdict" in v for v in value):
        # `nestdsl probe` layers: the verdict and the needle / haystack movement of each.
        text = "; ".join(f"{v['verdict']} {v['needle']:.2f}/{v['haystack']:.2f}" for v in value)
    elif value is None:
        text = "—"
    else:
        text = str(value)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def flatten(record: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts become dotted columns; lists of records are left to `cell`."""
    flat: dict[str, object] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def table(records: Iterable[dict]) -> list[str]:
    rows = [flatten(r) for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    # A run's overrides are what tells it apart from its neighbours: never cut.
    limits = {c: 10_000 if c == "overrides" else MAX_CELL for c in columns}
    lines += [
        "| " + " | ".join(cell(row.get(c), limits[c]) for c in columns) + " |" for row in rows
    ]
    return lines


def key_values(data: dict) -> list[str]:
    flat = {k: v for k, v in flatten(data).items() if k.split(".")[0] not in DESCRIPTION_KEYS}
    if not flat:
        return []
    lines = ["| field | value |", "|---|---|"]
    return lines + [f"| {cell(k)} | {cell(v)} |" for k, v in flat.items()]


def describe(data: object) -> list[str]:
    if not isinstance(data, dict):
        return []
    lines = []
    for key in DESCRIPTION_KEYS:
        value = data.get(key)
        if isinstance(value, str):
            lines.append(f"*{key}:* {' '.join(value.split())}")
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            lines.append(f"*{key}:* " + "; ".join(f"`{v}`" for v in value))
        elif isinstance(value, dict):
            lines.append(f"*{key}:* " + ", ".join(f"{k} {cell(v)}" for k, v in value.items()))
    return [line + "  " for line in lines[:-1]] + lines[-1:]


def render_json(path: Path) -> tuple[str, list[str]]:
    data = json.loads(path.read_text())
    relative = path.relative_to(ROOT).as_posix()
    lines = [f"### {relative}", ""]
    described = describe(data)
    if described:
        lines += described + [""]
    records = _records(data)
    if records is not None:
        lines += table(records)
        rest = (
            {k: v for k, v in data.items() if k not in RECORD_KEYS}
            if isinstance(data, dict)
            else {}
        )
        rest = {k: v for k, v in rest.items() if isinstance(v, dict) and k not in DESCRIPTION_KEYS}
        if rest:
            lines += [""] + key_values(rest)
    elif isinstance(data, dict) and isinstance(data.get("runs"), dict):
        for name, run in data["runs"].items():
            lines += (
                [f"**{name}**", ""] + describe(run) + [""] + table(_records(run) or [run]) + [""]
            )
        lines = lines[:-1]
    elif isinstance(data, dict):
        named_rows = {k: v for k, v in data.items() if _is_named_rows(v)}
        lines += key_values({k: v for k, v in data.items() if k not in named_rows})
        for key, rows in named_rows.items():
            lines += ["", f"*{key}:*", ""] + table({key: name, **row} for name, row in rows.items())
    return kind_of(path, data), lines + [""]


def _is_named_rows(value: object) -> bool:
    """{name: {field: value}} with two or more rows: a table, one row per name."""
    return (
        isinstance(value, dict)
        and len(value) >= 2
        and all(isinstance(row, dict) for row in value.values())
    )


def render_single_runs(paths: list[Path]) -> list[str]:
    """A folder of one-run result files (a map of settings): one table, a row per file."""
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        rows.append({"file": path.name, **_records(data)[0]})
    folder = paths[0].parent.relative_to(ROOT).as_posix()
    return [f"### {folder}/ ({len(paths)} runs, one file each)", "", *table(rows), ""]


def _single_run(path: Path) -> bool:
    data = json.loads(path.read_text())
    records = _records(data)
    return (
        path.parent != RESULTS
        and records is not None
        and len(records) == 1
        and not (
            isinstance(data, dict) and any(isinstance(data.get(k), str) for k in DESCRIPTION_KEYS)
        )
    )


def render_jsonl(path: Path) -> tuple[str, list[str]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    relative = path.relative_to(ROOT).as_posix()
    return kind_of(path, records), [f"### {relative}", "", *table(records), ""]


def render_other(paths: list[Path]) -> list[str]:
    """Figures, hand-written result notes and spec variants: linked, not rendered."""
    lines = []
    figures = [p for p in paths if p.suffix == ".png"]
    notes = [p for p in paths if p.suffix == ".md"]
    specs: dict[str, int] = {}
    for p in paths:
        if p.suffix in (".yaml", ".nest"):
            folder = p.parent.relative_to(ROOT).as_posix()
            specs[folder] = specs.get(folder, 0) + 1
    if figures:
        lines += ["## Figures", ""]
        for p in figures:
            lines += [f"![{p.stem}](../{p.relative_to(ROOT).as_posix()})", ""]
    if notes:
        lines += ["## Result notes", ""]
        lines += [
            f"- [{p.relative_to(ROOT).as_posix()}](../{p.relative_to(ROOT).as_posix()})"
            for p in notes
        ]
        lines += [""]
    if specs:
        lines += ["## Spec variants the runs above name", ""]
        lines += [f"- `{folder}/`: {n} specs" for folder, n in specs.items()] + [""]
    return lines


def render_reproduce() -> list[str]:
    """The suites' records are tabulated, with the paper's figures and verdicts, by
    `nestdsl reproduce --report` in reproduction.md: here, where they are."""
    lines = []
    for folder in sorted(p for p in REPRODUCE.iterdir() if p.is_dir()) if REPRODUCE.is_dir() else []:
        runs = [p for p in folder.glob("*.json") if p.name != "suite.json"]
        lines.append(f"- `{folder.relative_to(ROOT).as_posix()}/`: {len(runs)} runs and `suite.json` "
                     "(tables, the paper's figures and a verdict per claim: "
                     "[reproduction.md](reproduction.md))")
    return lines + [""] if lines else []


def page() -> str:
    paths = sorted(p for p in RESULTS.rglob("*") if p.is_file() and REPRODUCE not in p.parents)
    sections: dict[str, list[str]] = {kind: [] for kind in SECTIONS}
    sections["reproduce"] = render_reproduce()
    singles: dict[Path, list[Path]] = {}
    for path in paths:
        if path.suffix == ".json" and _single_run(path):
            singles.setdefault(path.parent, []).append(path)
    for group in singles.values():
        sections[kind_of(group[0], json.loads(group[0].read_text()))] += render_single_runs(group)
    grouped = {p for group in singles.values() for p in group}
    for path in paths:
        if path in grouped:
            continue
        if path.suffix == ".json":
            kind, lines = render_json(path)
        elif path.suffix == ".jsonl":
            kind, lines = render_jsonl(path)
        else:
            continue
        sections[kind] += lines
    count = sum(p.suffix in (".json", ".jsonl") for p in RESULTS.rglob("*") if p.is_file())
    lines = [
        "# Results: every recorded run",
        "",
        "<!-- generated by benchmarks/report.py from benchmarks/results/; do not edit by hand -->",
        "",
        f"Every measurement in `benchmarks/results/` ({count} result files), one table per file,",
        "generated by `python benchmarks/report.py`. What the runs answered, and what is still open,",
        "is told in [lab-notes.md](lab-notes.md) and [hope-dynamics.md](hope-dynamics.md). Runs are on",
        "the 2-core CPU machine unless a file says otherwise; seconds and tokens/s are wall time.",
        "",
    ]
    lines += [
        f"- [{title}](#{_anchor(title)})" for kind, title in SECTIONS.items() if sections[kind]
    ]
    lines += [""]
    for kind, title in SECTIONS.items():
        if sections[kind]:
            lines += [f"## {title}", ""] + sections[kind]
    lines += render_other(paths)
    return "\n".join(lines).rstrip() + "\n"


def _anchor(title: str) -> str:
    kept = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/results.md is stale")
    args = parser.parse_args(argv)
    text = page()
    if args.check:
        if PAGE.exists() and PAGE.read_text() == text:
            return 0
        print(
            f"{PAGE.relative_to(ROOT)} is stale: run python benchmarks/report.py", file=sys.stderr
        )
        return 1
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
