"""The compiler's stages, in order, each producing the artefact the next one reads.

    parse     text -> Document -> ir.Spec      nestdsl/spec (syntax, pydantic validation, positions)
    check     ir.Spec -> checked ir.Spec       nestdsl/check (semantic rules; SpecError or nothing)
    resolve   checked ir.Spec -> Resolved      defaults, the level schedule, every chunk size
    lower     Resolved -> CompiledSystem       nestdsl/lower (torch modules; never re-validates)

Each package knows only the stages before it: `spec/` never imports `check/`, `check/` is a
leaf over `spec/`, and the joins between them (a file that is parsed *and* checked, a checkpoint's
stored spec rebuilt and checked) live here. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any

from nestdsl.check import check_spec, with_semantic_problems
from nestdsl.diagnostics import SpecError
from nestdsl.spec import apply_override, ir, parse_document, parse_file
from nestdsl.spec.periods import DataShape
from nestdsl.spec.resolve import resolve
from nestdsl.spec.source import Document
from nestdsl.spec.validate import validate_document

if TYPE_CHECKING:   # the schedule's package imports networkx: not for `nestdsl check`
    from nestdsl.graph.schedule import Schedule

__all__ = ["Resolved", "checked", "ensure_checked", "load_spec", "resolve_spec", "spec_from_canonical"]


# ---------------------------------------------------------------------------------------------
# parse + check


def checked(spec: ir.Spec, doc: Document) -> ir.Spec:
    """The check stage: raise SpecError with every semantic problem, else mark `spec` checked
    (its warnings are issued as `SpecWarning`s) and return it."""
    check_spec(spec, doc)
    spec._checked = True
    return spec


def load_spec(path: str | FsPath, *, check: bool = True, overrides: list[str] | None = None) -> ir.Spec:
    """Parse, validate and (by default) semantically check a spec file.

    `overrides` are `key.path=value` strings (`--set train.steps=50`) applied before validation.
    An `optimizer: adamw` (a shipped optimizer spec) or `optimizer: path/to/optim.yaml` reference
    is loaded and checked too; the result is available as `spec.outer_optimizer`.
    """
    try:
        doc, spec = parse_file(path, overrides)
    except SpecError as e:
        raise with_semantic_problems(e) from None
    if check:
        checked(spec, doc)
    return spec


def ensure_checked(spec: ir.Spec) -> ir.Spec:
    """`spec`, checked: a spec that came from `load_spec` is returned as is; one parsed but not
    checked is checked against its own document; one built in Python is checked against its
    canonical YAML (diagnostics then point into that text, labelled `<python spec 'name'>`)."""
    if spec._checked:
        return spec
    doc = spec._document
    if doc is None:
        import yaml

        from nestdsl.spec.identity import canonical

        label = f"<python spec '{spec.name}'>"
        doc = parse_document(yaml.safe_dump(canonical(spec), sort_keys=False, allow_unicode=True),
                             label, "yaml")
    return checked(spec, doc)


def spec_from_canonical(data: dict[str, Any], *, label: str, source_file: str | None = None,
                        overrides: list[str] | None = None) -> ir.Spec:
    """Rebuild and check a spec from its canonical form (`spec.identity.canonical`; `label` names
    it in diagnostics; `source_file` is the original spec's path, so relative data paths still
    resolve; `overrides` are `--set key=value` strings applied on top)."""
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    doc = parse_document(text, label, "yaml")
    for pair in overrides or []:
        apply_override(doc, pair)
    try:
        spec = validate_document(doc)
    except SpecError as e:
        raise with_semantic_problems(e) from None
    spec._source_file = label
    checked(spec, doc)
    if source_file is not None:
        spec._source_file = source_file
    return spec


# ---------------------------------------------------------------------------------------------
# resolve


@dataclass(frozen=True)
class Resolved:
    """A checked spec with everything the lowering and the level graph read decided once:
    every memory default filled in (`spec/resolve.py`), the levels classified into a schedule
    against the data shape, and each parametric memory's chunk size C (its level's period in
    tokens, docs/design.md §3.1)."""

    spec: ir.Spec
    shape: DataShape
    schedule: Schedule
    chunk_sizes: Mapping[str, int]

    def chunk_size(self, memory: str) -> int:
        """The chunk size C of the parametric memory named `memory`."""
        return self.chunk_sizes[memory]


def resolve_spec(spec: ir.Spec) -> Resolved:
    """The resolve stage of a checked spec (the checker guarantees that every parametric
    memory's level exists and has an in-context token period)."""
    from nestdsl.graph.schedule import schedule

    resolved = resolve(spec)
    shape = DataShape.of(resolved)
    sched = schedule(resolved, shape.seq_len, shape.batch)
    chunks = {name: period.every for name, period in _memory_periods(resolved)
              if period.unit == "tokens"}
    return Resolved(spec=resolved, shape=shape, schedule=sched, chunk_sizes=chunks)


def _memory_periods(spec: ir.Spec) -> list[tuple[str, ir.Period]]:
    known = {*spec.levels, *ir.BUILTIN_LEVELS, None}
    return [(name, spec.level_period(mem.level)) for name, mem in spec.memories.items()
            if isinstance(mem, ir.ParametricMemory) and mem.level in known]
