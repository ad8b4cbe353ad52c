"""One run of a suite: train a row's spec at one seed, then score it the way its kind says.

A job is plain data (`Job`), so the runner can hand it to a fresh process
(`python -m nestdsl.reproduce.job '<json>'`, one thread each) and store what comes back as one
JSON record per run. Scores are measured on held-out batches (the tasks' `val` split):

* lm: validation bits per byte (byte tokens: loss / ln 2) and perplexity per byte (2^bpb);
* niah: answer accuracy at each evaluation length (the training length times 1, 2, 4, 8): a
  recurrent memory runs at any length, so this asks whether what it learned at one length holds
  at longer ones;
* continual: after each task's segment, the answer accuracy (or, for text, bits per byte) on
  every task, the rows of a forgetting matrix.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Job", "run_job"]


@dataclass(frozen=True)
class Job:
    suite: str
    kind: str
    row: str
    spec: str                      # the spec file
    seed: int
    steps: int
    overrides: list[str] = field(default_factory=list)
    variant: int | None = None     # niah: the S-NIAH variant
    lengths: list[int] = field(default_factory=list)
    eval_batches: int = 8
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)   # kind-specific (optim: problem, noise, lr)

    @property
    def id(self) -> str:
        """The run's file name stem: row, variant, seed (stable, filesystem-safe)."""
        slug = "-".join("".join(c if c.isalnum() else " " for c in self.row.lower()).split())
        variant = f"-niah{self.variant}" if self.variant is not None else ""
        return f"{slug}{variant}-s{self.seed}"


