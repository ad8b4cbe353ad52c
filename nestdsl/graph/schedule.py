"""The schedule: which level fires at which token of a sequence and at which optimizer step.

Levels are clocks (docs/design.md §2). A level's period is given in tokens or in optimizer steps;
docs/design.md §3.3 classifies it against the sequence length T and the tokens per optimizer step
(T x batch):

* **in-context** (period C < T, in tokens): fires at the end of every C-token chunk inside each
  sequence, i.e. at tokens C, 2C, ... (1-based); its state resets per sequence.
* **persistent** (period in steps, or C >= tokens per step in tokens): updated by the outer
  optimizer every k steps, k = the period in steps or C / tokens_per_step.
* **outer**: the pre-training level itself (built-in `step`, every step) and the outer
  optimizer's own levels (e.g. M3's slow momentum every `slow_every` steps).
* **between**: a token period >= T but < tokens per step, or one that does not divide evenly;
  the checker rejects it, but the schedule still describes it (it never fires) rather than crash,
  so `nestdsl graph` can show what is wrong.

Pure Python (no torch, no networkx) so the checker and the CLI can use it cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nestdsl.spec import ir
from nestdsl.spec.periods import DataShape, LevelKind, classify

__all__ = ["Level", "Schedule", "optimizer_levels", "schedule", "spec_levels"]


@dataclass(frozen=True)
class Level:
    """A level (docs/design.md §2): a named clock, classified against the sequence length and the
    tokens per optimizer step (`spec.periods.classify`). The one Level type: built once from
    the spec by `spec_levels` / `schedule` and handed to the graph, the lowering (CMS stages,
    `CompiledSystem.levels`) and the train loop."""

    name: str
    every: int
    unit: str  # "tokens" | "steps"
    kind: LevelKind
    owner: str = "model"  # "model" (spec levels, built-ins) or "optimizer" (its own levels)
    tokens_every: int | None = None  # fires inside a sequence every this many tokens
    steps_every: int | None = None  # fires every k optimizer steps (persistent / outer)
    tokens_per_step: int | None = None
    doc: str | None = None

    @property
    def every_k(self) -> int:
        """Optimizer steps between updates (persistent / outer); 0 for an in-context level."""
        return self.steps_every or 0

    @property
    def period(self) -> str:
        """The period as written, e.g. '16 tokens', '4 steps', '1 token'."""
        return str(ir.Period(every=self.every, unit=self.unit))  # type: ignore[arg-type]

    @property
    def period_text(self) -> str:
        """The period plus its step equivalent when a token period maps to k steps."""
        if self.unit == "tokens" and self.steps_every is not None:
            k = self.steps_every
            return f"{self.period} = {k} step{'s' if k != 1 else ''}"
        return self.period

    @property
    def period_tokens(self) -> int | None:
        """The period in tokens (None when a step period cannot be converted)."""
        if self.unit == "tokens":
            return self.every
        return self.every * self.tokens_per_step if self.tokens_per_step else None

    @property
    def frequency(self) -> float | None:
        """Firings per token (1 / period in tokens); None when unknown."""
        p = self.period_tokens
        return 1.0 / p if p else None

    def sort_key(self) -> tuple[int, float, int, str]:
        # Fastest first. In-context levels (unit 0) come before anything counted in steps
        # (unit 1); inside each group the smaller period is faster. Model levels precede the
        # optimizer's own at equal period, since the optimizer is the outermost level.
        if self.steps_every is not None or self.unit == "steps":
            group, p = 1, float(self.steps_every if self.steps_every is not None else self.every)
        else:
            group, p = 0, float(self.every)
        return (group, p, 0 if self.owner == "model" else 1, self.name)


def _classify(period: ir.Period, seq_len: int | None, batch: int | None, *, builtin_step: bool
              ) -> tuple[LevelKind, int | None, int | None]:
    """(class, tokens_every, steps_every) of a period: `spec.periods.classify` (docs/design.md §3.3)."""
    shape = DataShape(seq_len, batch) if seq_len and batch else None
    c = classify(period, shape, outer=builtin_step)
    # a period that does not divide seq_len still fires in context (a memory's last chunk is
    # partial); the checker rejects it where that matters (CMS stages)
    kind = LevelKind.IN_CONTEXT if c.kind == LevelKind.NON_DIVIDING else c.kind
    return kind, c.tokens, c.every_k


def spec_levels(
    spec: ir.Spec, seq_len: int | None = None, batch: int | None = None
) -> list[Level]:
    """The model's levels: declared ones plus the built-ins `token` (when something updates per
    token) and `step` (the outer level; always present), classified and ordered fastest first."""
    tps = seq_len * batch if seq_len and batch else None
    names = list(spec.levels)
    if _uses_token_level(spec) and "token" not in names:
        names.insert(0, "token")
    if "step" not in names:
        names.append("step")
    out: list[Level] = []
    for name in names:
        period = spec.level_period(name)
        cls, t_every, s_every = _classify(
            period, seq_len, batch, builtin_step=(name == "step" and name not in spec.levels)
        )
        doc = spec.levels[name].doc if name in spec.levels else _BUILTIN_DOC.get(name)
        out.append(Level(name, period.every, period.unit, cls, "model", t_every, s_every,
                              tps, doc))
    return sorted(out, key=Level.sort_key)


_BUILTIN_DOC = {
    "token": "built-in: every token (attention caches, C = 1 memories)",
    "step": "built-in: the outer pre-training level, one optimizer step",
}


def _uses_token_level(spec: ir.Spec) -> bool:
    # Memories without a level run at C = 1 token; attention's cache grows every token.
    used = {name for name, m in spec.memories.items() if not isinstance(m, ir.ParametricMemory) or m.level in (None, "token")}
    return bool(used & _used_memories(spec))


def _used_memories(spec: ir.Spec) -> set[str]:
    names: set[str] = set()
    for block in spec.blocks.values():
        for layer in block.layers:
            for attr in ("memory", "attention", "projections"):
                value = getattr(layer, attr, None)
                if isinstance(value, str):
                    names.add(value)
    return names


def optimizer_levels(opt: ir.Optimizer | None) -> tuple[list[dict[str, Any]], str]:
    """The outer optimizer's own levels as dicts (see `nestdsl.optim.levels`), and their source."""
    if opt is None:
        return [], "none"
    from nestdsl.optim.levels import describe_levels

    return [dict(lv) for lv in describe_levels(opt)], "nestdsl.optim.levels"


