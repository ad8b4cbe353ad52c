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

from nestdsl.runtime.tasks.base import DataError
from nestdsl.spec import ir


@torch.no_grad()
def _mean_loss_and_acc(
    model: torch.nn.Module, task: Any, batches: int, device: str, split: str, *, accuracy: bool = True,
) -> tuple[float, float, float]:
    """Token-weighted mean loss over the scored positions, mean per-sample exact match, and the
    answer-token accuracy (the accuracies are NaN with ``accuracy=False``)."""
    nll_sum, n_tok, accs = 0.0, 0.0, []
    right = 0.0
    vocab = getattr(model, "vocab", None)
    if vocab is not None and task.vocab_size > vocab:
        raise DataError(f"the {task.name} task uses {task.vocab_size} token ids but the model's vocab is {vocab}")
    for i in range(batches):
        b = task.batch(i, split=split)
        tokens, targets, mask = (t.to(device) for t in (b.tokens, b.targets, b.loss_mask))
        logits = model(tokens)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none", ignore_index=-100)
        m = (mask.flatten() & (targets.flatten() != -100)).float()
        nll_sum += float((nll * m).sum())
        n_tok += float(m.sum())
        if accuracy:
            accs.append(float(task.accuracy(logits, targets, mask)))
            right += float(((logits.argmax(-1) == targets).flatten().float() * m).sum())
    loss = nll_sum / max(n_tok, 1.0)
    if not accs:
        return loss, math.nan, math.nan
    return loss, sum(accs) / len(accs), right / max(n_tok, 1.0)


def load_model(spec: ir.Spec, ckpt: Path, device: str, *, force: bool = False,
               console: Console | None = None) -> torch.nn.Module:
    """The spec's model with the weights of `ckpt` (a checkpoint folder, or a run folder: its
    latest complete checkpoint). The checkpoint's spec must mean the same (`spec.identity`;
    `force`: load anyway); `console` hears which checkpoint is used."""
    import nestdsl
    from nestdsl.runtime import checkpoint as ck
    from nestdsl.runtime.run_spec import checkpoint_folder
    from nestdsl.spec.identity import identity

    folder = checkpoint_folder(ckpt)
    system = nestdsl.compile(spec, device=device, compile=False)
    loaded = ck.load_checkpoint(folder, model=system.model, identity=identity(spec), force=force,
                                device=device)
    if console is not None:
        newer = [p.name for p in ck.step_folders(folder.parent)
                 if int(p.name.removeprefix("step_")) > loaded.step]
        skipped = f"; newer {', '.join(newer)} incomplete or damaged" if newer else ""
        console.print(f"evaluating {loaded.path.name} (step {loaded.step}) of {folder.parent}"
                      f"{skipped}", highlight=False)
    system.model.eval()
    return system.model


def _other_text_in_run_vocabulary(path: Path, data: ir.TextData, spec: ir.Spec, run: Path):
    """`--task text --path OTHER` for a BPE run: OTHER tokenised with the tokenizer the run
    trained on its own corpus (saved in the run folder; retrained from that corpus when gone),
    never a new one trained on OTHER, whose ids would mean other tokens to the model."""
    from nestdsl.runtime.tasks.text import TextTask, saved_tokenizer
    from nestdsl.runtime.train import _make_task

    tokenizer = saved_tokenizer(run, data.vocab_size) or _make_task(data, spec, run).tokenizer
    return TextTask(path, seq_len=data.seq_len, batch=data.batch, seed=data.seed,
                    tokenizer="bpe", vocab_size=data.vocab_size, trained_tokenizer=tokenizer)


def _text_with_tokenizer_file(path: Path, data: ir.TextData | ir.ShardsData, spec: ir.Spec,
                              run: Path) -> Any:
    """`--task text --path OTHER` for a run whose ids come from a tokenizer file (a text
    task's `tokenizer: PATH.json`, or the tokenizer a shard set was prepared with)."""
    from nestdsl.runtime.tasks.text import TextTask
    from nestdsl.runtime.train import _make_task

    tokenizer = data.tokenizer if isinstance(data, ir.TextData) else "bytes"
    if isinstance(data, ir.ShardsData):
        shards = _make_task(data, spec, run)
        rec = shards.shards.sidecar.tokenizer
        if rec.get("kind") != "bytes":
            tokenizer = str(shards.path / str(rec.get("file", "tokenizer.json")))
    return TextTask(path, seq_len=data.seq_len, batch=data.batch, seed=data.seed,
                    tokenizer=tokenizer)


def _run_folder(ckpt: Path) -> Path:
    return ckpt if (ckpt / "latest").exists() or not (ckpt / "meta.json").exists() else ckpt.parent


