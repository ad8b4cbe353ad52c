"""The registry of diagnostic codes: every `Diagnostic.code`, what it means and the usual fix.

A code names a *kind* of problem; the message and hint of each diagnostic say the specifics.
The values are the strings `nestdsl check --json` prints in `"code"`, so they are stable: rename
one only together with the golden files. `nestdsl codes` lists them, `nestdsl codes CODE`
explains one.

pydantic's error types become registry codes in `nestdsl/spec/validate.py`:

    extra_forbidden                              unknown-field (unknown-key / combination when
                                                 another optimizer / memory type reads the field)
    missing, union_tag_not_found                 missing
    union_tag_invalid, literal_error             unknown-value
    greater_than(_equal), less_than(_equal),
    too_short, too_long                          range
    *_type, *_parsing, int_from_float, ...       type
    value_error and any other type               value

Nothing here imports from nestdsl (or torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CODES", "Code", "CodeInfo", "explain"]


class Code(StrEnum):
    """A diagnostic code. A member equals its string (`Code.SYNTAX == "syntax"`)."""

    # reading and parsing the file
    IO = "io"
    SYNTAX = "syntax"
    EMPTY = "empty"
    OVERRIDE = "override"
    DUPLICATE = "duplicate"
    # validating the fields (pydantic)
    TYPE = "type"
    UNKNOWN_FIELD = "unknown-field"
    UNKNOWN_KEY = "unknown-key"
    UNKNOWN_VALUE = "unknown-value"
    MISSING = "missing"
    RANGE = "range"
    VALUE = "value"
    # semantic checks
    VERSION = "version"
    UNKNOWN_REF = "unknown-ref"
    COMBINATION = "combination"
    HEADS = "heads"
    CYCLE = "cycle"
    PERIOD = "period"
    DATA = "data"
    UNUSED = "unused"
    STABILITY = "stability"
    # lowering (`nestdsl compile` / `train`, `nestdsl.compile_spec`)
    SIZE = "size"
    LOWER = "lower"


@dataclass(frozen=True)
class CodeInfo:
    """What a code means (`summary`), the usual fix (`fix`), its severity, and whether
    `nestdsl check` reports it (False: only lowering a spec does)."""

    summary: str
    fix: str
    severity: str = "error"
    by_check: bool = True


CODES: dict[Code, CodeInfo] = {
    Code.IO: CodeInfo(
        "the spec file cannot be read (no such file, a directory, no permission)",
        "check the path and the file's permissions"),
    Code.SYNTAX: CodeInfo(
        "the file is not valid YAML or .nest text (a binary file, a tab in the indentation, an "
        "unterminated string, a YAML tag, several documents)",
        "fix the text at the caret; the hint names the construct"),
    Code.EMPTY: CodeInfo(
        "the spec file is empty or holds only whitespace and comments",
        "write at least `nestdsl: 1`, `name:` and a `model:` or `optimizer:` section"),
    Code.OVERRIDE: CodeInfo(
        "a `--set key.path=value` override is malformed or sets into something not a mapping",
        "write `--set section.field=value`, e.g. `--set train.steps=100`"),
    Code.DUPLICATE: CodeInfo(
        "one name given twice: a mapping key, a level that redefines a built-in, an inline "
        "level whose name is taken, an optimizer parameter group",
        "rename or merge one of the two"),
    Code.TYPE: CodeInfo(
        "a value of the wrong type (a string for a number, a list for a mapping, a boolean "
        "for an integer)",
        "write the type the hint names; an entry of a named section is a name then a mapping"),
    Code.UNKNOWN_FIELD: CodeInfo(
        "a field the section does not have (often misspelled, or belonging to another variant)",
        "use the suggested name, or see docs/spec-reference.md for the section's fields"),
    Code.UNKNOWN_KEY: CodeInfo(
        "an optimizer hyper-parameter that the optimizer's (or the group's) type does not read",
        "set it on a group whose type reads it, or change `type`"),
    Code.UNKNOWN_VALUE: CodeInfo(
        "a value outside a field's allowed choices (an unknown `kind:`, `type:`, `task:`, "
        "activation, ...)",
        "use one of the allowed values the hint lists"),
    Code.MISSING: CodeInfo(
        "a required field or section is absent (`name`, `model.width`, a memory's `kind`, "
        "`objective` or `rule`, the outer `optimizer` of a spec with `train`)",
        "add the field; the hint gives an example"),
    Code.RANGE: CodeInfo(
        "a number or list length outside its allowed range (a period < 1, a gate that cannot "
        "reach its init, warmup longer than the run)",
        "use a value inside the range the message states"),
    Code.VALUE: CodeInfo(
        "a value of the right type that cannot be read (a period string like '16 tokenz')",
        "write the value in the form the message shows"),
    Code.VERSION: CodeInfo(
        "the spec asks for a language version this nestdsl does not read",
        "write `nestdsl: 1`"),
    Code.UNKNOWN_REF: CodeInfo(
        "a reference to a name that is not defined: a level, memory, cms, block, objective, or "
        "an optimizer spec (shipped name or file) that is missing or invalid",
        "use the suggested name, or define it"),
    Code.COMBINATION: CodeInfo(
        "fields that do not go together (a field that another memory kind reads, `clip` "
        "without an l2 objective, a layer pointing at the wrong kind of memory)",
        "remove one of the fields or change the kind/type, as the hint says"),
    Code.HEADS: CodeInfo(
        "a head count that does not divide the model width (model or memory `heads`)",
        "use a divisor of the width; the hint lists some"),
    Code.CYCLE: CodeInfo(
        "references that loop: memories generating their own inputs, optimizer specs "
        "referring to each other",
        "break the loop with a memory (or an optimizer spec) outside it"),
    Code.PERIOD: CodeInfo(
        "a level period that does not fit the data shape or its neighbours (does not divide "
        "seq_len, between in-context and persistent, CMS stages or chunk sizes that do not "
        "nest)",
        "use the nearest valid period the hint gives"),
    Code.DATA: CodeInfo(
        "a data section that cannot feed this model (seq_len too short for the task, vocab "
        "smaller than the data's, continual tasks with different shapes)",
        "change the data fields or model.vocab as the hint says"),
    Code.UNUSED: CodeInfo(
        "a level, memory, cms or block that is defined but never referenced",
        "remove it or reference it"),
    Code.STABILITY: CodeInfo(
        "a valid spec likely to diverge (an mlp memory with an unclipped or large inner step)",
        "set the fields the hint names (the presets' values)", severity="warning"),
    Code.SIZE: CodeInfo(
        "the model or one training step needs more memory than the limit (often a typo in "
        "width, depth, batch or seq_len)",
        "fix the typo, or raise the limit with NESTDSL_MEMORY_LIMIT_GB=<GiB>", by_check=False),
    Code.LOWER: CodeInfo(
        "a checked spec that cannot be lowered to torch modules (a spec without `model:`)",
        "compile a model spec; an optimizer-only spec is used from a model spec's `optimizer:`",
        by_check=False),
}


def explain(code: Code) -> str:
    """A few lines for a user: the code, its severity, meaning and usual fix."""
    info = CODES[code]
    lines = [f"{code.value} ({info.severity})", f"  {info.summary}", f"  fix: {info.fix}"]
    if not info.by_check:
        lines.append("  reported when a spec is lowered (nestdsl compile / train), not by `nestdsl check`")
    return "\n".join(lines)
