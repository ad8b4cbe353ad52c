from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from nestdsl.pipeline import load_spec
from nestdsl.spec import ir

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


#: Hope at seq 128 with its three CMS frequencies (16 tokens, 64 tokens, 4 steps); the preset's
#: own main job runs copy-8 at seq 32, where the mid level has to be 16 tokens too
HOPE_SEQ_128 = ["data={task: niah, variant: 1, seq_len: 128, batch: 8}",
                "levels.cms_mid.every=64 tokens"]


@pytest.fixture(scope="session")
def hope() -> ir.Spec:
    return load_spec(SPECS / "hope.yaml", overrides=HOPE_SEQ_128)
