"""Shared helpers for the lowering tests: build a system from inline YAML, randomise gates."""

from __future__ import annotations

import textwrap

import torch

from nestdsl.lower import compile_spec
from nestdsl.spec import parse_text


def build(yaml_text: str, *, compile: bool = False, seed: int = 0):
    """Lower an inline spec (dedented YAML) eagerly, with a fixed seed."""
    _, spec = parse_text(textwrap.dedent(yaml_text), "<test>", "yaml")
    torch.manual_seed(seed)
    return compile_spec(spec, compile=compile)


def model_spec(memories: str, layers: str, *, width: int = 16, heads: int = 2, depth: int = 1,
               levels: str = "") -> str:
    """A one-block spec: `memories` and `layers` are YAML snippets (already indented by 2/6)."""
    return (
        "nestdsl: 1\nname: t\n"
        f"model: {{vocab: 32, width: {width}, depth: {depth}, heads: {heads}, pattern: [b]}}\n"
        + (f"levels:\n{levels}\n" if levels else "")
        + f"memories:\n{memories}\n"
        + f"blocks:\n  b:\n    layers:\n{layers}\n"
    )


def randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 1) -> None:
    """Give zero-initialised gate projections (and everything else) random values, so tests
    exercise the data dependence of every gate."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "gates" in name or "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * std)


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_close_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 3e-5,
                       rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys(), set(a) ^ set(b)
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=atol, rtol=rtol, msg=lambda m, n=n: f"{n}: {m}")
