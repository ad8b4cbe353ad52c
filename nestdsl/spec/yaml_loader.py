"""YAML surface syntax → `Document` (plain data + a position for every node).

We compose the YAML node graph ourselves (instead of `yaml.safe_load`) to keep line/column for
every key and value and to reject duplicate keys, which plain PyYAML silently overwrites.
"""

from __future__ import annotations

from typing import Any

import yaml

from nestdsl.codes import Code
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
        raise SpecError([_syntax_diagnostic(e, text, file)], {file: text}) from None
    except RecursionError:
        # PyYAML's composer recurses once per nesting level; thousands of `[[[[` exhaust it.
        raise SpecError(
            [Diagnostic(Span(file, 1, 1), "YAML nesting is too deep", "a spec nests a few levels; is this file a spec?", code=Code.SYNTAX)],
            {file: text},
        ) from None
    except yaml.YAMLError as e:  # ReaderError (control characters / binary junk) and friends
        span = Span(file, 1, 1)
        position = getattr(e, "position", None)
        if isinstance(position, int):
            span = _offset_span(text, position, file)
        raise SpecError(
            [Diagnostic(span, f"not a text spec: {getattr(e, 'reason', None) or e}", "spec files must be UTF-8 text", code=Code.SYNTAX)],
            {file: text},
        ) from None
    if root is None:
        raise SpecError(
            [Diagnostic(Span(file, 1, 1), "empty spec", "a spec needs at least `name:` and a `model:` or `optimizer:` section", code=Code.EMPTY)],
            {file: text},
        )
    errors: list[Diagnostic] = []
    constructor = yaml.SafeLoader("")
    state = _State()
    try:
        doc.data = _convert(root, (), doc, constructor, errors, state)
    except _TooLarge:
        errors.append(Diagnostic(Span(file, 1, 1), f"the spec expands to more than {_MAX_NODES} nodes",
                                 "aliases (*name) that expand each other grow exponentially; write the values out", code=Code.SYNTAX))
    if errors:
        raise SpecError(errors, {file: text})
    return doc


def _syntax_diagnostic(e: yaml.MarkedYAMLError, text: str, file: str) -> Diagnostic:
    problem = (e.problem or e.context or "invalid YAML").strip()
    context = (e.context or "").strip()
    mark = e.problem_mark or e.context_mark
    if "quoted scalar" in context and e.context_mark is not None:
        # The scanner ran off the end of the file: the useful place is the opening quote.
        return Diagnostic(_mark_span(file, e.context_mark), "unterminated string",
                          "a quoted string is not closed: add the closing quote", code=Code.SYNTAX)
    if "single document" in context:
        return Diagnostic(_mark_span(file, mark), "more than one YAML document in the file",
                          "a spec file holds one document; remove the `---` line and what follows, "
                          "or split it into two files", code=Code.SYNTAX)
    if "'\\t'" in problem:
        return Diagnostic(_mark_span(file, mark), "YAML syntax error: tab character in indentation",
                          "YAML indentation must use spaces, not tabs", code=Code.SYNTAX)
    span = _mark_span(file, mark)
    n_lines = max(1, len(text.splitlines()))
    if span.line > n_lines:
        # End-of-file errors point past the last line; show the last line instead.
        span = Span(file, n_lines, max(1, len(text.splitlines()[-1]) + 1 if text.splitlines() else 1))
    message = f"YAML syntax error: {problem}"
    if context and context not in problem:
        message += f" ({context})"
    return Diagnostic(span, message, _yaml_hint(problem), code=Code.SYNTAX)


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


# Aliases make the node graph a DAG (or, with `&a [*a]`, a cycle); expanding it naively can
# recurse forever or blow up exponentially ("billion laughs"). We detect cycles and cap the size.
_MAX_NODES = 100_000


class _TooLarge(Exception):
    pass


class _State:
    def __init__(self) -> None:
        self.count = 0
        self.active: set[int] = set()  # ids of the nodes being converted (the current path)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _convert(
    node: yaml.Node, path: Path, doc: Document, constructor: yaml.SafeLoader, errors: list[Diagnostic],
    state: _State,
) -> Any:
    state.count += 1
    if state.count > _MAX_NODES:
        raise _TooLarge
    doc.positions[path] = _span(doc.file, node)
    if id(node) in state.active:
        errors.append(Diagnostic(_span(doc.file, node), "an alias refers to a node that contains it",
                                 "a value cannot include itself; write it out", code=Code.SYNTAX))
        return None
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        state.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return _convert_mapping(node, path, doc, constructor, errors, state)
            return [_convert(item, path + (i,), doc, constructor, errors, state) for i, item in enumerate(node.value)]
        finally:
            state.active.discard(id(node))
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as e:  # unknown tag such as !!python/object
        problem = (e.problem or e.context or "cannot read this value").strip()
        errors.append(Diagnostic(_span(doc.file, node), f"YAML error: {problem}",
                                 "spec values are plain numbers, strings, booleans, lists and mappings (no tags)", code=Code.SYNTAX))
    except Exception as e:  # noqa: BLE001 - e.g. `2024-13-45` resolves to an invalid date (ValueError)
        errors.append(Diagnostic(_span(doc.file, node), f"cannot read value {node.value!r}: {e}",
                                 "quote it to make it a string", code=Code.SYNTAX))
    return None


def _convert_mapping(
    node: yaml.MappingNode, path: Path, doc: Document, constructor: yaml.SafeLoader, errors: list[Diagnostic],
    state: _State,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    merged: set[str] = set()  # keys that came from a `<<:` merge: explicit keys override them
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            errors.append(Diagnostic(_span(doc.file, key_node), "mapping keys must be plain names", code=Code.SYNTAX))
            continue
        if key_node.tag == _MERGE_TAG:
            # `<<: *base` (or a list of them): copy the aliased mapping's entries, keeping their
            # positions, so anchors can share e.g. a rule between memories.
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for src in sources:
                if not isinstance(src, yaml.MappingNode):
                    errors.append(Diagnostic(_span(doc.file, src), "`<<` merges a mapping (e.g. `<<: *base`)", code=Code.SYNTAX))
                    continue
                sub = _convert(src, path + ("<<",), doc, constructor, errors, state)
                for k, v in (sub or {}).items():
                    if k not in out:
                        out[k] = v
                        merged.add(k)
                        _copy_positions(doc, path + ("<<", k), path + (k,))
            continue
        key = key_node.value
        if key in out and key not in merged:
            first = doc.key_positions[path + (key,)]
            errors.append(
                Diagnostic(
                    _span(doc.file, key_node),
                    f"duplicate key '{key}'",
                    f"'{key}' was already given at line {first.line}; remove one of them",
                    code=Code.DUPLICATE,
                )
            )
            continue
        merged.discard(key)
        doc.key_positions[path + (key,)] = _span(doc.file, key_node)
        out[key] = _convert(value_node, path + (key,), doc, constructor, errors, state)
    return out


def _copy_positions(doc: Document, src: Path, dst: Path) -> None:
    n = len(src)
    for table in (doc.positions, doc.key_positions):
        for p in [p for p in table if p[:n] == src]:
            table.setdefault(dst + p[n:], table[p])
