"""`nestdsl generate`: sample a continuation of a prompt from a trained checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app, err
from nestdsl.cli.errors import UserError, guard
from nestdsl.cli.runtime_options import ForceOpt, ThreadsOpt, _check_device, _run_spec, _set_threads

if TYPE_CHECKING:
    from nestdsl.runtime.generate import Sampling
    from nestdsl.spec import ir


@app.command()
def generate(
    ckpt: Annotated[Path, typer.Option(help="checkpoint folder or run folder (uses its latest)")],
    spec: Annotated[Path | None, typer.Argument(
        help="spec file (default: the spec the checkpoint stores)")] = None,
    prompt: Annotated[str | None, typer.Option(
        help="prompt text (byte vocabularies: \\xNN writes byte NN, e.g. the copy task's "
             "separator \\x01)")] = None,
    prompt_ids: Annotated[str | None, typer.Option(
        "--prompt-ids", help="the prompt as comma-separated token ids instead")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="tokens to generate")] = 200,
    temperature: Annotated[float, typer.Option(help="softmax temperature (0: greedy)")] = 0.8,
    top_k: Annotated[int | None, typer.Option("--top-k", help="sample among the k likeliest")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="nucleus: the smallest set "
                                                 "with this much probability")] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    ids: Annotated[bool, typer.Option("--ids", help="print token ids instead of text")] = False,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override a spec field: key.path=value (without a spec file: on top of "
                      "the stored spec)")] = None,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    traceback: TracebackOpt = False,
) -> None:
    """Continue a prompt with a trained model, token by token on its recurrent state."""
    with guard(traceback):
        if (prompt is None) == (prompt_ids is None):
            raise UserError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
        from nestdsl.runtime.generate import Sampling

        sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed)
        try:
            sampling.check()
        except ValueError as e:
            raise UserError(str(e)) from None
        token_ids = _ids(prompt_ids) if prompt_ids is not None else None
        run = _run_spec(spec, list(set_ or []), ckpt, what="generate")
        _check_device(device)
        _set_threads(device, threads)
        _generate(run.spec, ckpt, prompt, token_ids, sampling, ids=ids, device=device, force=force)


def _generate(spec: ir.Spec, ckpt: Path, prompt: str | None, token_ids: list[int] | None,
              sampling: Sampling, *, ids: bool, device: str, force: bool) -> None:
    from nestdsl.runtime.evaluate import _run_folder, load_model
    from nestdsl.runtime.generate import codec_for, generate
    from nestdsl.runtime.train import _make_task, default_data

    model = load_model(spec, ckpt, device, force=force, console=err)
    codec = codec_for(spec, lambda: _make_task(default_data(spec), spec, _run_folder(ckpt)))
    if token_ids is None:
        if codec is None:
            assert spec.model is not None        # `_run_spec` refused specs without a model
            raise UserError(f"model.vocab {spec.model.vocab} has no text form for this data; "
                            "give the prompt as --prompt-ids")
        token_ids = codec.encode(prompt or "")
    text_out = codec is not None and not ids
    if text_out and codec is not None:          # text_out: there is a codec
        sys.stdout.write(codec.decode(token_ids))
    else:
        sys.stdout.write(",".join(map(str, token_ids)) + " |")
    sys.stdout.flush()
    new: list[int] = []
    shown = ""
    try:
        for tok in generate(model, token_ids, sampling, device=device):
            new.append(tok)
            if not text_out:
                sys.stdout.write(f" {tok}")
            else:
                # decode the whole continuation and print what is new (a multi-byte character
                # shows once complete)
                assert codec is not None         # text_out: there is a codec
                text = codec.decode(new)
                if text.startswith(shown) and not text.endswith("\ufffd"):
                    sys.stdout.write(text[len(shown):])
                    shown = text
            sys.stdout.flush()
    except ValueError as e:
        raise UserError(str(e)) from None
    if text_out and codec is not None and (final := codec.decode(new)).startswith(shown):
        sys.stdout.write(final[len(shown):])       # a held-back incomplete character
    sys.stdout.write("\n")


def _ids(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--prompt-ids expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise UserError("--prompt-ids needs at least one non-negative token id")
    return values
