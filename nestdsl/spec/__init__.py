"""The spec front end: surface syntaxes (YAML, `.nest`) → validated IR.

    load_spec(path)   parse + validate + semantic checks → `Spec` (raises `SpecError`)
    parse_file(path)  parse + validate only → (`Document`, `Spec`)
    parse_text(text, file, syntax)

The `.nest` parser and both printers live beside this file; nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path as FsPath

from nestdsl.diagnostics import Diagnostic, SpecError
from nestdsl.spec import ir
from nestdsl.spec.source import Document, Span
from nestdsl.spec.validate import validate_document

__all__ = ["Document", "SpecError", "ir", "load_spec", "parse_file", "parse_text", "syntax_of"]

SPEC_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".nest": "nest"}


def syntax_of(path: str | FsPath) -> str:
    return SPEC_SUFFIXES.get(FsPath(path).suffix.lower(), "yaml")


def read_source(path: str | FsPath) -> str:
    """Read a spec file as UTF-8 text; unreadable or binary files become diagnostics."""
    file = str(path)
    try:
        raw = FsPath(path).read_bytes()
    except FileNotFoundError:
        raise SpecError([Diagnostic(Span(file, 1, 1), "no such file", "check the path", code="io")]) from None
    except IsADirectoryError:
        raise SpecError([Diagnostic(Span(file, 1, 1), "is a directory, not a spec file", code="io")]) from None
    except OSError as e:
        raise SpecError([Diagnostic(Span(file, 1, 1), f"cannot read file: {e.strerror}", code="io")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError(
            [Diagnostic(Span(file, line, col), f"not a text spec: invalid UTF-8 byte 0x{raw[e.start]:02x}",
                        "spec files must be UTF-8 text (is this a binary file?)", code="syntax")]
        ) from None
    if "\x00" in text:
        offset = text.index("\x00")
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        raise SpecError(
            [Diagnostic(Span(file, line, col), "not a text spec: NUL byte", "spec files must be UTF-8 text (is this a binary file?)", code="syntax")],
            {file: text},
        )
    return text


def parse_document(text: str, file: str, syntax: str) -> Document:
    if syntax == "nest":
        from nestdsl.spec.nest_parser import parse_nest

        return parse_nest(text, file)
    from nestdsl.spec.yaml_loader import load_yaml

    return load_yaml(text, file)


def parse_text(text: str, file: str = "<string>", syntax: str = "yaml") -> tuple[Document, ir.Spec]:
    """Parse and validate spec text (no semantic checks)."""
    if not text.strip():
        raise SpecError(
            [Diagnostic(Span(file, 1, 1), "empty spec", "a spec needs at least `name` and a `model` or `optimizer` section", code="empty")],
            {file: text},
        )
    doc = parse_document(text, file, syntax)
    spec = validate_document(doc)
    spec._source_file = file
    return doc, spec


def parse_file(path: str | FsPath) -> tuple[Document, ir.Spec]:
    """Read, parse and validate one spec file (no semantic checks)."""
    text = read_source(path)
    return parse_text(text, str(path), syntax_of(path))


def resolve_optimizer_path(spec: ir.Spec) -> FsPath | None:
    """Where a string `optimizer:` reference points (relative to the spec's folder)."""
    if not isinstance(spec.optimizer, str):
        return None
    base = FsPath(spec.source_file).parent if spec.source_file else FsPath(".")
    ref = FsPath(spec.optimizer)
    for candidate in (base / ref, ref):
        if candidate.is_file():
            return candidate
    return base / ref


def load_spec(path: str | FsPath, *, check: bool = True) -> ir.Spec:
    """Parse, validate and (by default) semantically check a spec file.

    An `optimizer: path/to/optim.yaml` reference is loaded and checked too; the result is
    available as `spec.outer_optimizer`.
    """
    doc, spec = parse_file(path)
    if check:
        from nestdsl.check import check_spec

        check_spec(spec, doc)
    return spec
