"""Sampling text from a trained model, one token at a time on its recurrent state.

The prompt is read in one call, then each new token is one `forward_incremental` call: memories
carry their fast weights (chunked ones: the chunk-start state plus the < C tokens since),
attention a KV cache — the cost per token does not grow with the memories' history.

Sampling (the usual recipe, applied in this order): logits / temperature, keep the `top_k`
largest, keep the smallest set whose probability reaches `top_p` (nucleus), draw. Temperature 0
is greedy decoding. A seeded generator makes a draw reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ByteCodec", "Sampling", "codec_for", "generate", "sample_next"]


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def check(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")


def sample_next(logits: Tensor, sampling: Sampling, generator: torch.Generator) -> Tensor:
    """One token id per row of `logits` (B, V)."""
    logits = logits.float()
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the ones before it already reach top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= sampling.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: Any, prompt: list[int], sampling: Sampling, *, device: str = "cpu"
             ) -> Iterator[int]:
    """Yield `sampling.max_tokens` token ids continuing `prompt` (greedy at temperature 0)."""
    sampling.check()
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    vocab = getattr(model, "vocab", None)
    if vocab is not None and max(prompt) >= vocab:
        raise ValueError(f"the prompt holds token id {max(prompt)} but the model's vocab is {vocab}")
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    tokens = torch.tensor([prompt], dtype=torch.long, device=device)
    logits, state = model.forward_incremental(tokens, None)
    for _ in range(sampling.max_tokens):
        nxt = sample_next(logits[:, -1], sampling, generator)
        yield int(nxt)
        logits, state = model.forward_incremental(nxt[:, None], state)


# ---------------------------------------------------------------------------------------------
# Text ↔ token ids


class ByteCodec:
    """UTF-8 bytes as token ids (the byte-level presets). A prompt may write any byte as `\\xNN`
    (the copy task's separator is `\\x01`); output shows control bytes the same way."""

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(text):
            if text.startswith("\\x", i) and _is_hex(text[i + 2:i + 4]):
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
            else:
                out.extend(text[i].encode("utf-8"))
                i += 1
        return out

    def decode(self, ids: list[int]) -> str:
        raw = bytes(i for i in ids if i < 256)
        text = raw.decode("utf-8", errors="replace")
        return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in text)


class TaskCodec:
    """The text task's tokenizer (bpe): its `encode` / `decode`."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def encode(self, text: str) -> list[int]:
        return list(self.task.encode(text))

    def decode(self, ids: list[int]) -> str:
        return str(self.task.decode(ids))


def codec_for(spec: Any, make_task: Callable[[], Any]) -> ByteCodec | TaskCodec | None:
    """How prompts and outputs are written for this spec's data: bytes for a byte vocabulary,
    the data's tokenizer for bpe / tokenizer.json text and token shards; None when the ids have
    no text form (use ids)."""
    from nestdsl.spec import ir

    data = spec.data
    if isinstance(data, ir.ContinualData):
        data = data.tasks[0]
    if isinstance(data, ir.ShardsData) or (isinstance(data, ir.TextData) and data.tokenizer != "bytes"):
        return TaskCodec(make_task())     # bpe, a tokenizer.json, the shards' tokenizer
    return ByteCodec() if spec.model.vocab <= 256 else None


def _is_hex(s: str) -> bool:
    return len(s) == 2 and all(c in "0123456789abcdefABCDEF" for c in s)