@dataclass
class Schedule:
    """Which level fires when. `levels` are ordered fastest first.

    Tokens are 1-based positions inside a sequence (1..seq_len); steps are 1-based optimizer
    steps. A level fires at the *end* of its period: a 16-token level at tokens 16, 32, ...;
    a 4-step level at steps 4, 8, ...
    """

    seq_len: int | None
    batch: int | None
    steps: int  # how many optimizer steps the listing/timeline covers
    levels: list[Level] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int | None:
        return self.seq_len * self.batch if self.seq_len and self.batch else None

    def level(self, name: str | Level) -> Level:
        if isinstance(name, Level):
            return name
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"no level {name!r}; levels: {', '.join(lv.name for lv in self.levels)}")

    def fires(self, level: str | Level, token: int | None = None, step: int | None = None) -> bool:
        """Does `level` fire at `token` (of a sequence) and/or at optimizer `step`?

        In-context levels fire at tokens that end a chunk; asked only about a step, they fire
        (they run inside every step's sequences). Persistent and outer levels fire at steps
        that are multiples of k and never inside a sequence (asked only about a token: False).
        """
        if token is None and step is None:
            raise ValueError("give a token, a step, or both")
        if token is not None and token < 1:
            raise ValueError("tokens are 1-based")
        if step is not None and step < 1:
            raise ValueError("steps are 1-based")
        lv = self.level(level)
        if lv.tokens_every is not None:
            if token is None:
                return True
            if self.seq_len is not None and token > self.seq_len:
                return False
            return token % lv.tokens_every == 0
        if lv.steps_every is not None:
            return step is not None and step % lv.steps_every == 0
        return False  # "between": never fires (the checker reports it)

    def firing_tokens(self, level: str | Level) -> range:
        """The tokens (1-based) a level fires at: a lazy range, any sequence length costs O(1)."""
        lv = self.level(level)
        if lv.tokens_every is None or self.seq_len is None:
            return range(0)
        return range(lv.tokens_every, self.seq_len + 1, lv.tokens_every)

    def firing_steps(self, level: str | Level, steps: int | None = None) -> list[int]:
        n = steps if steps is not None else self.steps
        return [s for s in range(1, n + 1) if self.fires(level, step=s)]

    # -- rendering helpers ---------------------------------------------------------------------

    def describe(self, level: str | Level) -> str:
        """When the level fires, in words: 'tokens 16, 32, 48, ... (8x per sequence)'."""
        lv = self.level(level)
        if lv.tokens_every is not None:
            toks = self.firing_tokens(lv)
            if not toks:
                return f"every {lv.tokens_every} tokens inside each sequence"
            return f"tokens {_series(toks)} ({len(toks)}x per sequence)"
        if lv.steps_every is not None:
            k = lv.steps_every
            if k == 1:
                return "every optimizer step"
            return f"steps {_series(list(range(k, k * 4, k)) + [k * 4])}"
        return "never (period between sequence length and tokens per step: invalid)"

    def timeline(self, width: int = 64) -> tuple[str, list[tuple[str, str]], str, list[tuple[str, str]]]:
        """Condensed firing rows: (token header, token rows, step header, step rows).

        One column stands for `g` consecutive tokens (g = ceil(seq_len / width)) and shows `|`
        if the level fires at any of them, so a 4096-token sequence still fits a terminal.
        """
        tok_rows: list[tuple[str, str]] = []
        tok_head = ""
        in_ctx = [lv for lv in self.levels if lv.tokens_every is not None]
        if in_ctx and self.seq_len:
            g = max(1, math.ceil(self.seq_len / width))
            cols = math.ceil(self.seq_len / g)
            unit = "token" if g == 1 else f"{g} tokens"
            tok_head = f"tokens 1..{self.seq_len} (1 column = {unit})"
            for lv in in_ctx:
                e = lv.tokens_every
                assert e is not None  # in_ctx: the levels with a token period
                # column c covers tokens c·g+1 .. min((c+1)·g, T): it fires iff a multiple of e is in it
                row = "".join(
                    "|" if min((c + 1) * g, self.seq_len) // e * e >= c * g + 1 else "."
                    for c in range(cols)
                )
                tok_rows.append((lv.name, row))
        step_rows: list[tuple[str, str]] = []
        stepped = [lv for lv in self.levels if lv.steps_every is not None or lv.kind == LevelKind.BETWEEN]
        step_head = f"optimizer steps 1..{self.steps}" if stepped else ""
        for lv in stepped:
            row = "".join("|" if self.fires(lv, step=s) else "." for s in range(1, self.steps + 1))
            step_rows.append((lv.name, row))
        return tok_head, tok_rows, step_head, step_rows

    def listing(self) -> str:
        """A compact plain-text listing, one line per level, fastest first."""
        head = "schedule:"
        if self.seq_len:
            head += f" seq_len {self.seq_len}"
        if self.batch:
            head += f", batch {self.batch}"
        if self.tokens_per_step:
            head += f" -> {self.tokens_per_step} tokens per step"
        w = max((len(lv.name) for lv in self.levels), default=4)
        pw = max((len(lv.period_text) for lv in self.levels), default=4)
        lines = [head]
        for lv in self.levels:
            lines.append(f"  {lv.name:<{w}}  every {lv.period_text:<{pw}}  {lv.kind:<10}  {self.describe(lv)}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq_len": self.seq_len,
            "batch": self.batch,
            "tokens_per_step": self.tokens_per_step,
            "levels": [
                {"name": lv.name, "period": lv.period, "class": lv.kind, "owner": lv.owner,
                 "tokens_every": lv.tokens_every, "steps_every": lv.steps_every,
                 "fires": self.describe(lv)}
                for lv in self.levels
            ],
        }


