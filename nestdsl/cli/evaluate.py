"""`nestdsl eval`: evaluate a checkpoint (NIAH table and heatmap, or text loss)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app, out
from nestdsl.cli.errors import UserError, guard
from nestdsl.cli.runtime_options import ForceOpt, ThreadsOpt, _check_device, _run_spec, _set_threads


@app.command("eval")
def eval_(
    ckpt: Annotated[Path, typer.Option(help="checkpoint folder or run folder (uses its latest)")],
    spec: Annotated[Path | None, typer.Argument(
        help="spec file (default: the spec the checkpoint stores)")] = None,
    task: Annotated[str, typer.Option(help="niah | text | mqar | copy | spec (the spec's own data)")] = "spec",
    lengths: Annotated[str | None, typer.Option(
        help="comma-separated sequence lengths (niah; default: the training length, 2x, 4x, 8x)")] = None,
    variants: Annotated[str, typer.Option(help="niah variants, e.g. 1,2,3")] = "1,2,3",
    path: Annotated[Path | None, typer.Option(help="text file/folder for --task text")] = None,
    batches: Annotated[int, typer.Option(help="evaluation batches per cell")] = 4,
    device: Annotated[str, typer.Option()] = "cpu",
    out_png: Annotated[Path | None, typer.Option("--png", help="heatmap output (niah)")] = None,
    per_document: Annotated[Path | None, typer.Option(
        "--per-document", metavar="OUT.jsonl",
        help="text: score each document of --path in one full pass (each record's \"text\" "
             "of a .jsonl file, each .txt file of a folder, else each non-empty line), in the "
             "run's tokenizer after one prefix token (as `lm_eval --model nestdsl`), and "
             "write one JSON line per document: loglikelihood (summed, nats), tokens, bytes")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a spec field: key.path=value (without a spec file: on top of the stored spec)")] = None,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    traceback: TracebackOpt = False,
) -> None:
    """Evaluate a checkpoint: NIAH accuracy table + heatmap, or text loss / perplexity / bpb
    (random windows; with --per-document, each document's log-likelihood in one pass)."""
    with guard(traceback):
        spec_obj = _run_spec(spec, list(set_ or []), ckpt, what="eval").spec
        _check_device(device)
        _set_threads(device, threads)
        from nestdsl.runtime.evaluate import evaluate

        lens = _int_list(lengths, "--lengths") if lengths else None
        evaluate(
            spec_obj, ckpt=ckpt, task=task, lengths=lens, force=force,
            variants=_int_list(variants, "--variants"), text_path=path, batches=batches,
            device=device, out_png=out_png, console=out, per_document=per_document,
        )


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option} expects comma-separated integers, got {text!r}") from None
    if not values:
        raise UserError(f"{option} is empty")
    return values
