"""Re-run the hostile-input list a new user hit: every case is a real `nestdsl` process.

    python benchmarks/hostile_inputs.py [--out benchmarks/results/hostile-inputs-cpu-DATE.json]

Each case sets up a scratch folder, runs one command and is scored on three counts:
  * internal error — exit 1 with "internal error" (a user's mistake must be exit 2, one line);
  * traceback — "Traceback" anywhere in the output;
  * silent — the output lacks the sentence that says what happened (`says`).
Prints one JSON object: per case its exit code, the first `error:`/`warning:` line and the
verdict, and the totals. Exit 1 when any case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
NESTDSL = [sys.executable, "-m", "nestdsl"]

# The smallest trainable spec, with its optimizer named (the shipped AdamW spec).
TINY = (ROOT / "examples" / "new_spec" / "tiny-delta.yaml").read_text().replace(
    "optimizer: {type: adamw, lr: 0.003}", "optimizer: adamw")


@dataclass
class Case:
    name: str
    argv: list[str]
    exit: tuple[int, ...] = (2,)
    says: str = "error:"  # what the output must contain: the case is not silent
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    interrupt_after_s: float | None = None  # send SIGINT this long after the start


def _tiny(folder: Path, text: str = TINY, name: str = "tiny.yaml") -> None:
    (folder / name).write_text(text)


def _trained(folder: Path) -> None:
    _tiny(folder)
    subprocess.run([*NESTDSL, "train", "tiny.yaml", "--out", "run", "-q"], cwd=folder, check=True,
                   capture_output=True)


def _garble(folder: Path, every: bool = False) -> None:
    _trained(folder)
    latest = folder / "run" / (folder / "run" / "latest").read_text().strip()
    for step in folder.glob("run/step_*") if every else [latest]:
        for f in step.glob("*.safetensors"):
            f.write_bytes(b"\x00garbage" * 10)


def _no_meta(folder: Path) -> None:
    _trained(folder)
    latest = folder / "run" / (folder / "run" / "latest").read_text().strip()
    (latest / "meta.json").unlink()


def _damaged_metrics(folder: Path) -> None:
    _trained(folder)
    (folder / "run" / "metrics.jsonl").write_text('{"step": 2, "loss": 5.\n\x00\x00')


def _empty_metrics(folder: Path) -> None:
    (folder / "run").mkdir()
    (folder / "run" / "metrics.jsonl").write_text("")


def _commented(folder: Path) -> None:
    _trained(folder)
    _tiny(folder, "# a comment added after training\n" + TINY)


def _changed(folder: Path) -> None:
    _trained(folder)
    _tiny(folder, TINY.replace("width: 32", "width: 48"))


def _copied_preset(folder: Path) -> None:
    shutil.copy(SPECS / "titans-lmm.yaml", folder / "mine.yaml")


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        data = content.encode() if isinstance(content, str) else content
        (folder / name).write_bytes(data)

    return setup


def _long_run(folder: Path) -> None:
    _tiny(folder, TINY.replace("steps: 4", "steps: 100000").replace("ckpt_every: 2", "ckpt_every: 5"))


CASES = [
    # The spec front end
    Case("missing file", ["check", "nope.yaml"]),
    Case("folder as spec file", ["train", ".", "--steps", "1"]),
    Case("empty spec", ["check", "e.yaml"], setup=_write("e.yaml", "")),
    Case("binary spec", ["check", "b.yaml"], setup=_write("b.yaml", b"\x89PNG\r\n\x1a\n\x00\xff")),
    Case("bad YAML", ["check", "y.yaml"], setup=_write("y.yaml", "model: {width: 3\n")),
    Case("unknown field", ["check", "tiny.yaml"],
         setup=lambda f: _tiny(f, TINY.replace("width: 32", "widht: 32"))),
    Case("bad --set", ["check", "tiny.yaml", "--set", "model.width"], setup=_tiny),
    Case("--set on a named optimizer", ["check", "tiny.yaml", "--set", "optimizer.lr=0.01"],
         exit=(0,), says="1 spec valid", setup=_tiny),
    Case("copied preset, optimizer by name", ["check", "mine.yaml"], exit=(0,), says="valid",
         setup=_copied_preset),
    Case("inline level", ["check", "tiny.yaml"], exit=(0,), says="valid", setup=lambda f: _tiny(
        f, TINY.replace("level: token}", "level: {every: 4 tokens}}"))),
    Case("fmt -o over its input", ["fmt", "tiny.yaml", "-o", "tiny.yaml"], setup=_tiny),
    # Sizes
    # A big model is a valid spec (check does not build it); compile and train refuse it before
    # allocating, above NESTDSL_MEMORY_LIMIT_GB.
    Case("width 1e9 at check", ["check", "tiny.yaml"], exit=(0,), says="valid",
         setup=lambda f: _tiny(f, TINY.replace("width: 32", "width: 1000000000"))),
    Case("width 1e9 at compile", ["compile", "tiny.yaml"],
         setup=lambda f: _tiny(f, TINY.replace("width: 32", "width: 1000000000"))),
    Case("depth 100000", ["train", "tiny.yaml", "--steps", "1"],
         setup=lambda f: _tiny(f, TINY.replace("depth: 1", "depth: 100000"))),
    Case("batch 1e8", ["train", "tiny.yaml", "--steps", "1"],
         setup=lambda f: _tiny(f, TINY.replace("batch: 2", "batch: 100000000"))),
    Case("bad memory limit", ["train", "tiny.yaml", "--steps", "1"], setup=_tiny,
         env={"NESTDSL_MEMORY_LIMIT_GB": "lots"}),
    Case("graph --seq-len 1e9", ["graph", "tiny.yaml", "--seq-len", "1000000000"], exit=(0,),
         says="level", setup=_tiny),
    # Flags
    Case("--steps 0", ["train", "tiny.yaml", "--steps", "0"], setup=_tiny),
    Case("--device cuda without a GPU", ["train", "tiny.yaml", "--device", "cuda"], setup=_tiny),
    Case("--threads 0", ["train", "tiny.yaml", "--threads", "0"], setup=_tiny),
    Case("--lengths abc", ["eval", "--ckpt", "run", "--task", "niah", "--lengths", "abc"],
         setup=_trained),
    Case("eval --task nope", ["eval", "--ckpt", "run", "--task", "nope"], setup=_trained),
    Case("generate --temperature -1", ["generate", "--ckpt", "run", "--prompt", "ab",
                                       "--temperature", "-1"], setup=_trained),
    Case("generate --max-tokens 0", ["generate", "--ckpt", "run", "--prompt", "ab",
                                     "--max-tokens", "0"], setup=_trained),
    # Checkpoints and runs
    Case("--ckpt at a file", ["eval", "--ckpt", "tiny.yaml"], setup=_tiny),
    Case("--ckpt missing", ["eval", "--ckpt", "nowhere"]),
    Case("garbled latest checkpoint", ["eval", "--ckpt", "run"], exit=(0,),
         says="newer step_000004 incomplete or damaged", setup=_garble),
    Case("every checkpoint garbled", ["eval", "--ckpt", "run"],
         setup=lambda f: _garble(f, every=True)),
    Case("plot of empty metrics", ["plot", "run"], setup=_empty_metrics),
    Case("resume an empty folder", ["train", "tiny.yaml", "--resume", "--out", "fresh", "--steps",
                                    "2"], exit=(0,), says="starting fresh", setup=_tiny),
    Case("resume past a step without meta.json", ["train", "tiny.yaml", "--resume", "--out", "run",
                                                  "--steps", "6"], exit=(0,), says="resuming from",
         setup=_no_meta),
    Case("resume rebuilds damaged metrics", ["train", "tiny.yaml", "--resume", "--out", "run",
                                             "--steps", "6"], exit=(0,), says="resuming from step 4",
         setup=_damaged_metrics),
    Case("eval names its step", ["eval", "--ckpt", "run"], exit=(0,), says="evaluating step_",
         setup=_trained),
    Case("eval after a comment was added", ["eval", "tiny.yaml", "--ckpt", "run"], exit=(0,),
         says="evaluating step_", setup=_commented),
    Case("eval with a changed spec", ["eval", "tiny.yaml", "--ckpt", "run"], says="model.width",
         setup=_changed),
    Case("Ctrl-C during training", ["train", "tiny.yaml", "--out", "long"], exit=(130,),
         says="interrupted", setup=_long_run, interrupt_after_s=12.0),
]


def run_case(case: Case, folder: Path) -> dict[str, object]:
    if case.setup is not None:
        case.setup(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100", **case.env}
    start = time.perf_counter()
    proc = subprocess.Popen([*NESTDSL, *case.argv], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if case.interrupt_after_s is not None:
        try:
            proc.wait(timeout=case.interrupt_after_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=600)
    first = next((line for line in output.splitlines()
                  if line.startswith(("error:", "warning:", "interrupted")) or " error: " in line), "")
    verdict = {
        "internal_error": "internal error" in output,
        "traceback": "Traceback" in output,
        "silent": case.says not in output,
        "wrong_exit": proc.returncode not in case.exit,
    }
    return {
        "case": case.name,
        "command": "nestdsl " + " ".join(case.argv),
        "exit": proc.returncode,
        "seconds": round(time.perf_counter() - start, 2),
        "says": first or next((line for line in output.splitlines() if case.says in line), ""),
        "ok": not any(verdict.values()),
        **{k: v for k, v in verdict.items() if v},
        **({"output": output[-2000:]} if any(verdict.values()) else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("-k", help="only the cases whose name contains this")
    args = parser.parse_args(argv)
    records = []
    for case in CASES:
        if args.k and args.k not in case.name:
            continue
        with tempfile.TemporaryDirectory(prefix="nestdsl-hostile-") as tmp:
            records.append(run_case(case, Path(tmp)))
        print(("ok   " if records[-1]["ok"] else "FAIL ") + case.name, file=sys.stderr)
    totals = {
        "cases": len(records),
        "failed": sum(not r["ok"] for r in records),
        "internal_errors": sum(bool(r.get("internal_error")) for r in records),
        "tracebacks": sum(bool(r.get("traceback")) for r in records),
        "silent": sum(bool(r.get("silent")) for r in records),
    }
    report = {"benchmark": "hostile_inputs", "totals": totals, "records": records}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
