"""Evaluation of a trained checkpoint: NIAH accuracy vs length, text loss / perplexity / bpb,
and recall accuracy on the spec's own task."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from nestdsl.spec import ir


@torch.no_grad()
def _mean_loss_and_acc(model: torch.nn.Module, task: Any, batches: int, device: str, split: str) -> tuple[float, float]:
    losses, accs = [], []
    for i in range(batches):
        b = task.batch(i, split=split)
        tokens, targets, mask = (t.to(device) for t in (b.tokens, b.targets, b.loss_mask))
        logits = model(tokens)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        m = mask.flatten().float()
        losses.append(float((nll * m).sum() / m.sum().clamp_min(1)))
        accs.append(float(task.accuracy(logits, targets, mask)))
    return sum(losses) / len(losses), sum(accs) / len(accs)


def load_model(spec: ir.Spec, spec_text: str, ckpt: Path, device: str) -> torch.nn.Module:
    import nestdsl
    from nestdsl.runtime import checkpoint as ck

    system = nestdsl.compile(spec, device=device, compile=False)
    path = ck.find_latest(ckpt) if (ckpt / "latest").exists() or not (ckpt / "meta.json").exists() else ckpt
    if path is None:
        raise ck.CheckpointError(f"{ckpt}: no complete checkpoint found")
    ck.load_checkpoint(path, model=system.model, spec_text=spec_text, device=device)
    system.model.eval()
    return system.model


def evaluate(
    spec: ir.Spec,
    *,
    spec_text: str,
    ckpt: Path,
    task: str = "spec",
    lengths: list[int] | None = None,
    variants: list[int] | None = None,
    text_path: Path | None = None,
    batches: int = 4,
    device: str = "cpu",
    out_png: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run one evaluation and print a table; returns the numbers (for tests and scripts)."""
    from nestdsl.runtime.tasks import DataError, make_task, niah

    console = console or Console()
    model = load_model(spec, spec_text, ckpt, device)
    data = spec.data or ir.MQARData(task="mqar")

    if task == "niah":
        lengths = lengths or [256, 512, 1024, 2048]
        variants = variants or [1, 2, 3]
        grid: dict[str, dict[int, float]] = {}
        table = Table(title=f"S-NIAH accuracy · {spec.name}")
        table.add_column("variant")
        for n in lengths:
            table.add_column(str(n), justify="right")
        for v in variants:
            row: dict[int, float] = {}
            for n in lengths:
                if n < niah.min_seq_len(v):
                    raise DataError(f"length {n} is shorter than the minimum {niah.min_seq_len(v)} for S-NIAH-{v}")
                t = niah.NIAHTask(seq_len=n, batch=data.batch, seed=data.seed + 1, variant=v)
                _, acc = _mean_loss_and_acc(model, t, batches, device, "val")
                row[n] = acc
            grid[f"S-NIAH-{v}"] = row
            table.add_row(f"S-NIAH-{v}", *[f"{100 * row[n]:.1f}%" for n in lengths])
        console.print(table)
        from nestdsl.runtime.plot import plot_heatmap

        png = out_png or ckpt / "niah.png"
        plot_heatmap(grid, png, title=f"S-NIAH accuracy · {spec.name}", xlabel="sequence length", ylabel="task")
        console.print(f"wrote {png}")
        return {"niah": grid, "png": str(png)}

    if task == "text":
        path = text_path or (Path(data.path) if isinstance(data, ir.TextData) else None)
        if path is None:
            raise DataError("--task text needs --path FILE (the spec's data section is not a text task)")
        tspec = ir.TextData(task="text", path=str(path), seq_len=data.seq_len, batch=data.batch, seed=data.seed)
        t = make_task(tspec)
        loss, _ = _mean_loss_and_acc(model, t, batches, device, "val")
        bpt = getattr(t, "bytes_per_token", 1.0)
        result = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": loss / math.log(2) / bpt}
        table = Table(title=f"text · {spec.name} · {path}")
        for k in result:
            table.add_column(k, justify="right")
        table.add_row(*[f"{v:.4f}" for v in result.values()])
        console.print(table)
        return result

    if task in ("spec", "mqar", "copy"):
        dspec = data
        if task == "mqar" and not isinstance(data, ir.MQARData):
            dspec = ir.MQARData(task="mqar", seq_len=data.seq_len, batch=data.batch)
        if task == "copy" and not isinstance(data, ir.CopyData):
            dspec = ir.CopyData(task="copy", seq_len=data.seq_len, batch=data.batch)
        t = make_task(dspec)
        loss, acc = _mean_loss_and_acc(model, t, batches, device, "val")
        result = {"loss": loss, "accuracy": acc}
        table = Table(title=f"{dspec.task} · {spec.name}")
        table.add_column("loss", justify="right")
        table.add_column("accuracy", justify="right")
        table.add_row(f"{loss:.4f}", f"{100 * acc:.1f}%")
        console.print(table)
        return result

    raise DataError(f"unknown --task {task!r}; choose niah, text, mqar, copy or spec")
