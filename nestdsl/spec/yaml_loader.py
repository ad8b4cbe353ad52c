"""YAML surface syntax → `Document` (plain data + a position for every node).

We compose the YAML node graph ourselves (instead of `yaml.safe_load`) to keep line/column for
every key and value and to reject duplicate keys, which plain PyYAML silently overwrites.
"""

from __future__ import annotations

from typing import Any

import yaml

from nestdsl.diagnostics import Diagnostic, SpecError
from nestdsl.spec.source import Document, Path, Span


class _Loader(yaml.SafeLoader):
    """SafeLoader without anchors/aliases surprises; scalars resolved by YAML 1.1 rules."""


def _span(file: str, node: yaml.Node) -> Span:
    start, end = node.start_mark, node.end_mark
    return Span(file, start.line + 1, start.column + 1, end.line + 1, end.column + 1)


def _mark_span(file: str, mark: Any) -> Span:
    if mark is None:
        return Span(file, 1, 1)
    return Span(file, mark.line + 1, mark.column + 1)


def load_yaml(text: str, file: str) -> Document:
    """Parse YAML text into a Document; raise SpecError with positions on any problem."""
    doc = Document(file=file, text=text, data=None, syntax="yaml")
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = (e.problem or e.context or "invalid YAML").strip()
        hint = _yaml_hint(problem)
        raise SpecError([Diagnostic(_mark_span(file, mark), f"YAML syntax error: {problem}", hint, code="syntax")], {file: text}) from None
    except yaml.YAMLError as e:  # ReaderError (control characters / binary junk) and friends
        span = Span(file, 1, 1)
        position = getattr(e, "position", None)
        if isinstance(position, int):
            span = _offset_span(text, position, file)
        raise SpecError(
            [Diagnostic(span, f"not a text spec: {getattr(e, 'reason', None) or e}", "spec files must be UTF-8 text", code="syntax")],
            {file: text},
        ) from None
    if root is None:
        raise SpecError(
            [Diagnostic(Span(file, 1, 1), "empty spec", "a spec needs at least `name:` and a `model:` or `optimizer:` section", code="empty")],
            {file: text},
        )
    errors: list[Diagnostic] = []
    constructor = yaml.SafeLoader("")
    doc.data = _convert(root, (), doc, constructor, errors)
    if errors:
        raise SpecError(errors, {file: text})
    return doc


def _offset_span(text: str, offset: int, file: str) -> Span:
    before = text[:offset]
    line = before.count("\n") + 1
    col = offset - (before.rfind("\n") + 1) + 1
    return Span(file, line, col)


def _yaml_hint(problem: str) -> str | None:
    if "found character '\\t'" in problem or "tab" in problem:
        return "YAML indentation must use spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "check the indentation of this line and the one above, or quote a value containing ': '"
    if "could not find expected ':'" in problem or "expected <block end>" in problem:
        return "check the indentation: keys of one mapping must line up"
    if "found unexpected end of stream" in problem or "while scanning a quoted scalar" in problem:
        return "a quoted string is not closed"
    return None


def _convert(
    node: yaml.Node, path: Path, doc: Document, constructor: yaml.SafeLoader, errors: list[Diagnostic]
) -> Any:
    doc.positions[path] = _span(doc.file, node)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                errors.append(Diagnostic(_span(doc.file, key_node), "mapping keys must be plain names", code="syntax"))
                continue
            key = key_node.value
            if key in out:
                first = doc.key_positions[path + (key,)]
                errors.append(
                    Diagnostic(
                        _span(doc.file, key_node),
                        f"duplicate key '{key}'",
                        f"'{key}' was already given at line {first.line}; remove one of them",
                        code="duplicate",
                    )
                )
                continue
            doc.key_positions[path + (key,)] = _span(doc.file, key_node)
            out[key] = _convert(value_node, path + (key,), doc, constructor, errors)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (i,), doc, constructor, errors) for i, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)