def _spec(job: Job, extra: list[str]) -> Any:
    from nestdsl.pipeline import load_spec

    log_every = max(1, job.steps // 20)
    return load_spec(job.spec, overrides=[*job.overrides, *extra, f"train.seed={job.seed}",
                                          "train.compile=false", f"train.log_every={log_every}"])


def _model(spec: Any, run_dir: Path, device: str) -> Any:
    from nestdsl.runtime.evaluate import load_model

    return load_model(spec, run_dir, device)


def _score(model: Any, task: Any, job: Job) -> dict[str, float]:
    from nestdsl.runtime.evaluate import _mean_loss_and_acc

    text = task.name == "text"
    loss, exact, answer = _mean_loss_and_acc(model, task, job.eval_batches, job.device, "val",
                                             accuracy=not text)
    if text:
        bpb = loss / math.log(2)
        return {"loss": loss, "bits_per_byte": bpb, "perplexity": 2.0 ** bpb}
    return {"loss": loss, "answer_acc": answer, "exact_match": exact}


def _train(spec: Any, run_dir: Path, job: Job, *, steps: int, resume: bool) -> dict[str, Any]:
    from nestdsl.runtime.train import TrainingDiverged, train

    t0 = time.perf_counter()
    try:
        res = train(spec, spec_text=spec.model_dump_json(), run_dir=run_dir, steps=steps,
                    device=job.device, resume=resume)
    except TrainingDiverged as e:
        return {"diverged": str(e), "seconds": time.perf_counter() - t0}
    curve = [{"step": int(r["step"]), "loss": float(r["loss"])} for r in res.history if "loss" in r]
    return {"final_loss": res.final_loss, "tokens_per_s": res.tokens_per_s,
            "seconds": time.perf_counter() - t0, "curve": curve}


def _params(spec: Any) -> int:
    import nestdsl

    return int(nestdsl.compile(spec, compile=False).param_count)


def run_job(job: Job) -> dict[str, Any]:
    """Train and score one job in this process; the record the runner stores."""
    import torch

    torch.set_num_threads(1)
    rec: dict[str, Any] = {"job": asdict(job), "id": job.id, "row": job.row, "seed": job.seed,
                           "variant": job.variant, "steps": job.steps}
    if job.kind == "optim":
        from nestdsl.reproduce.optim import run_optim

        rec.update(run_optim(job.spec, job.options, job.steps, job.seed))
        return rec
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        if job.kind == "continual":
            rec.update(_continual(job, run_dir))
            return rec
        data = []
        if job.kind == "niah":
            data = [f"data.variant={job.variant}"]
        spec = _spec(job, [*data, f"train.ckpt_every={job.steps}"])
        rec["params"] = _params(spec)
        rec.update(_train(spec, run_dir, job, steps=job.steps, resume=False))
        if "diverged" in rec:
            return rec
        model = _model(spec, run_dir, job.device)
        if job.kind == "lm":
            rec.update(_score(model, _task(spec, spec.data, run_dir), job))
        elif job.kind == "niah":
            rec["at_length"] = {}
            for m in job.lengths:
                longer = spec.data.model_copy(update={"seq_len": spec.data.seq_len * m})
                score = _score(model, _task(spec, longer, run_dir), job)
                rec["at_length"][str(m)] = score["answer_acc"]
            rec["answer_acc"] = rec["at_length"][str(job.lengths[0])]
        else:
            raise ValueError(f"unknown suite kind '{job.kind}'")
    return rec


def _task(spec: Any, data: Any, run_dir: Path) -> Any:
    from nestdsl.runtime.train import _make_task

    return _make_task(data, spec, run_dir)


def _pretrained(job: Job, run_dir: Path) -> list[str]:
    """Pre-train the row's starting point (same seed) and point `train.init_from` at it."""
    pre = job.options.get("pretrain")
    if not pre:
        return []
    from dataclasses import replace

    steps = int(pre["steps"])
    pre_job = replace(job, spec=pre["spec"], overrides=pre["overrides"], steps=steps, options={})
    spec = _spec(pre_job, [f"train.ckpt_every={steps}"])
    folder = run_dir.parent / "pretrained"
    done = _train(spec, folder, pre_job, steps=steps, resume=False)
    if "diverged" in done:
        raise RuntimeError(f"the pre-training diverged: {done['diverged']}")
    return [f"train.init_from={{checkpoint: {folder}}}"]


def _continual(job: Job, run_dir: Path) -> dict[str, Any]:
    """Train segment by segment (one per task, resuming exactly between them) and score every
    task after each: `matrix[i][j]` = task j's score after training on tasks 0..i."""
    n = len(_spec(job, []).data.tasks)
    switch = max(1, job.steps // n)          # the budget split evenly (--scale scales it)
    start = _pretrained(job, run_dir)
    spec = _spec(job, [*start, f"data.switch_every={switch}", f"train.ckpt_every={switch}"])
    data = spec.data
    out: dict[str, Any] = {"params": _params(spec), "tasks": [t.task for t in data.tasks],
                           "matrix": [], "curve": [], "seconds": 0.0}
    metric = "bits_per_byte" if any(t.task == "text" for t in data.tasks) else "answer_acc"
    out["metric"] = metric
    for i in range(n):
        seg = _train(spec, run_dir, job, steps=switch * (i + 1), resume=i > 0)
        out["seconds"] += seg["seconds"]
        if "diverged" in seg:
            out["diverged"] = seg["diverged"]
            return out
        out["curve"] += seg["curve"]
        out["final_loss"] = seg["final_loss"]
        model = _model(spec, run_dir, job.device)
        tasks = _task(spec, data, run_dir).tasks
        out["matrix"].append([_score(model, t, job)[metric] for t in tasks])
    out.update(_forgetting(out["matrix"], lower_is_better=metric == "bits_per_byte"))
    return out


def _forgetting(matrix: list[list[float]], *, lower_is_better: bool) -> dict[str, float]:
    """Average forgetting (how much worse each earlier task ends than its best score, Chaudhry
    et al. 2018) and the final average score over all tasks."""
    n = len(matrix)
    sign = -1.0 if lower_is_better else 1.0
    drops = [max(sign * matrix[i][j] for i in range(j, n)) - sign * matrix[-1][j]
             for j in range(n - 1)]
    return {"forgetting": sum(drops) / len(drops) if drops else 0.0,
            "final_avg": sum(matrix[-1]) / n}


def main(argv: list[str]) -> None:
    job = Job(**json.loads(argv[0]))
    print(json.dumps(run_job(job)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
