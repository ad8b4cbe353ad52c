from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from nestdsl.spec import ir, load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.fixture(scope="session")
def load_preset() -> Callable[[str | Path], ir.Spec]:
    """Load a preset (path relative to specs/) once per session; tests must not mutate it."""
    cache: dict[Path, ir.Spec] = {}

    def load(rel: str | Path) -> ir.Spec:
        path = rel if isinstance(rel, Path) and rel.is_absolute() else SPECS / rel
        if path not in cache:
            cache[path] = load_spec(path)
        return cache[path]

    return load


@pytest.fixture(scope="session")
def hope(load_preset: Callable[[str | Path], ir.Spec]) -> ir.Spec:
    return load_preset("hope.yaml")
