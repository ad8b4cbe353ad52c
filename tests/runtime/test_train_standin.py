"""Support for the train/eval/CLI tests (no tests here): a small deterministic stand-in for
`nestdsl.compile`, spec/corpus writers and a subprocess driver, so the training runtime is
tested without depending on the model lowering.

The stand-in system has the shape of `nestdsl.lower.CompiledSystem`: `.model` (an `nn.Module`
with `model(tokens)` → logits and `model.loss(tokens, targets, mask)` → mean loss over the
scored positions) and `.levels` (`LevelInfo`-like objects: name, role, every_k, params), with a
persistent level `slow` updated every 2 optimizer steps.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SLOW_EVERY_K = 2


class StandinModel(nn.Module):
    """Embedding of the current and previous token → tanh MLP → a persistent `slow` residual
    layer → head. `nan_at`: the loss of that call (1-based) is NaN."""

    def __init__(self, vocab: int, width: int, nan_at: int | None = None, record_dir: str | None = None) -> None:
        super().__init__()
        self.vocab, self.width = vocab, width
        self.embed = nn.Embedding(vocab, width)
        self.prev = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.slow = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)
        self.nan_at = nan_at
        self.record_dir = record_dir
        self.calls = 0

    def _record(self, tokens: torch.Tensor) -> None:
        """Leave `rank<r>-of-<world>-batch<B>` in `record_dir` (proof of how a process trained)."""
        import torch.distributed as dist

        on = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        Path(self.record_dir, f"rank{rank}-of-{world}-batch{tokens.shape[0]}").touch()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.prev(F.pad(tokens[:, :-1], (1, 0)))
        h = torch.tanh(self.mix(x))
        h = h + torch.tanh(self.slow(h))
        return self.head(h)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        if self.record_dir is not None and self.calls == 1:
            self._record(tokens)
        logits = self(tokens)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none", ignore_index=-100)
        valid = (targets.flatten() != -100).float()
        if mask is not None:
            valid = valid * mask.flatten().float()
        loss = (nll * valid).sum() / valid.sum().clamp_min(1.0)
        if self.nan_at is not None and self.calls == self.nan_at:
            loss = loss * math.nan
        return loss


def make_system(spec: Any, *, device: str = "cpu", nan_at: int | None = None, persistent: bool = True,
                record_dir: str | None = None) -> Any:
    model = StandinModel(spec.model.vocab, spec.model.width, nan_at=nan_at, record_dir=record_dir).to(device)
    slow = list(model.slow.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("slow.")]
    levels = [SimpleNamespace(name="outer", kind="outer", every_k=1, params=rest if persistent else rest + slow)]
    if persistent:
        levels.append(SimpleNamespace(name="slow", kind="persistent", every_k=SLOW_EVERY_K, params=slow))
    levels.append(SimpleNamespace(name="token", kind="in-context", every_k=0, params=[]))
    return SimpleNamespace(spec=spec, model=model, levels=levels, notes=[])


def factory(**options: Any) -> Any:
    """A replacement for `nestdsl.compile` building the stand-in (options: nan_at, persistent,
    record_dir)."""

    def compile_standin(spec: Any, device: str = "cpu", compile: bool = True, **_: Any) -> Any:  # noqa: A002
        return make_system(spec, device=str(device), **options)

    return compile_standin


def install(monkeypatch: Any = None, **options: Any) -> None:
    """Make `nestdsl.compile` build the stand-in (in this process)."""
    import nestdsl

    if monkeypatch is not None:
        monkeypatch.setattr(nestdsl, "compile", factory(**options))
    else:
        nestdsl.compile = factory(**options)  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# Data and specs


WORDS = ["the", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "a", "big", "red"]


def write_corpus(path: Path, n_sentences: int = 400, seed: int = 0) -> Path:
    """A synthetic corpus from a tiny grammar: byte-level models learn it within tens of steps."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_sentences):
        n = int(rng.integers(3, 7))
        lines.append(" ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=n)) + ".")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_spec(
    path: Path,
    *,
    data: str,
    steps: int = 40,
    log_every: int = 5,
    ckpt_every: int = 10,
    lr: float = 0.01,
    grad_clip: float | None = 1.0,
    width: int = 32,
) -> Path:
    """A small valid model spec (the stand-in ignores its architecture; the real lowering builds
    a one-block MLP model from it). `data`: a YAML flow mapping for the data section."""
    clip = "null" if grad_clip is None else grad_clip
    path.write_text(textwrap.dedent(f"""\
        nestdsl: 1
        name: standin
        model: {{vocab: 256, width: {width}, depth: 1, heads: 2, pattern: [b]}}
        blocks:
          b:
            layers:
              - {{type: mlp, hidden: 2}}
        optimizer: {{type: adamw, lr: {lr}, weight_decay: 0.0, beta: 0.9, beta2: 0.99}}
        data: {data}
        train: {{steps: {steps}, warmup: 0, log_every: {log_every}, ckpt_every: {ckpt_every},
                 schedule: constant, grad_clip: {clip}, compile: false}}
        """))
    return path


def text_spec(tmp: Path, **kw: Any) -> Path:
    corpus = write_corpus(tmp / "corpus.txt")
    return write_spec(tmp / "standin.yaml", data=f"{{task: text, path: {corpus}, seq_len: 32, batch: 8}}", **kw)


# ---------------------------------------------------------------------------------------------
# Subprocess driver


DRIVER = """\
import sys
sys.path.insert(0, {here!r})
import test_train_standin as S
S.install(**{options!r})
from nestdsl.cli import main
main(sys.argv[1:])
"""


def write_driver(path: Path, **options: Any) -> Path:
    """A script that installs the stand-in, then runs `nestdsl` with its arguments."""
    path.write_text(DRIVER.format(here=str(HERE), options=options))
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["NO_COLOR"] = "1"
    return env


PYTHON = sys.executable