def _series(xs: list[int] | range) -> str:
    if len(xs) <= 4:
        return ", ".join(map(str, xs))
    return ", ".join(map(str, xs[:3])) + ", …, " + str(xs[-1])


def _data_shape(spec: ir.Spec, seq_len: int | None, batch: int | None) -> tuple[int | None, int | None]:
    data = spec.data
    if data is not None and not isinstance(data, ir.ContinualData):
        return seq_len or data.seq_len, batch or data.batch
    if isinstance(data, ir.ContinualData):
        return seq_len or data.tasks[0].seq_len, batch or data.tasks[0].batch
    return seq_len, batch


def schedule(
    spec: ir.Spec, seq_len: int | None = None, batch: int | None = None, steps: int | None = None
) -> Schedule:
    """The schedule of a spec's levels (model levels + the outer optimizer's own levels).

    `seq_len`/`batch` default to the spec's `data` section; `steps` (how many optimizer steps
    the listing covers) defaults to enough to show two firings of the slowest level (8..64),
    never more than `train.steps`.
    """
    seq_len, batch = _data_shape(spec, seq_len, batch)
    levels = spec_levels(spec, seq_len, batch) if spec.model is not None else [
        Level("step", 1, "steps", LevelKind.OUTER, "model", None, 1, None, _BUILTIN_DOC["step"])
    ]
    tps = seq_len * batch if seq_len and batch else None
    opt_levels, _ = optimizer_levels(spec.outer_optimizer)
    for d in opt_levels:
        every = int(d.get("period", 1) or 1)
        levels.append(Level(f"opt.{d['name']}", every, "steps", LevelKind.OUTER, "optimizer", None,
                                 every, tps, d.get("doc")))
    levels.sort(key=Level.sort_key)
    if steps is None:
        slowest = max((lv.steps_every or 1 for lv in levels), default=1)
        steps = min(64, max(8, 2 * slowest))
        if spec.train is not None:
            steps = min(steps, spec.train.steps)
    return Schedule(seq_len, batch, steps, levels)
