"""nestdsl: a declarative language and compiler for Nested Learning systems.

Importing `nestdsl` does not import torch; `nestdsl.compile` (and the ops, optimizers and
runtime) import it on first use, so `nestdsl check | fmt | graph | schema` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "compile", "load"]


def load(path: str) -> Any:
    """Parse and check a spec file (YAML or .nest); raises `SpecError` on problems."""
    from nestdsl.pipeline import load_spec

    return load_spec(path)


def compile(spec_or_path: Any, **kwargs: Any) -> Any:  # noqa: A001 - mirrors torch.compile naming
    """Lower a spec to a trainable, `torch.compile`d system (see `nestdsl.lower`)."""
    from nestdsl.lower import compile_spec

    return compile_spec(spec_or_path, **kwargs)
