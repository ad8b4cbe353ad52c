"""lm-evaluation-harness on nestdsl checkpoints: ``lm_eval --model nestdsl``.

``NestdslLM`` is an ``lm_eval.api.model.LM`` registered as ``nestdsl``; its model arguments are
``ckpt=RUN_OR_CHECKPOINT`` (required), ``spec=FILE`` (default: the spec the checkpoint stores),
``device``, ``batch_size``, ``max_length``, ``segment``, ``prefix_token_id``, ``max_gen_toks``,
``threads`` and ``force``. The class is built on first access (`NestdslLM` is a lazy module
attribute), so this module, and the scoring functions above it that `nestdsl eval
--per-document` shares, import without lm_eval; only the class needs it.

Every request is read as a document that starts after one *prefix* token: the run's tokenizer's
end-of-text token when it has one, else the token of a newline (a corpus folder is its files
joined by newlines, so a line start is where a byte model has seen documents begin). So
``loglikelihood(ctx, cont)`` is ``log p(cont | prefix ctx)``, ``loglikelihood_rolling(doc)`` is
``log p(doc | prefix)`` and the two agree: ``rolling(ctx + cont) - rolling(ctx)``.

Long inputs: the model has no position limit (memories stream; attention uses RoPE and a KV
cache), so by default a document is scored in one pass whatever its length, every token
conditioned on everything before it. The pass reads ``segment`` tokens per call
(`NestModel.forward_incremental`, exact at any split), which bounds the activations, not the
context. ``max_length=N`` instead scores like lm_eval's Hugging Face models: rolling windows of N
tokens (``loglikelihood_rolling``), contexts truncated on the left (``loglikelihood``,
``generate_until``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from nestdsl.runtime.tasks.base import DataError

__all__ = ["DEFAULT_SEGMENT", "INSTALL_HINT", "Codec", "ObjectCodec", "Utf8Codec",
           "prefix_token", "register", "run_codec", "score_documents", "score_pairs"]

#: what a missing lm_eval prints
INSTALL_HINT = "lm-eval is not installed: pip install 'nestdsl[eval]'"
#: tokens per model call of a long pass (activations, not context: the result is one pass)
DEFAULT_SEGMENT = 2048
#: rows per batch for `batch_size=auto` (there is no memory probe)
AUTO_BATCH = 8
_SYNTHETIC = ("mqar", "niah", "copy")


# ---------------------------------------------------------------------------------------------
# Text <-> token ids: the run's own tokenizer


class Codec(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class Utf8Codec:
    """UTF-8 bytes as token ids (byte vocabularies). Unlike `generate.ByteCodec` there is no
    ``\\xNN`` escape: evaluation text is taken literally."""

    eot_token_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class ObjectCodec:
    """Any object with ``encode(text)`` and ``decode(ids)``: a data task (the text task's BPE,
    a task with its own tokenizer) or a `tokenizers.Tokenizer` (whose ``encode`` returns an
    encoding with ``.ids``). Its end-of-text id, when it names one (``eot_token_id``,
    ``eos_token_id`` or ``eot_id``), is the prefix and a stop token."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.eot_token_id: int | None = None
        for name in ("eot_token_id", "eos_token_id", "eot_id"):
            value = getattr(obj, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                self.eot_token_id = value
                break

    def encode(self, text: str) -> list[int]:
        out = self.obj.encode(text)
        return [int(i) for i in getattr(out, "ids", out)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.obj.decode([int(i) for i in ids]))


def _has_codec(obj: Any) -> bool:
    return callable(getattr(obj, "encode", None)) and callable(getattr(obj, "decode", None))


def run_codec(spec: Any, run: Path) -> Codec:
    """How text becomes the token ids this run trained on: bytes for byte-level text; the BPE
    tokenizer saved in the run folder (else the text task retrains it from its corpus); any
    other data task that has ``encode``/``decode`` (a task's own tokenizer) is asked itself;
    synthetic data (mqar, niah, copy) on a vocabulary of at most 256 ids reads bytes."""
    from nestdsl.runtime.tasks.text import saved_tokenizer
    from nestdsl.runtime.train import _make_task, default_data
    from nestdsl.spec import ir

    data: Any = default_data(spec)
    subs = list(data.tasks) if isinstance(data, ir.ContinualData) else [data]
    d: Any = next((s for s in subs if getattr(s, "task", None) not in _SYNTHETIC), subs[0])
    kind, tokenizer = getattr(d, "task", None), getattr(d, "tokenizer", None)
    if kind == "text" and tokenizer == "bytes":
        return Utf8Codec()
    if kind == "text" and tokenizer == "bpe":
        saved = saved_tokenizer(run, d.vocab_size)
        if saved is not None:
            return ObjectCodec(saved)
    if kind not in _SYNTHETIC:
        task = _make_task(d, spec, run)
        if _has_codec(task):
            return ObjectCodec(task)
    vocab = spec.model.vocab
    if vocab <= 256:
        return Utf8Codec()
    raise DataError(f"the {kind} data of this run has no text form (model.vocab {vocab}, no "
                    "tokenizer): lm-eval needs a text model")


def prefix_token(codec: Codec, override: int | None = None) -> int:
    """The token every request starts after: `override`, the codec's end-of-text id, else the
    last token of a newline."""
    if override is not None:
        return int(override)
    eot = getattr(codec, "eot_token_id", None)
    if isinstance(eot, int):
        return eot
    ids = codec.encode("\n")
    if not ids:
        raise DataError("the tokenizer encodes a newline as nothing; give prefix_token_id=ID")
    return ids[-1]


# ---------------------------------------------------------------------------------------------
# Scoring (pure torch: no lm_eval)


def _gather(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    logits = logits.float()
    lp = F.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return lp, logits.argmax(-1) == targets


def _target_logprobs(model: Any, inputs: Tensor, targets: Tensor, segment: int | None
                     ) -> tuple[Tensor, Tensor]:
    """log p(targets[:, t] | inputs[:, :t+1]) and whether it is the argmax, (B, L) each: one
    forward, or `segment` tokens per `forward_incremental` call (the same pass)."""
    L = inputs.shape[1]
    if segment is None or L <= segment or not hasattr(model, "forward_incremental"):
        return _gather(model(inputs), targets)
    state, lps, greedy = None, [], []
    for a in range(0, L, segment):
        logits, state = model.forward_incremental(inputs[:, a:a + segment], state)
        lp, g = _gather(logits, targets[:, a:a + segment])
        lps.append(lp)
        greedy.append(g)
    return torch.cat(lps, 1), torch.cat(greedy, 1)


@torch.no_grad()
def score_pairs(model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                device: str = "cpu", batch_size: int = 1, segment: int | None = DEFAULT_SEGMENT,
                progress: Callable[[int], Any] | None = None) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): the summed log-probability of the continuation
    after the context (nats, float64 sum), and whether every continuation token is the model's
    argmax. The context holds at least one token (the prefix). Rows are batched longest first,
    right-padded: the model is causal, so padding after a row never reaches its positions.
    `progress` hears how many rows each batch finished."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for ctx, _ in pairs:
        if not ctx:
            raise ValueError("a context needs at least one token (the prefix)")
    vocab = getattr(model, "vocab", None)
    out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    order = [i for i in order if len(pairs[i][1])]          # an empty continuation: (0, True)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [list(pairs[i][0]) + list(pairs[i][1]) for i in idx]
        if vocab is not None and max(max(r) for r in rows) >= vocab:
            raise DataError(f"a request holds token id {max(max(r) for r in rows)} but the "
                            f"model's vocab is {vocab}")
        L = max(len(r) for r in rows) - 1
        padded = torch.zeros((len(rows), L + 1), dtype=torch.long)
        for j, r in enumerate(rows):
            padded[j, :len(r)] = torch.tensor(r, dtype=torch.long)
        padded = padded.to(device)
        lp, greedy = _target_logprobs(model, padded[:, :-1], padded[:, 1:], segment)
        for j, i in enumerate(idx):
            end, n = len(rows[j]) - 1, len(pairs[i][1])
            out[i] = (float(lp[j, end - n:end].double().sum()), bool(greedy[j, end - n:end].all()))
        if progress is not None:
            progress(len(idx))
    return out


def score_documents(model: Any, docs: Sequence[Sequence[int]], prefix: int, **kw: Any
                    ) -> list[tuple[float, bool]]:
    """Each document's log-likelihood in one pass after the prefix token (`score_pairs`)."""
    return score_pairs(model, [([prefix], d) for d in docs], **kw)


# ---------------------------------------------------------------------------------------------
# The lm_eval model (built on first access: lm_eval is optional)


def _optional_int(value: Any, name: str) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"nestdsl model arg {name} expects an integer, got {value!r}") from None


