"""Building blocks shared by the lowered layers: build context, norms, gates, conv, RoPE,
the compiled-with-eager-twin wrapper, and positioned lowering errors."""

from __future__ import annotations

import contextlib
import math
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestdsl.codes import Code
from nestdsl.diagnostics import Diagnostic, Span, SpecError
from nestdsl.graph.schedule import Level, Schedule
from nestdsl.pipeline import Resolved, resolve_spec
from nestdsl.spec import ir

# ---------------------------------------------------------------------------------------------
# Errors with spec positions


def spec_error(spec: ir.Spec, node: Any, message: str, hint: str | None = None,
               code: Code = Code.LOWER) -> SpecError:
    """A `SpecError` pointing at `node`'s span (or the top of the file when it has none)."""
    file = spec.source_file or f"<spec {spec.name}>"
    span = getattr(node, "span", None) or Span(file, 1, 1)
    sources: dict[str, str] = {}
    try:
        if span.file and Path(span.file).is_file():
            sources[span.file] = Path(span.file).read_text(encoding="utf-8")
    except OSError:
        pass
    return SpecError([Diagnostic(span, message, hint, code=code)], sources)


# ---------------------------------------------------------------------------------------------
# torch.compile with an eager twin


@dataclass
class CompileConfig:
    """Shared by every layer of one model: compile on/off and what happened (for the plan)."""

    enabled: bool = True
    failures: dict[str, str] = field(default_factory=dict)   # function name -> reason
    # Set by layers whose compiled graphs are back-propagated through twice (the CMS task sweep's
    # retain_graph): no donated buffers (AOTAutograd refuses a second backward) and no in-place
    # buffer reuse in inductor's backward graphs (it clobbers saved tensors: wrong gradients on
    # the second backward; torch 2.13, CPU). Scoped to this model's compiled functions.
    repeated_backward: bool = False
    # Graphs per compiled function (one per layer, chunk shape and gate configuration): deep
    # hybrids need more than dynamo's default before they would silently drop to eager.
    recompile_limit: int = 64
    # Memory scans keep their state every G chunks and recompute inside a group in backward
    # (ops.memory_scan's checkpoint_every; sequences under 2·G chunks run plainly); None saves
    # every chunk's intermediates. Measured (titans-lmm, width 1024, T = 2048, fp32; KiB kept per
    # token and layer, transformer 123): none 694, G 1 414, 2 286, 4 222, 8 190, 16 174
    # (benchmarks/bench_memory.py).
    checkpoint_every: int | None = 16
    # Forced memory kernels (ops/kernels.py): spec memory name → kernel name; "*" for every
    # parametric memory. Unnamed memories choose automatically.
    kernels: dict[str, str] = field(default_factory=dict)

    def note_failure(self, name: str, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        reason = f"{type(exc).__name__}: {first}"
        self.failures[name] = reason
        warnings.warn(f"nestdsl: torch.compile failed for {name}; running it eagerly ({reason})",
                      RuntimeWarning, stacklevel=3)


class Compiled:
    """`fn` and its `torch.compile`d twin. Which one runs is decided per call from the shared
    `CompileConfig`; a compile failure switches this function to eager and records the reason,
    so the plan shows it (never a silent fallback)."""

    def __init__(self, fn: Callable[..., Any], name: str, config: CompileConfig) -> None:
        self.fn = fn
        self.name = name
        self.config = config
        self._compiled: Callable[..., Any] | None = None

    @property
    def active(self) -> bool:
        return self.config.enabled and self.name not in self.config.failures

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            if self.config.repeated_backward:
                # static shapes: a graph with symbolic shapes compiles its backward lazily, at the
                # first backward, outside `compile_scope` (so with donated buffers)
                self._compiled = torch.compile(_own_code(self.fn), dynamic=False,
                                               options={"inplace_buffers": False})
            else:
                self._compiled = torch.compile(self.fn)
        try:
            if _SCOPE.config is self.config:      # inside the model's call (NestModel.hidden)
                return self._compiled(*args, **kwargs)
            with compile_scope(self.config):
                return self._compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure falls back to eager
            # If eager fails too, it was the input, not the compiler: raise eager's error and
            # keep compiling. Otherwise record the fallback (shown in the plan) and go on eagerly.
            out = self.fn(*args, **kwargs)
            self.config.note_failure(self.name, e)
            return out


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with a code object of its own. Dynamo keeps compiled graphs per code object, so
    without this a repeated-backward model could be handed a graph another model compiled with
    donated buffers (same function, same shapes): its second backward would fail."""
    bound = getattr(fn, "__self__", None)
    f = getattr(fn, "__func__", fn)
    code = f.__code__.replace(co_name=f"{f.__code__.co_name}__repeated_backward")
    g = types.FunctionType(code, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    g.__kwdefaults__ = f.__kwdefaults__
    return types.MethodType(g, bound) if bound is not None else g


class _Scope(threading.local):
    config: CompileConfig | None = None


_SCOPE = _Scope()


@contextlib.contextmanager
def compile_scope(config: CompileConfig) -> Iterator[None]:
    """The torch settings a model's compiled functions run (and compile) under, set only for the
    call: dynamo's recompile limit and, for repeated backward, no donated buffers.

    The model enters it once per call (`NestModel.hidden`) and its compiled pieces see that;
    a piece called on its own enters it itself. (Swapping torch's config attributes costs ~25 µs,
    and the chunk loops call compiled pieces hundreds of times per step.)"""
    if _SCOPE.config is config:
        yield
        return
    import torch._dynamo as dynamo
    import torch._functorch.config as functorch_config

    limit = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
    swaps = [(dynamo.config, limit, max(getattr(dynamo.config, limit), config.recompile_limit))]
    if config.repeated_backward:
        swaps.append((functorch_config, "donated_buffer", False))
        # and no AOTAutograd cache: its key ignores `donated_buffer`, so a warm cache can hand
        # back an identical graph compiled with donated buffers
        swaps.append((functorch_config, "enable_autograd_cache", False))
    old = [getattr(mod, name) for mod, name, _ in swaps]
    outer, _SCOPE.config = _SCOPE.config, config
    try:
        for mod, name, value in swaps:
            setattr(mod, name, value)
        yield
    finally:
        for (mod, name, _), value in zip(swaps, old, strict=True):
            setattr(mod, name, value)
        _SCOPE.config = outer


def compile_status(config: CompileConfig, names: list[str], what: str) -> tuple[str, str]:
    """(short status for the plan's `compiled` column, a note saying what/why)."""
    if not config.enabled:
        return "eager", "eager: compile disabled"
    failed = [f"{n}: {config.failures[n]}" for n in names if n in config.failures]
    if failed:
        return "eager (FALLBACK)", "compile failed, fell back to eager: " + "; ".join(failed)
    return "compiled", f"compiled: {what}"


# ---------------------------------------------------------------------------------------------
# Build context


@dataclass
class BuildContext:
    """What a layer builder needs: the resolved spec (defaults, schedule, chunk sizes: decided
    once by the resolve stage, nestdsl/pipeline.py) and the shared compile configuration.

    The spec has passed the checker (`compile_spec` checks an unchecked one first), so nothing
    here re-validates: a broken invariant is a bug, asserted, not a user error."""

    spec: ir.Spec
    compile: CompileConfig
    resolved: Resolved = field(init=False)

    def __post_init__(self) -> None:
        self.resolved = resolve_spec(self.spec)
        self.spec = self.resolved.spec

    @property
    def schedule(self) -> Schedule:
        """The levels, classified once against the data shape the checker and the runtime use."""
        return self.resolved.schedule

    def level(self, name: str) -> Level:
        """The spec's level `name` (declared or built-in), classified (the checker accepted it)."""
        return self.schedule.level(name)

    @property
    def model(self) -> ir.Model:
        assert self.spec.model is not None
        return self.spec.model

    @property
    def width(self) -> int:
        return self.model.width

    def error(self, node: Any, message: str, hint: str | None = None) -> SpecError:
        return spec_error(self.spec, node, message, hint)

    def memory(self, name: str) -> ir.Memory:
        """The resolved memory `name` (the checker resolved every reference)."""
        return self.spec.memories[name]

    def heads_and_dim(self, mem: ir.Memory | None) -> tuple[int, int]:
        """(heads, head_dim): heads from the memory (default model.heads) split the width."""
        H = (mem.heads if mem is not None and mem.heads else None) or self.model.heads
        assert self.width % H == 0, "heads divide the width (checker)"
        return H, self.width // H

    def chunk_size(self, memory: str) -> int:
        """The chunk size C of the memory named `memory` (docs/design.md §3.1), resolved once."""
        return self.resolved.chunk_size(memory)


# ---------------------------------------------------------------------------------------------
# Modules


class RMSNorm(nn.Module):
    """x / rms(x) · w (no mean subtraction)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    return nn.Identity()


_ROLE_DEFAULT_INIT = {"lr": None, "retention": 0.99, "momentum": 0.9}


class LearnedGateModule(nn.Module):
    """A data-dependent per-head gate (docs/design.md §2): g_t = scale · squash(⟨w_h, x_t⟩ + b_h).

    The projection weight starts at zero and the bias at squash⁻¹(init / scale), so every
    token's initial gate equals `init` exactly; the weights then learn the data dependence.
    Without `init`, library defaults: lr squash(0)·scale, retention 0.99, momentum 0.9
    (clipped into the squash's range).
    """

    def __init__(self, width: int, heads: int, gate: ir.LearnedGate, role: str) -> None:
        super().__init__()
        self.squash = gate.learned
        self.scale = float(gate.scale)
        self.proj = nn.Linear(width, heads)
        nn.init.zeros_(self.proj.weight)
        init = gate.init if gate.init is not None else _ROLE_DEFAULT_INIT.get(role)
        b = 0.0
        if init is not None:
            r = init / self.scale
            if self.squash == "sigmoid":
                # a library default outside (0, scale) leaves the bias at 0; a written init
                # outside it is a checker error (`range`)
                assert gate.init is None or 0 < r < 1, "a sigmoid gate's init lies in (0, scale) (checker)"
                if 0 < r < 1:
                    b = math.log(r / (1 - r))
            else:
                assert r > 0, "a softplus gate's init is positive (checker)"
                b = r + math.log(-math.expm1(-r))          # softplus⁻¹(r), stable
        nn.init.constant_(self.proj.bias, b)
        # in floats, not tensors: a model built on the meta device (size estimates) has no values
        self.init_value = self.scale * (1 / (1 + math.exp(-b)) if self.squash == "sigmoid"
                                        else math.log1p(math.exp(b)))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, D) → (B, H, T)."""
        z = self.proj(x).transpose(1, 2)
        g = torch.sigmoid(z) if self.squash == "sigmoid" else F.softplus(z)
        return g * self.scale


def describe_gate(g: ir.Gate | None, default: str) -> str:
    if g is None:
        return default
    if isinstance(g, ir.LearnedGate):
        return f"learned {g.learned}×{g.scale:g}" + (f" (init {g.init:g})" if g.init is not None else "")
    return f"{float(g):g}"


class ShortConv(nn.Module):
    """Depthwise causal conv of width K over (B, T, D) (Titans §4.4); streaming keeps the last
    K−1 inputs, so segments give the same result as one call."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        # (D, K): the last tap multiplies the current token. Init like nn.Conv1d (groups=D).
        self.weight = nn.Parameter(torch.empty(dim, width).uniform_(-1 / math.sqrt(width),
                                                                     1 / math.sqrt(width)))

    def forward(self, x: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (B, T, D), cache (B, K−1, D) or None (zeros) → (y (B, T, D), new cache)."""
        K = self.width
        if cache is None:
            cache = x.new_zeros(x.shape[0], K - 1, x.shape[2])
        xp = torch.cat([cache, x], dim=1)                           # (B, K−1+T, D)
        y = F.conv1d(xp.transpose(1, 2), self.weight[:, None, :].to(x.dtype), groups=x.shape[2])
        return y.transpose(1, 2), xp[:, xp.shape[1] - (K - 1):]


def rope(x: Tensor, offset: int, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (rotate-half form) for x (B, H, T, d) at positions offset+t."""
    d = x.shape[-1]
    half = d // 2
    inv = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    pos = torch.arange(offset, offset + x.shape[-2], device=x.device, dtype=torch.float32)
    ang = pos[:, None] * inv[None, :]                               # (T, d/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    rot = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rot if 2 * half == d else torch.cat([rot, x[..., 2 * half:]], dim=-1)


def split_heads(x: Tensor, H: int) -> Tensor:
    """(B, T, H·d) → (B, H, T, d)."""
    B, T, _ = x.shape
    return x.view(B, T, H, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, d) → (B, T, H·d)."""
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
