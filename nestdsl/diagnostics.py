"""Compiler-grade diagnostics: `file:line:col: error: message`, the source line, a caret, a hint.

Every stage that rejects a spec raises `SpecError` carrying one or more `Diagnostic`s; the CLI
renders them (text or JSON) and exits 2. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from nestdsl.codes import Code
from nestdsl.errors import NestdslError


@dataclass(frozen=True)
class Span:
    """A 1-based line/column range in a source file."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a spec, positioned at a source span. `code` (keyword-only, required) is
    a registry code (`nestdsl/codes.py`); a string outside the registry is refused."""

    span: Span
    message: str
    hint: str | None = None
    code: Code = field(kw_only=True)
    severity: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", Code(self.code))  # ValueError: not a registry code

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.span.file, self.span.line, self.span.col, self.message)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d.update(
            code=self.code.value, file=self.span.file, line=self.span.line, column=self.span.col
        )
        del d["span"]
        return d

    def render(self, source: str | None = None, *, color: bool = False) -> str:
        """Render like a compiler: header line, source line with a caret, hint."""
        head = f"{self.span}: {self.severity}: {self.message}"
        lines = [head]
        if source is not None:
            src_lines = source.splitlines()
            if 1 <= self.span.line <= len(src_lines):
                # Tabs become one space (so the caret lines up); other control characters and
                # undecodable bytes would garble a terminal, so they print as U+FFFD.
                text = "".join(
                    " " if ch == "\t" else (ch if ch.isprintable() else "\ufffd")
                    for ch in src_lines[self.span.line - 1]
                )
                gutter = f"{self.span.line:>4} | "
                lines.append(gutter + text)
                width = 1
                if self.span.end_line == self.span.line and self.span.end_col:
                    width = max(1, self.span.end_col - self.span.col)
                lines.append(" " * (len(gutter) + self.span.col - 1) + "^" + "~" * (width - 1))
        if self.hint:
            lines.append(f"     = hint: {self.hint}")
        return "\n".join(lines)


class SpecError(NestdslError):
    """A spec is invalid. Carries every diagnostic found (sorted by position)."""

    def __init__(self, diagnostics: Iterable[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        self.sources = dict(sources or {})
        # Set by validation: the part of a rejected spec that did validate (spec/validate.py
        # PartialSpec), so the check stage can report its semantic problems in the same run.
        self.partial: object | None = None
        first = self.diagnostics[0] if self.diagnostics else None
        super().__init__(f"{first.span}: {first.message}" if first else "invalid spec")

    def render(self) -> str:
        return "\n".join(d.render(self.sources.get(d.span.file)) for d in self.diagnostics)

    def to_json(self) -> str:
        return json.dumps([d.to_json() for d in self.diagnostics], indent=2)


class SpecWarning(UserWarning):
    """A valid spec that is likely not what its author wants (e.g. one that diverges): positioned
    like an error (`file:line:col: warning: ...`, the line, a hint), and it stops nothing."""

    def __init__(self, diagnostic: Diagnostic, source: str | None = None) -> None:
        self.diagnostic = diagnostic
        super().__init__(diagnostic.render(source))


def did_you_mean(word: str, candidates: Sequence[str]) -> str | None:
    """A 'did you mean ...?' hint for a misspelled name, or None."""
    names = [str(c) for c in candidates]
    # Case slips (`L2` for `l2`, `SiLU` for `silu`) are the commonest misspelling; difflib's
    # ratio is case-sensitive and would miss short ones, so compare lower-cased names.
    lowered = {n.lower(): n for n in reversed(names)}
    close = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{lowered[close[0]]}'?"
    return None


def choices_hint(word: str, candidates: Sequence[str]) -> str:
    """Did-you-mean plus the list of allowed values."""
    allowed = ", ".join(repr(c) for c in candidates)
    dym = did_you_mean(word, candidates)
    return f"{dym} allowed: {allowed}" if dym else f"allowed: {allowed}"
