"""What makes two specs the same run: a checkpoint is identified by the *meaning* of its spec.

A checkpoint records its spec in two forms (`runtime/checkpoint.py`):

* the **canonical** form — what the user wrote plus every `--set`, as plain data, with a file
  reference `optimizer: adamw` replaced by the optimizer itself — from which
  `eval`, `generate` and `train --resume` rebuild the spec when none is given;
* the **identity** — the resolved spec (every default filled in) minus the fields that do not
  change what is computed: the run's name and docs, its length and its logging
  (`RUN_FIELDS`). Comments, key order, `fmt`, the `.nest` twin of a YAML spec, a default written
  out or left implicit: none of them changes the identity.

`differences(stored, current)` lists what differs, path by path, so a refusal can say what
changed instead of "another spec".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nestdsl.spec import ir

__all__ = ["RUN_FIELDS", "Difference", "canonical", "differences", "identity", "identity_hash",
           "record", "run_fields"]

#: Fields that may change between a checkpoint and the spec that loads it: how long the run is,
#: how it logs and checkpoints, whether it is compiled (the same function), how processes share
#: it (a run may resume under another `parallel`), names and docs.
RUN_FIELDS: tuple[tuple[str, ...], ...] = (
    ("name",), ("doc",),
    ("train", "steps"), ("train", "log_every"), ("train", "ckpt_every"),
    ("train", "telemetry"), ("train", "state_norm_warn"), ("train", "compile"),
    ("train", "parallel"),
)


def canonical(spec: ir.Spec) -> dict[str, Any]:
    """The spec as written (explicit fields only, overrides applied), with a referenced outer
    optimizer inlined: plain JSON data that `spec_from_canonical` turns back into this spec."""
    data = spec.model_dump(mode="json", exclude_unset=True)
    if isinstance(spec.optimizer, str) and spec.outer_optimizer is not None:
        data["optimizer"] = spec.outer_optimizer.model_dump(mode="json", exclude_unset=True)
    return data


def identity(spec: ir.Spec) -> dict[str, Any]:
    """The resolved spec's fields, every default included, `RUN_FIELDS` and docs left out."""
    from nestdsl.spec.resolve import resolve

    resolved = resolve(spec)
    data = resolved.model_dump(mode="json")
    opt = resolved.outer_optimizer
    data["optimizer"] = None if opt is None else opt.model_dump(mode="json")
    if data.get("train") is None:          # no `train:` section trains with its defaults
        data["train"] = ir.Train().model_dump(mode="json")
    for path in RUN_FIELDS:
        _drop(data, path)
    for level in (data.get("levels") or {}).values():
        level.pop("doc", None)
    return data


def identity_hash(ident: dict[str, Any]) -> str:
    """sha256 of an identity's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode("utf-8")).hexdigest()


def run_fields(spec: ir.Spec) -> dict[str, Any]:
    """The values of `RUN_FIELDS` that are not in the identity (as `differences` reports them)."""
    data = spec.model_dump(mode="json")
    data.setdefault("train", None)
    train = data["train"] or ir.Train().model_dump(mode="json")
    out: dict[str, Any] = {"name": data.get("name"), "doc": data.get("doc")}
    for path in RUN_FIELDS[2:]:
        out[".".join(path)] = train.get(path[1])
    return out


@dataclass(frozen=True)
class Difference:
    """One field whose value differs: `path` (dotted), the stored and the current value."""

    path: str
    stored: Any
    current: Any

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.stored)} → {_show(self.current)}"


def differences(stored: Any, current: Any, prefix: str = "") -> list[Difference]:
    """Every leaf where two JSON-like values differ (a missing key reads as absent)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out: list[Difference] = []
        for key in sorted(set(stored) | set(current), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                out.append(Difference(path, _ABSENT, current[key]))
            elif key not in current:
                out.append(Difference(path, stored[key], _ABSENT))
            else:
                out += differences(stored[key], current[key], path)
        return out
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        return [d for i, (a, b) in enumerate(zip(stored, current, strict=True))
                for d in differences(a, b, f"{prefix}.{i}")]
    return [] if stored == current else [Difference(prefix or "<spec>", stored, current)]


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "…"


def _drop(data: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = data
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def record(spec: ir.Spec) -> dict[str, Any]:
    """What a checkpoint stores about its spec (beside the text): the canonical form, the
    identity and its hash, the run fields, and the original file."""
    from pathlib import Path

    ident = identity(spec)
    src = spec.source_file
    return {"canonical": canonical(spec), "identity": ident, "identity_hash": identity_hash(ident),
            "run": run_fields(spec), "source": str(Path(src).resolve()) if src else None}