def _batch_size(value: Any) -> int:
    if isinstance(value, str) and value.startswith("auto"):
        return AUTO_BATCH
    n = _optional_int(value, "batch_size")
    n = 1 if n is None else n
    if n < 1:
        raise ValueError(f"batch_size must be >= 1, got {n}")
    return n


def _bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


@cache
def _lm_class() -> type:
    try:
        # the built-in names first: `get_model` imports them only while the registry is empty
        import lm_eval.models  # noqa: F401
        from lm_eval.api.model import LM
        from lm_eval.api.registry import model_registry, register_model
        from lm_eval.models.utils import normalize_gen_kwargs
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        from tqdm import tqdm
    except ImportError:
        raise ImportError(INSTALL_HINT) from None

    class NestdslLM(LM):
        """A trained nestdsl run for lm-evaluation-harness (see the module docstring)."""

        def __init__(self, ckpt: str | None = None, spec: str | None = None,
                     device: str | None = None, batch_size: Any = 1,
                     max_batch_size: Any = None, max_length: Any = None,
                     segment: Any = DEFAULT_SEGMENT, prefix_token_id: Any = None,
                     max_gen_toks: Any = 256, threads: Any = None, force: Any = False,
                     **unused: Any) -> None:
            super().__init__()
            if ckpt is None:
                raise ValueError("the nestdsl model needs ckpt=RUN_FOLDER_OR_CHECKPOINT "
                                 "(--model_args ckpt=runs/my-run)")
            if unused:
                raise ValueError(f"unknown nestdsl model args: {', '.join(sorted(unused))} "
                                 "(expected ckpt, spec, device, batch_size, max_length, "
                                 "segment, prefix_token_id, max_gen_toks, threads, force)")
            from nestdsl.runtime.evaluate import _run_folder, load_model
            from nestdsl.runtime.run_spec import from_checkpoint

            path = Path(ckpt).expanduser()
            if spec:
                from nestdsl.pipeline import load_spec

                spec_obj = load_spec(Path(spec).expanduser())
            else:
                spec_obj = from_checkpoint(path).spec
            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            n_threads = _optional_int(threads, "threads")
            if n_threads is not None:
                torch.set_num_threads(n_threads)
            self.spec = spec_obj
            self.model = load_model(spec_obj, path, dev, force=_bool(force))
            self._device = torch.device(dev)
            self.codec = run_codec(spec_obj, _run_folder(path))
            self.prefix = prefix_token(self.codec, _optional_int(prefix_token_id, "prefix_token_id"))
            self.batch_size = _batch_size(batch_size)
            self.max_length = _optional_int(max_length, "max_length")
            self.segment = _optional_int(segment, "segment")
            self.max_gen_toks = _optional_int(max_gen_toks, "max_gen_toks") or 256
            for name, v in (("max_length", self.max_length), ("segment", self.segment)):
                if v is not None and v < 1:
                    raise ValueError(f"{name} must be >= 1, got {v}")

        # lm_eval passes --batch_size / --device from its own CLI next to --model_args: the
        # model args win (the CLI always sends batch_size, 1 by default)
        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None
                                   ) -> Any:
            from lm_eval.utils import simple_parse_args_string

            return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

        @classmethod
        def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None
                                ) -> Any:
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
            return cls(**{**extra, **arg_dict})

        @property
        def eot_token_id(self) -> int:
            return self.prefix

        @property
        def tokenizer_name(self) -> str:
            return f"nestdsl-{type(self.codec).__name__}"

        def _score(self, pairs: list[tuple[list[int], list[int]]], what: str, quiet: bool
                   ) -> list[tuple[float, bool]]:
            with tqdm(total=len(pairs), desc=what, disable=quiet or self.rank != 0) as bar:
                return score_pairs(self.model, pairs, device=str(self._device),
                                   batch_size=self.batch_size, segment=self.segment,
                                   progress=bar.update)

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            """As lm_eval's causal models: trailing spaces of the context go to the
            continuation; the whole string is encoded and split after the context's tokens."""
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            whole = self.codec.encode(context + continuation)
            ctx = self.codec.encode(context) if context else []
            return [self.prefix, *ctx], whole[len(ctx):]

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False
                          ) -> list[tuple[float, bool]]:
            pairs = []
            for context, continuation in (r.args for r in requests):
                ctx, cont = self._encode_pair(context, continuation)
                if self.max_length is not None:
                    keep = self.max_length + 1 - len(cont)
                    if keep < 1:
                        raise ValueError(f"a continuation of {len(cont)} tokens does not fit "
                                         f"max_length {self.max_length}")
                    ctx = ctx[-keep:]
                pairs.append((ctx, cont))
            results = self._score(pairs, "loglikelihood", disable_tqdm)
            for r, res in zip(requests, results, strict=True):
                self.cache_hook.add_partial("loglikelihood", r.args, res)
            return results

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False
                                  ) -> list[float]:
            pairs: list[tuple[list[int], list[int]]] = []
            owner: list[int] = []
            for k, (text,) in enumerate(r.args for r in requests):
                ids = self.codec.encode(text)
                if self.max_length is None:
                    windows = [([self.prefix], ids)]
                else:
                    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                        token_list=ids, prefix_token=self.prefix, max_seq_len=self.max_length,
                        context_len=1)]
                pairs.extend(windows)
                owner.extend([k] * len(windows))
            totals = [0.0] * len(requests)
            scores = self._score(pairs, "loglikelihood_rolling", disable_tqdm)
            for k, (ll, _) in zip(owner, scores, strict=True):
                totals[k] += ll
            for r, total in zip(requests, totals, strict=True):
                self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
            return totals

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            from nestdsl.runtime.generate import Sampling, generate

            out = []
            for context, gen_kwargs in tqdm([r.args for r in requests], desc="generate_until",
                                            disable=disable_tqdm or self.rank != 0):
                kwargs = normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)
                until = kwargs.get("until") or []
                until = [s for s in ([until] if isinstance(until, str) else until) if s]
                n_new = int(kwargs["max_gen_toks"])
                prompt = [self.prefix, *self.codec.encode(context)]
                if self.max_length is not None:
                    prompt = prompt[-max(1, self.max_length - n_new):]
                temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get(
                    "do_sample") else 0.0
                sampling = Sampling(max_tokens=max(n_new, 1), temperature=temperature,
                                    top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"),
                                    seed=int(kwargs.get("seed") or 0))
                new: list[int] = []
                text = ""
                if n_new > 0:
                    eot = getattr(self.codec, "eot_token_id", None)
                    for tok in generate(self.model, prompt, sampling, device=str(self._device)):
                        if eot is not None and tok == eot:
                            break
                        new.append(tok)
                        text = self.codec.decode(new)
                        if any(s in text for s in until):
                            break
                cut = min((text.find(s) for s in until if s in text), default=len(text))
                text = text[:cut]
                out.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            return out

    NestdslLM.__module__, NestdslLM.__qualname__ = __name__, "NestdslLM"
    if "nestdsl" not in model_registry:     # (an entry-point placeholder resolves to this class)
        register_model("nestdsl")(NestdslLM)
    return NestdslLM


def register() -> type:
    """Import lm_eval and register ``nestdsl`` as a model name; returns the class. ImportError
    with `INSTALL_HINT` when lm_eval is missing."""
    return _lm_class()


def __getattr__(name: str) -> Any:
    if name == "NestdslLM":
        return _lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