def read_documents(path: Path) -> list[tuple[str, str]]:
    """(where, text) per document of `path`: each record of a ``.jsonl`` file (its ``"text"``
    field, or the record itself when it is a string), each ``.txt`` file of a folder (sorted
    as `load_corpus` reads them), or each non-empty line of any other file (its line break
    dropped)."""
    import json

    from nestdsl.runtime.tasks.text import load_corpus

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path not found: {p}")
    docs: list[tuple[str, str]] = []
    if p.is_dir():
        load_corpus(p)                                     # its errors: empty, no .txt files
        for f in sorted(p.rglob("*")):
            if f.suffix.lower() == ".txt" and f.is_file() and not f.name.startswith("."):
                docs.append((str(f.relative_to(p)), f.read_bytes().decode("utf-8", "replace")))
        return docs
    text = load_corpus(p).decode("utf-8", errors="replace")
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if p.suffix.lower() == ".jsonl":
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: not a JSON record ({e.msg})") from None
            doc = rec if isinstance(rec, str) else rec.get("text") if isinstance(rec, dict) else None
            if not isinstance(doc, str):
                raise DataError(f'{p}:{n}: a record needs a "text" string field')
            docs.append((f"{p.name}:{n}", doc))
        elif line:
            docs.append((f"{p.name}:{n}", line))
    if not docs:
        raise DataError(f"no documents in {p}")
    return docs


def per_document_loglikelihoods(model: torch.nn.Module, spec: ir.Spec, ckpt: Path, path: Path,
                                device: str = "cpu") -> list[dict[str, Any]]:
    """Each document of `path` (`read_documents`) scored in one pass in the run's tokenizer,
    after the prefix token (the harness's convention, `runtime/harness.py`): its summed
    log-likelihood in nats, tokens and UTF-8 bytes."""
    from nestdsl.runtime.harness import prefix_token, run_codec, score_documents

    codec = run_codec(spec, _run_folder(ckpt))
    prefix = prefix_token(codec)
    docs = read_documents(path)
    ids = [codec.encode(text) for _, text in docs]
    scores = score_documents(model, ids, prefix, device=device)
    return [{"doc": i, "source": where, "tokens": len(t), "bytes": len(text.encode("utf-8")),
             "loglikelihood": ll, "greedy": greedy}
            for i, ((where, text), t, (ll, greedy)) in enumerate(zip(docs, ids, scores, strict=True))]


