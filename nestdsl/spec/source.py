"""Source positions and the parsed document that both surface syntaxes produce.

A `Document` is plain data (dicts, lists, scalars) plus a map from each node's path
(a tuple of keys/indices) to where it was written. The YAML loader and the `.nest` parser both
produce one; `nestdsl.spec.validate` turns it into the pydantic IR and maps validation errors
back to file:line:col through `Document.position`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nestdsl.diagnostics import Span

__all__ = ["Document", "Path", "Span"]

Path = tuple[str | int, ...]


#: The tag of a function-discriminated union's member without a `type` (spec/optimizers.py).
UNTYPED_TAG = "inherit"


@dataclass
class Document:
    """Parsed spec data with a position for every node.

    `positions[path]` is where the node's value starts; `key_positions[path]` is where the key
    naming it was written (for mapping entries), which is where "unknown field" errors point.
    A node that validation moves keeps its positions under its new path too (see `moved`).
    """

    file: str
    text: str
    data: Any
    positions: dict[Path, Span] = field(default_factory=dict)
    key_positions: dict[Path, Span] = field(default_factory=dict)
    syntax: str = "yaml"
    # Nodes validation moved (an inline level lifted into `levels:`): new path → written path.
    moved: dict[Path, Path] = field(default_factory=dict)

    def written(self, path: Path) -> Path:
        """Where the node at `path` was written (differs for a node validation moved)."""
        p = tuple(path)
        for new, old in self.moved.items():
            if p[: len(new)] == new:
                return old + p[len(new):]
        return p

    def position(self, path: Path, *, key: bool = False) -> Span:
        """The closest known position for `path` (walks up to the nearest recorded ancestor)."""
        p = tuple(path)
        while True:
            if key and p in self.key_positions:
                return self.key_positions[p]
            if p in self.positions:
                return self.positions[p]
            if not p:
                return Span(self.file, 1, 1)
            p = p[:-1]

    def get(self, path: Path) -> Any:
        node = self.data
        for part in path:
            node = node[part]
        return node

    def find(self, path: Path, default: Any = None) -> Any:
        """The value written at `path`, or `default` when the source has no such node."""
        node: Any = self.data
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                return default
        return node

    def strip_tags(self, loc: tuple[Any, ...]) -> tuple[Any, ...]:
        """Drop the discriminator tags pydantic inserts into an error `loc`.

        For a discriminated union (layers by `type`, data by `task`, memories by `kind`) pydantic puts the tag value
        after the union's position: ``('blocks', 'b', 'layers', 0, 'memory', 'conv')``. A tag
        can collide with a real field name (the `memory` layer has a `memory` field), so a part
        is a tag exactly when it equals the `type`/`task`/`kind` of the mapping at that point and
        is not one of its keys. A union tagged by a function (optimizer `groups`) names its untyped
        member `inherit` (`UNTYPED_TAG`), a tag where the mapping has no `type`.
        """
        node = self.data
        out: list[Any] = []
        for part in loc:
            if isinstance(node, dict) and isinstance(part, str) and part not in node and "[" in part:
                continue  # a union member's schema name (`tagged-union[...]`), not a key
            if isinstance(node, dict) and isinstance(part, str) and part not in node \
                    and (part in (node.get("type"), node.get("task"), node.get("kind"))
                         or (part == UNTYPED_TAG and node.get("type") is None)):
                continue
            out.append(part)
            if isinstance(node, dict):
                node = node.get(part) if isinstance(part, str) else None
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                node = None
        return tuple(out)

    def resolve_path(self, loc: tuple[Any, ...]) -> Path:
        """Map a pydantic error `loc` onto a document path.

        pydantic inserts discriminator tags and union member names into `loc`
        (e.g. ``('blocks', 'b', 'layers', 0, 'memory', 'conv')``); keep only the parts that
        exist in the document so positions can be looked up.
        """
        node = self.data
        out: list[str | int] = []
        for part in self.strip_tags(loc):
            if isinstance(node, dict) and part in node:
                out.append(part)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                out.append(part)
                node = node[part]
            elif isinstance(node, (dict, list)):
                # A union member name (skip) or a missing key (stop here, keep the tail for messages).
                continue
            else:
                break
        return tuple(out)
