"""`nestdsl data prepare | info`: token-shard folders for training at scale (torch-free).

`prepare` streams a corpus (a folder of .txt files, .jsonl, .parquet, or a Hugging Face datasets
folder) through a tokenizer into shard files and a `shards.json` sidecar (nestdsl/data/); `info`
prints a folder's sidecar and checks its files. Train on the result with
`data: {task: shards, path: DIR}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nestdsl.cli.app import TracebackOpt, app, err, out
from nestdsl.cli.errors import guard

data_app = typer.Typer(
    name="data",
    help="Prepare and inspect token-shard datasets (data prepare | data info).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")


class _Bar:
    """The rich progress bar of a prepare (bytes or documents); nothing when not on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and err.is_terminal
        self._bar: Any = None
        self._task: Any = None

    def start(self, total: int, unit: str) -> None:
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
        self._bar = Progress(TextColumn("[bold]prepare"), BarColumn(), count,
                             TextColumn(unit if unit != "bytes" else ""), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=True)
        self._task = self._bar.add_task("prepare", total=total or None)
        self._bar.start()

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


@data_app.command("prepare")
def prepare(
    src: Annotated[Path, typer.Argument(help="a .txt/.jsonl/.parquet file, a folder of them, or a "
                                             "Hugging Face datasets folder (save_to_disk)")],
    out_dir: Annotated[Path, typer.Option("--out", help="the shards folder to write (must be empty "
                                                        "or absent, unless --force)")],
    tokenizer: Annotated[str, typer.Option(help="bytes, or the path of a local tokenizer.json")] = "bytes",
    text_column: Annotated[str, typer.Option(help="text field of jsonl/parquet/datasets rows")] = "text",
    shard_tokens: Annotated[int, typer.Option(help="most tokens per shard file")] = 100_000_000,
    val_fraction: Annotated[float, typer.Option(
        help="fraction of documents held out: every (1/F)-th document goes to val")] = 0.01,
    split: Annotated[str, typer.Option(help="the split of a datasets folder holding several")] = "train",
    format: Annotated[str, typer.Option(help="auto | txt | jsonl | parquet | hf")] = "auto",
    eos_token: Annotated[str | None, typer.Option(
        help="separator token between documents (default: the tokenizer's <|endoftext|> or </s>, "
             "else a newline; 'none': a newline)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace a non-empty --out folder")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    traceback: TracebackOpt = False,
) -> None:
    """Tokenise a corpus into token shards (uint16/uint32 .bin files + shards.json), streaming."""
    with guard(traceback):
        from nestdsl.data.prepare import prepare as run

        bar = _Bar(not quiet)
        try:
            sc = run(src, out_dir, tokenizer=tokenizer, text_column=text_column,
                     shard_tokens=shard_tokens, val_fraction=val_fraction, split=split,
                     format=format, eos_token=eos_token, force=force, progress=bar)
        finally:
            bar.stop()
        t = sc.totals()
        val = sc.splits.get("val")
        note = "" if val is not None else " (no val split: fewer documents than 1/--val-fraction)"
        out.print(
            f"prepared {t['tokens']:,} tokens from {_plural(t['documents'], 'document')} in "
            f"{_plural(t['shards'], 'shard')} ({sc.dtype}, vocab {sc.vocab_size:,}; train "
            f"{sc.splits['train'].tokens:,}, val {val.tokens if val else 0:,}) → {out_dir}{note}",
            highlight=False)


@data_app.command("info")
def info(
    folder: Annotated[Path, typer.Argument(help="a folder written by `nestdsl data prepare`")],
    verify: Annotated[bool, typer.Option("--verify", help="also check every file's sha256 (reads "
                                                          "all of them)")] = False,
    traceback: TracebackOpt = False,
) -> None:
    """Print a shards folder's sidecar summary and check its files' sizes (--verify: sha256)."""
    with guard(traceback):
        from nestdsl.data.shards import read_sidecar
        from nestdsl.data.shards import verify as check

        sc = read_sidecar(folder)
        tok = sc.tokenizer
        tok_text = "bytes" if tok.get("kind") == "bytes" else f"{tok.get('file')} (sha256 {str(tok.get('sha256'))[:12]}…)"
        sep = sc.separator
        sep_text = (f"eos {sep.get('token')!r} {sep.get('ids')}" if sep.get("kind") == "eos"
                    else f"newline {sep.get('ids')}")
        src = sc.source
        lines = [
            f"{folder}: token shards v1, {sc.dtype}, vocab {sc.vocab_size:,}, tokenizer {tok_text}",
            f"  documents joined by: {sep_text}",
            f"  source: {src.get('kind', '?')} {src.get('path', '?')}"
            + (f" (column {src['text_column']!r})" if src.get("text_column") else "")
            + (f" split {src['split']!r}" if src.get("split") else ""),
        ]
        for name, s in sc.splits.items():
            bpt = (f", {s.source_bytes / s.tokens:.3f} bytes/token"
                   if s.source_bytes and s.tokens else "")
            lines.append(f"  {name}: {s.tokens:,} tokens, {_plural(s.documents, 'document')}, "
                         f"{_plural(len(s.shards), 'shard')}{bpt}")
        if "val" not in sc.splits:
            lines.append(f"  val: none (val fraction {sc.val_fraction:g})")
        t = sc.totals()
        lines.append(f"  total: {t['tokens']:,} tokens in {_plural(t['shards'], 'shard')}")
        for line in lines:
            out.print(line, highlight=False)
        check(folder, sc, hashes=verify)
        what = "sizes and sha256" if verify else "sizes"
        out.print(f"ok: {what} of {_plural(t['shards'], 'shard')} match {folder / 'shards.json'}",
                  highlight=False)
