"""The spec front end: surface syntaxes (YAML, `.nest`) → validated IR.

    parse_file(path)  parse + validate → (`Document`, `Spec`) (raises `SpecError`)
    parse_text(text, file, syntax)

The semantic checks are the next stage (`nestdsl/check`); `nestdsl.pipeline.load_spec` runs both.

The `.nest` parser and both printers live beside this file; nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path as FsPath

from nestdsl.codes import Code
from nestdsl.diagnostics import Diagnostic, SpecError
from nestdsl.spec import ir
from nestdsl.spec.source import Document, Span
from nestdsl.spec.validate import validate_document

__all__ = ["Document", "SpecError", "ir", "parse_file", "parse_text", "syntax_of"]

SPEC_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".nest": "nest"}


def syntax_of(path: str | FsPath) -> str:
    return SPEC_SUFFIXES.get(FsPath(path).suffix.lower(), "yaml")


def read_source(path: str | FsPath) -> str:
    """Read a spec file as UTF-8 text; unreadable or binary files become diagnostics."""
    file = str(path)
    try:
        raw = FsPath(path).read_bytes()
    except FileNotFoundError:
        raise SpecError([Diagnostic(Span(file, 1, 1), "no such file", "check the path", code=Code.IO)]) from None
    except IsADirectoryError:
        raise SpecError([Diagnostic(Span(file, 1, 1), "is a directory, not a spec file", code=Code.IO)]) from None
    except OSError as e:
        raise SpecError([Diagnostic(Span(file, 1, 1), f"cannot read file: {e.strerror}", code=Code.IO)]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError(
            [Diagnostic(Span(file, line, col), f"not a text spec: invalid UTF-8 byte 0x{raw[e.start]:02x}",
                        "spec files must be UTF-8 text (is this a binary file?)", code=Code.SYNTAX)]
        ) from None
    if "\x00" in text:
        offset = text.index("\x00")
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        raise SpecError(
            [Diagnostic(Span(file, line, col), "not a text spec: NUL byte", "spec files must be UTF-8 text (is this a binary file?)", code=Code.SYNTAX)],
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
            [Diagnostic(Span(file, 1, 1), "empty spec", "a spec needs at least `name` and a `model` or `optimizer` section", code=Code.EMPTY)],
            {file: text},
        )
    doc = parse_document(text, file, syntax)
    spec = validate_document(doc)
    spec._source_file = file
    return doc, spec


def parse_file(path: str | FsPath, overrides: list[str] | None = None) -> tuple[Document, ir.Spec]:
    """Read, parse and validate one spec file (no semantic checks).

    `overrides` are `key.path=value` strings (`--set train.steps=50`), applied to the parsed
    document before validation, so they are checked exactly like the file's own fields.
    """
    text = read_source(path)
    file, syntax = str(path), syntax_of(path)
    if not overrides:
        return parse_text(text, file, syntax)
    if not text.strip():
        return parse_text(text, file, syntax)
    doc = parse_document(text, file, syntax)
    for pair in overrides:
        apply_override(doc, pair)
    spec = validate_document(doc)
    spec._source_file = file
    return doc, spec


def apply_override(doc: Document, pair: str) -> None:
    """Set `a.b.0.c=value` in a parsed document (value parsed as YAML; lists by index)."""
    import yaml

    origin = Span(f"--set {pair}", 1, 1)
    if "=" not in pair:
        raise SpecError([Diagnostic(origin, "--set expects key=value", "e.g. --set train.steps=100", code=Code.OVERRIDE)])
    key, raw = pair.split("=", 1)
    parts = _key_parts(doc.data, [p for p in key.strip().split(".") if p])
    if not parts:
        raise SpecError([Diagnostic(origin, "--set needs a key before '='", code=Code.OVERRIDE)])
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if len(parts) > 1 and parts[0] == "optimizer" and isinstance(doc.data, dict):
        _inline_named_optimizer(doc, origin)
    node = doc.data
    path: tuple[str | int, ...] = ()
    for part in parts[:-1]:
        path += (part,)
        if isinstance(node, dict):
            node = node.setdefault(part, {}) if not isinstance(node.get(part), (dict, list)) else node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            raise SpecError([Diagnostic(origin, f"cannot set '{key}': '{'.'.join(map(str, path))}' is not a mapping", code=Code.OVERRIDE)])
    last = parts[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    else:
        raise SpecError([Diagnostic(origin, f"cannot set '{key}'", code=Code.OVERRIDE)])
    full = tuple(parts)
    doc.positions[full] = origin
    doc.key_positions[full] = origin


def _inline_named_optimizer(doc: Document, origin: Span) -> None:
    """`optimizer: adamw` + `--set optimizer.lr=0.01`: the named spec's `optimizer:` section is
    written into the document first, so the override changes one field of it (the checkpoint's
    identity inlines the optimizer the same way, so the result equals writing it out)."""
    ref = doc.data.get("optimizer")
    if not isinstance(ref, str):
        return
    path = optimizer_file(ref, doc.file)
    if not path.is_file():
        return  # the checker reports the missing file at the `optimizer:` line
    _, named = parse_file(path)
    section = named.optimizer
    if section is None or isinstance(section, str):
        return
    doc.data["optimizer"] = section.model_dump(mode="json", exclude_unset=True)
    for key in doc.data["optimizer"]:
        doc.positions.setdefault(("optimizer", key), origin)
        doc.key_positions.setdefault(("optimizer", key), origin)


def _key_parts(data: object, words: list[str]) -> list[str | int]:
    """`a.b.0.c` → ['a', 'b', 0, 'c']; a name with dots that the document has (a level named
    `titans.level`, as inline levels are) is kept whole: `levels.titans.level.every`."""
    parts: list[str | int] = []
    node, i = data, 0
    while i < len(words):
        j = i + 1
        if isinstance(node, dict):
            j = next((k for k in range(len(words), i + 1, -1) if ".".join(words[i:k]) in node), j)
        word = ".".join(words[i:j])
        part: str | int = int(word) if word.isdigit() and j == i + 1 else word
        parts.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
        i = j
    return parts


def resolve_optimizer_path(spec: ir.Spec) -> FsPath | None:
    """The file a string `optimizer:` reference names (None when `optimizer` is not a string).

    In order: a file at that path relative to the spec's folder; a shipped optimizer spec of
    that name (`adamw`, `muon`, ...: `nestdsl.spec.shipped`); a file relative to the current
    folder. When none exists, the path relative to the spec's folder (not a file).
    """
    if not isinstance(spec.optimizer, str):
        return None
    return optimizer_file(spec.optimizer, spec.source_file)


def optimizer_file(reference: str, spec_file: str | None) -> FsPath:
    """Where an `optimizer:` reference written in `spec_file` points (see resolve_optimizer_path)."""
    from nestdsl.spec.shipped import shipped_optimizer

    base = FsPath(spec_file).parent if spec_file and not spec_file.startswith("<") else FsPath(".")
    ref = FsPath(reference)
    if (base / ref).is_file():
        return base / ref
    shipped = shipped_optimizer(reference)
    if shipped is not None:
        return shipped
    if ref.is_file():
        return ref
    return base / ref
