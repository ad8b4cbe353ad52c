"""How much memory a spec asks for, estimated before anything is allocated.

A typo such as `width: 1000000000` or `depth: 100000` passes every rule of the checker (they are
valid numbers) and would then allocate terabytes, or spend minutes building modules. Before
lowering, each distinct block is built once on PyTorch's `meta` device (shapes, no storage)
and its parameters are counted; the model's count is that times how often the pattern repeats
the block, plus the embedding and head. From it:

* weights: 4 bytes per parameter (fp32);
* training: 16 bytes per parameter (weights, gradients, two Adam moments) plus the activations
  of one step, ≈ `ACTIVATION_BYTES` × batch × seq_len × width per layer (an order of
  magnitude: memories keep chunk-start states on top).

A spec over the limit is refused with the estimate and how to raise the limit (the
`NESTDSL_MEMORY_LIMIT_GB` environment variable; default: the machine's RAM, or the GPU's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from nestdsl.codes import Code
from nestdsl.spec import ir

__all__ = ["ACTIVATION_BYTES", "LIMIT_ENV", "SizeEstimate", "check_size", "estimate", "limit_bytes"]

ACTIVATION_BYTES = 64          # bytes kept per (token · width · layer) in one training step
LIMIT_ENV = "NESTDSL_MEMORY_LIMIT_GB"


class BadLimit(ValueError):
    """The limit variable does not parse (a user's mistake: one line, exit 2)."""

    user_error = True


@dataclass(frozen=True)
class SizeEstimate:
    params: int
    activation_bytes: int

    @property
    def weight_bytes(self) -> int:
        return 4 * self.params

    @property
    def train_bytes(self) -> int:
        return 16 * self.params + self.activation_bytes


def estimate(spec: ir.Spec, ctx: object) -> SizeEstimate:
    """Parameters and one training step's activations of `spec` (`ctx`: its BuildContext)."""
    from nestdsl.lower.model import Block

    m = spec.model
    assert m is not None
    counts: dict[str, int] = {}
    for i in range(m.depth):
        name = m.pattern[i % len(m.pattern)]
        counts[name] = counts.get(name, 0) + 1
    params = m.vocab * m.width * (1 if m.tie_embeddings else 2) + m.width
    layers = 0
    with torch.device("meta"):
        for name, n in counts.items():
            if name not in spec.blocks:
                continue                       # the model reports the unknown block by name
            n_layers = len(spec.blocks[name].layers)
            try:
                block = Block(ctx, spec.blocks[name], "size-estimate")  # type: ignore[arg-type]
                params += n * sum(p.numel() for p in block.parameters())
            except RuntimeError:    # a shape too large for even a meta tensor: ~12 width² a layer
                params += n * n_layers * 12 * m.width**2
            layers += n * n_layers
    data = spec.data.tasks[0] if isinstance(spec.data, ir.ContinualData) else spec.data
    batch, seq_len = (data.batch, data.seq_len) if data is not None else (8, 128)
    return SizeEstimate(params, ACTIVATION_BYTES * batch * seq_len * m.width * max(layers, 1))


def limit_bytes(device: str | torch.device = "cpu") -> int:
    """The most a spec may ask for: `NESTDSL_MEMORY_LIMIT_GB`, else the device's memory."""
    env = os.environ.get(LIMIT_ENV)
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            raise BadLimit(f"{LIMIT_ENV}={env!r} is not a number of GiB") from None
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 2**40


def check_size(spec: ir.Spec, ctx: object, *, device: str | torch.device = "cpu",
               training: bool = False) -> SizeEstimate:
    """Raise a positioned `SpecError` when `spec` needs more than `limit_bytes(device)`."""
    from nestdsl.lower.common import spec_error

    m = spec.model
    assert m is not None
    est = estimate(spec, ctx)
    need = est.train_bytes if training else est.weight_bytes
    limit = limit_bytes(device)
    if need <= limit:
        return est
    raise_limit = f"to go ahead anyway, raise the limit: {LIMIT_ENV}=<GiB>"
    data = spec.data.tasks[0] if isinstance(spec.data, ir.ContinualData) else spec.data
    if training and data is not None and est.activation_bytes > 16 * est.params:
        # The step's activations, not the weights, are what does not fit: point at the data.
        raise spec_error(
            spec, data,
            f"batch too large: one training step keeps about {_gib(est.activation_bytes)} of "
            f"activations (batch {data.batch} × seq_len {data.seq_len} × width {m.width}; "
            f"limit {_gib(limit)})",
            f"check data.batch / data.seq_len for a typo; {raise_limit}", code=Code.SIZE)
    what = ("training needs" if training else "the weights need")
    raise spec_error(
        spec, m,
        f"model too large: {est.params:,} parameters; {what} about {_gib(need)} "
        f"(limit {_gib(limit)}, width {m.width}, depth {m.depth})",
        f"check model.width / model.depth / data.batch × seq_len for a typo; {raise_limit}",
        code=Code.SIZE)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**28 else f"{n / 2**20:,.1f} MiB"