def evaluate(
    spec: ir.Spec,
    *,
    ckpt: Path,
    task: str = "spec",
    lengths: list[int] | None = None,
    variants: list[int] | None = None,
    text_path: Path | None = None,
    batches: int = 4,
    device: str = "cpu",
    out_png: Path | None = None,
    console: Console | None = None,
    force: bool = False,
    per_document: Path | None = None,
) -> dict[str, Any]:
    """Run one evaluation and print a table; returns the numbers (for tests and scripts).

    `per_document` (text only): score each document of `text_path` (default: the spec's
    corpus) in one full pass instead of random windows, write one JSON line per document to
    that file (`per_document_loglikelihoods`) and report the totals."""
    from nestdsl.runtime.tasks import make_task, niah
    from nestdsl.runtime.train import _make_task, default_data

    console = console or Console()
    if task not in ("niah", "text", "spec", "mqar", "copy"):
        raise DataError(f"unknown --task {task!r}; choose niah, text, mqar, copy or spec")
    if batches < 1:
        raise DataError(f"--batches must be >= 1, got {batches}")
    data = default_data(spec)
    if isinstance(data, ir.ContinualData):
        data = data.tasks[0]
    if task == "spec" and isinstance(data, ir.TextData | ir.ShardsData):
        task = "text"            # token shards are text too: loss, perplexity, bits per byte
    if per_document is not None and task != "text":
        raise DataError(f"--per-document scores text documents; it needs --task text, not {task}")
    model = load_model(spec, ckpt, device, force=force, console=console)

    if task == "niah":
        # the training length first (how well it learned), then 2x, 4x, 8x (how far it extrapolates)
        lengths = lengths or [data.seq_len * 2**i for i in range(4)]
        variants = variants or [1, 2, 3]
        grid: dict[str, dict[int, float]] = {}
        table = Table(title=f"S-NIAH accuracy · {spec.name}")
        table.add_column("variant")
        for n in lengths:
            table.add_column(str(n), justify="right")
        skipped: list[str] = []
        from nestdsl.runtime.progress import counter

        min_len = {v: niah.min_seq_len(v) for v in variants}  # also validates the variants
        cells = sum(n >= min_len[v] for v in variants for n in lengths)
        # a cell at 8x the training length takes a while: count them on a terminal
        with counter(console, cells, "S-NIAH cells") as progress:
            for v in variants:
                lo = min_len[v]
                row: dict[int, float] = {}
                for n in lengths:
                    if n < lo:  # too short for this needle: a blank cell, not an error
                        skipped.append(f"S-NIAH-{v} needs length >= {lo}")
                        continue
                    progress.working_on(f"S-NIAH-{v} at length {n}")
                    # (`t` holds each --task's own task class)
                    t: Any = niah.NIAHTask(seq_len=n, batch=data.batch, seed=data.seed + 1, variant=v)
                    _, acc, _ = _mean_loss_and_acc(model, t, batches, device, "val")
                    row[n] = acc
                    progress.advance()
                grid[f"S-NIAH-{v}"] = row
                table.add_row(f"S-NIAH-{v}", *[f"{100 * row[n]:.1f}%" if n in row else "—" for n in lengths])
        if not any(grid.values()):
            raise DataError(f"every length in {lengths} is too short for the chosen S-NIAH variants "
                            f"(minimum {min(niah.min_seq_len(v) for v in variants)})")
        console.print(table)
        for note in dict.fromkeys(skipped):
            console.print(f"[dim]— {note}[/dim]")
        from nestdsl.runtime.plot import plot_heatmap

        png = out_png or ckpt / "niah.png"
        plot_heatmap(grid, png, title=f"S-NIAH accuracy · {spec.name}", xlabel="sequence length", ylabel="task")
        console.print(f"wrote {png}")
        return {"niah": grid, "png": str(png)}

    if task == "text":
        path = text_path or (Path(data.path) if isinstance(data, ir.TextData | ir.ShardsData) else None)
        if path is None:
            raise DataError("--task text needs --path FILE (the spec's data section is not a text task)")
        if per_document is not None:
            if isinstance(data, ir.ShardsData) and text_path is None:
                raise DataError("--per-document scores text documents: give them with --path "
                                "(token shards hold ids, not documents)")
            return _per_document(model, spec, ckpt, path, per_document, device, console)
        if isinstance(data, ir.TextData | ir.ShardsData) and text_path is None:
            t = _make_task(data, spec, _run_folder(ckpt))
        elif isinstance(data, ir.TextData) and data.tokenizer == "bpe":
            t = _other_text_in_run_vocabulary(path, data, spec, _run_folder(ckpt))
        elif isinstance(data, ir.ShardsData) or (isinstance(data, ir.TextData)
                                                 and data.tokenizer.endswith(".json")):
            t = _text_with_tokenizer_file(path, data, spec, _run_folder(ckpt))
        else:
            tspec = ir.TextData(task="text", path=str(path), seq_len=data.seq_len, batch=data.batch, seed=data.seed)
            t = _make_task(tspec, spec, _run_folder(ckpt))
        split = "val" if t.split_size("train") < t.num_tokens else "train"
        loss, _, _ = _mean_loss_and_acc(model, t, batches, device, split, accuracy=False)
        bpt = getattr(t, "bytes_per_token", 1.0)
        result: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": loss / math.log(2) / bpt}
        table = Table(title=f"text · {spec.name} · {path} ({split} split)")
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
        loss, acc, per_token = _mean_loss_and_acc(model, t, batches, device, "val")
        chance = getattr(t, "answer_chance", None)
        result = {"loss": loss, "answer_accuracy": per_token, "exact_match": acc, "chance": chance}
        table = Table(title=f"{dspec.task} · {spec.name} · {batches} held-out batches")
        for col in ("loss", "answer accuracy", "exact match", "chance (per answer)"):
            table.add_column(col, justify="right")
        table.add_row(f"{loss:.4f}", f"{100 * per_token:.1f}%", f"{100 * acc:.1f}%",
                      "—" if chance is None else f"{100 * chance:.1f}%")
        console.print(table)
        return result
    raise AssertionError(task)  # pragma: no cover - checked above


def _per_document(model: torch.nn.Module, spec: ir.Spec, ckpt: Path, path: Path, out: Path,
                  device: str, console: Console) -> dict[str, Any]:
    import json

    rows = per_document_loglikelihoods(model, spec, ckpt, path, device)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot write {out}: {e.strerror or e}") from None
    ll = sum(r["loglikelihood"] for r in rows)
    n_tok, n_bytes = sum(r["tokens"] for r in rows), sum(r["bytes"] for r in rows)
    loss = -ll / max(n_tok, 1)
    result: dict[str, Any] = {
        "documents": len(rows), "tokens": n_tok, "loglikelihood": ll, "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": -ll / math.log(2) / max(n_bytes, 1), "per_document": str(out)}
    table = Table(title=f"text · {spec.name} · {path} (each document in one pass)")
    for k in ("documents", "tokens", "loglikelihood", "loss", "perplexity", "bits_per_byte"):
        table.add_column(k, justify="right")
    table.add_row(str(len(rows)), str(n_tok), *[f"{result[k]:.4f}" for k in
                                                  ("loglikelihood", "loss", "perplexity", "bits_per_byte")])
    console.print(table)
    console.print(f"wrote {out}")
    return result
