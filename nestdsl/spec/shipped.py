"""The optimizer specs shipped with nestdsl, referenced by name: `optimizer: adamw`.

They live in the package (`nestdsl/optim/specs/<name>.yaml`, with a `.nest` twin each; declared
as package data in pyproject.toml), so a name resolves the same from any folder and from an
installed wheel. A model spec may still give a path (`optimizer: my/opt.yaml`), relative to its
own folder first; see `nestdsl.spec.resolve_optimizer_path` for the order.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

__all__ = ["OPTIMIZER_DIR", "is_bare_name", "optimizer_names", "shipped_optimizer", "shown_path"]

#: Where the shipped optimizer specs are (a real folder: nestdsl is never imported from a zip).
OPTIMIZER_DIR = Path(str(resources.files("nestdsl").joinpath("optim", "specs")))

_BARE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\Z")


def is_bare_name(ref: str) -> bool:
    """A reference that reads as a name (`adamw`, `sgd-momentum`), not as a path to a file."""
    return bool(_BARE.match(ref))


@cache
def optimizer_names() -> tuple[str, ...]:
    """The names of the shipped optimizer specs, sorted (`adamw`, `delta-momentum`, ...)."""
    return tuple(sorted(p.stem for p in OPTIMIZER_DIR.glob("*.yaml")))


def shipped_optimizer(name: str) -> Path | None:
    """The file of the shipped optimizer spec `name` (its YAML form), or None."""
    if name not in optimizer_names():
        return None
    return OPTIMIZER_DIR / f"{name}.yaml"


def shown_path(path: Path) -> str:
    """A shipped spec as `nestdsl/optim/specs/<name>.yaml` (the same on every machine); any
    other file as given."""
    try:
        return str(path.resolve().relative_to(OPTIMIZER_DIR.resolve().parents[2]))
    except ValueError:
        return str(path)
