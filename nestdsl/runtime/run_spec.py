"""Which spec a command runs with: the file the user gives, or the one a checkpoint stores.

`train --resume`, `eval` and `generate` take the spec file as optional: without it they rebuild
the spec a checkpoint was trained with (its canonical form, `spec/identity.py`), `--set`
overrides included. With it, the checkpoint's identity decides: a difference in meaning is
refused with the list of fields (`checkpoint.SpecMismatch`, `--force` to load anyway); a change
of run length or logging (`identity.RUN_FIELDS`) is allowed and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nestdsl.runtime import checkpoint as ck
from nestdsl.spec import ir

__all__ = ["RunSpec", "checkpoint_folder", "from_checkpoint"]


@dataclass
class RunSpec:
    """A spec to run, the text a new checkpoint records for it, and where it came from."""

    spec: ir.Spec
    text: str
    origin: str                        # "file" or the checkpoint folder it was read from
    notes: list[str] = field(default_factory=list)


def checkpoint_folder(path: Path) -> Path:
    """The checkpoint folder `path` names: itself, or a run folder's newest complete one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ck.CheckpointError(f"checkpoint not found: {p}")
    if not p.is_dir():
        raise ck.CheckpointError(f"{p} is a file; --ckpt takes a run folder or one of its "
                                 "step_N checkpoint folders")
    if (p / ck.META_FILE).exists():
        return p
    latest = ck.find_latest(p)
    if latest is None:
        raise ck.CheckpointError(f"no complete checkpoint in {p}")
    return latest


def from_checkpoint(path: Path, overrides: list[str] | None = None) -> RunSpec:
    """The spec stored in a checkpoint (its newest one for a run folder), `overrides` applied."""
    from nestdsl.pipeline import spec_from_canonical

    folder = checkpoint_folder(path)
    meta = ck.read_meta(folder)
    stored = meta.get("spec") or {}
    if "canonical" not in stored:
        raise ck.CheckpointError(
            f"{folder} predates stored specs (written by an older nestdsl); give the spec file "
            "it was trained with")
    spec = spec_from_canonical(stored["canonical"], label=f"{folder}/{ck.META_FILE} (stored spec)",
                               source_file=stored.get("source"), overrides=overrides)
    text = meta.get("spec_text") or ""
    text += "".join(f"\n# --set {s}" for s in overrides or [])
    return RunSpec(spec, text, str(folder))

