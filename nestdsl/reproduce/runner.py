"""Run a suite: every (row, variant, seed) job in its own process, at most `jobs` at a time, one
thread each; each finished run is one JSON file, so an interrupted suite resumes where it stopped
(a run whose file exists is not run again).

    results/<suite>/suite.json     the suite as run (rows, claims, the paper's figures, budget)
    results/<suite>/<run id>.json  one record per run (nestdsl/reproduce/job.py)

The report (`report.py`) reads these files alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nestdsl.reproduce.job import Job
from nestdsl.reproduce.suite import Suite

__all__ = ["plan", "run_suite"]


def plan(suite: Suite, *, scale: float = 1.0, device: str = "cpu",
         rows: list[str] | None = None, seeds: list[int] | None = None) -> list[Job]:
    """The suite's jobs at `scale` x its step budget (rows and seeds optionally restricted)."""
    steps = max(1, round(suite.steps * scale))
    data = suite.data_override()
    jobs = []
    for row in suite.rows:
        if rows and row.name not in rows:
            continue
        overrides = [*([data] if data else []), *suite.set, *row.set]
        for variant in (suite.variants if suite.kind == "niah" else [None]):
            for seed in seeds if seeds is not None else suite.seeds:
                jobs.append(Job(suite=suite.suite, kind=suite.kind, row=row.name,
                                spec=suite.spec_path(row), seed=seed, steps=steps,
                                overrides=overrides, variant=variant, lengths=suite.lengths,
                                eval_batches=suite.eval_batches, device=device,
                                options=_options(suite, row, scale)))
    return jobs


def _options(suite: Suite, row: Any, scale: float) -> dict[str, Any]:
    """What a kind's job needs beyond the common fields (a row's pre-training, at `scale`;
    optim: the problem, noise, lr grid)."""
    if suite.kind != "optim":
        pre = suite.pretrain_of(row)
        return {"pretrain": {**pre, "steps": max(1, round(pre["steps"] * scale))}} if pre else {}
    return {"problem": suite.problem, "noise": suite.noise, "reference_noise": suite.reference_noise,
            "lr": row.lr}


def _run_in_process(job: Job) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "nestdsl.reproduce.job", json.dumps(asdict(job))]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"id": job.id, "row": job.row, "seed": job.seed, "variant": job.variant,
                "job": asdict(job), "error": (p.stderr or p.stdout)[-3000:]}
    rec: dict[str, Any] = json.loads(lines[-1])
    return rec


def run_suite(suite: Suite, out: Path, *, jobs: int = 2, scale: float = 1.0, device: str = "cpu",
              rows: list[str] | None = None, seeds: list[int] | None = None,
              say: Callable[[str], None] = print,
              runner: Callable[[Job], dict[str, Any]] = _run_in_process) -> list[dict[str, Any]]:
    """Run the suite's missing jobs into `out/<suite>/` and return every record there."""
    folder = out / suite.suite
    folder.mkdir(parents=True, exist_ok=True)
    todo = plan(suite, scale=scale, device=device, rows=rows, seeds=seeds)
    meta = {**suite.model_dump(mode="json"), "scale": scale, "device": device,
            "steps_run": todo[0].steps if todo else suite.steps,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version()}}
    _write_atomic(folder / "suite.json", json.dumps(meta, indent=2) + "\n")
    missing = [j for j in todo if not _done(folder / f"{j.id}.json", j)]
    say(f"{suite.suite}: {len(todo)} runs, {len(todo) - len(missing)} already done, "
        f"{len(missing)} to run ({jobs} at a time)")

    def one(job: Job) -> None:
        t0 = time.perf_counter()
        rec = runner(job)
        rec["wall_s"] = time.perf_counter() - t0
        if "error" in rec:               # not stored: a crashed run is re-run next time
            say(f"  {job.id}: FAILED\n{rec['error']}")
            return
        _write_atomic(folder / f"{job.id}.json", json.dumps(rec, indent=1) + "\n")
        say(f"  {job.id}: done in {rec['wall_s']:.0f} s")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, missing))
    return load_records(folder)


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename: a kill, or a report reading meanwhile, never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _done(path: Path, job: Job) -> bool:
    """A stored record of exactly this job (same spec, overrides, budget, scoring): a record of
    the same row at another `--scale` is run again and replaced."""
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text()).get("job", {})
    except (OSError, json.JSONDecodeError):
        return False
    planned = asdict(job)
    empty = asdict(Job(suite="", kind="", row="", spec="", seed=0, steps=0))   # the field defaults
    return all(stored.get(k, empty[k]) == v for k, v in planned.items() if k != "device")


def load_records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name != "suite.json"]
