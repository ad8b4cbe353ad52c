"""`.nest` surface syntax → `Document` (the same plain data the YAML form gives, with positions).

The language is defined by the lark grammar `grammars/nest.lark`; the package reads that same file
through `nestdsl/grammars/nest.lark`, a symbolic link (a wheel stores its content).  We parse with LALR + the contextual
lexer (a few milliseconds per preset) and then *build the document by hand* rather than with a
lark Transformer, because every node needs two positions recorded under the YAML loader's path
conventions (`positions[path]` for the value, `key_positions[path]` for the key that named it):
that is what lets `validate_document` and the checker point at file:line:col without knowing
which syntax a spec was written in.

Syntax errors never escape as lark exceptions: they become `SpecError` diagnostics with a
readable message ("unexpected '}'", "string is not closed"), the expected alternatives and a
did-you-mean for misspelled keywords.  Duplicate definitions and fields are diagnosed here too
(YAML reports duplicate keys in its loader; the `.nest` equivalent is two `memory titans`).
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from importlib import resources
from typing import Any, cast

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from nestdsl.codes import Code
from nestdsl.diagnostics import Diagnostic, SpecError, did_you_mean
from nestdsl.spec import ir
from nestdsl.spec.source import Document, Path, Span

__all__ = ["KEYWORDS", "grammar_text", "nest_lark", "parse_nest", "unescape"]


# Statement keywords (top level) and layer keywords (inside `block`), for did-you-mean hints.
STATEMENTS = ("nestdsl", "spec", "doc", "model", "level", "memory", "cms", "block", "optimizer", "data", "train")
LAYER_KEYWORDS = ("memory", "mal", "mag", "self_modifying", "cms", "mlp")
# Every word the grammar reserves somewhere (the printer quotes values that collide).
KEYWORDS = frozenset(
    STATEMENTS + LAYER_KEYWORDS
    + ("every", "rule", "stage", "group", "task", "true", "false", "null", "learned",
       "scale", "init", "tokens", "token", "steps", "step")
)

# Readable names for the grammar's terminals in "expected ..." messages.
_TERMINAL_NAMES = {
    "NAME": "a name",
    "STRING": 'a "string"',
    "NUMBER": "a number",
    "$END": "end of file",
}
_IGNORED_TERMINALS = {"WS", "COMMENT"}


def grammar_text() -> str:
    """The grammar source: `grammars/nest.lark`, read as package data of `nestdsl`."""
    return resources.files("nestdsl").joinpath("grammars", "nest.lark").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def nest_lark() -> Lark:
    """The LALR parser, built once per process (building takes ~50 ms, parsing ~1 ms)."""
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
    )


def parse_nest(text: str, file: str) -> Document:
    """Parse `.nest` text into a Document; raise SpecError with positions on any problem."""
    doc = Document(file=file, text=text, data={}, syntax="nest")
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise SpecError(
            [Diagnostic(Span(file, 1, 1), "empty spec",
                        "a spec needs at least `spec NAME` and a `model { ... }` or `optimizer ...`",
                        code=Code.EMPTY)],
            {file: text},
        )
    # A UTF-8 byte-order mark is invisible in editors: skip it so columns match what people see.
    source = text[1:] if text.startswith("\ufeff") else text
    try:
        tree = nest_lark().parse(source)
    except UnexpectedInput as e:
        raise SpecError([_syntax_diagnostic(e, source, file)], {file: text}) from None
    builder = _Builder(doc)
    builder.build(tree)
    if builder.errors:
        raise SpecError(builder.errors, {file: text})
    return doc


# ---------------------------------------------------------------------------------------------
# Syntax errors → diagnostics


def _terminal_text(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    try:
        term = nest_lark().get_terminal(name)
    except KeyError:
        return name.lower()
    pattern = term.pattern
    if pattern.type == "str":
        return f"'{pattern.value}'"
    return name.lower()


def _expected(names: set[str] | frozenset[str] | None) -> list[str]:
    out = sorted({_terminal_text(n) for n in (names or ()) if n not in _IGNORED_TERMINALS})
    # Keywords first, then the classes ('a name', 'a number', ...), for readability.
    return sorted(out, key=lambda s: (not s.startswith("'"), s))


def _keywords_in(expected: list[str]) -> list[str]:
    return [e.strip("'") for e in expected if e.startswith("'") and e.strip("'").isidentifier()]


def _end_span(text: str, file: str) -> Span:
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    col = len(stripped) - (stripped.rfind("\n") + 1) + 1
    return Span(file, line, col)


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "STRING":
        return f"string {tok.value}"
    if tok.type == "NUMBER":
        return f"number {tok.value}"
    return f"'{tok.value}'"


def _open_brace_hint(text: str, upto: int) -> str | None:
    """Say which bracket is still open at `upto` (for 'unexpected end of file')."""
    stack: list[tuple[str, int]] = []
    pairs = {"}": "{", ")": "(", "]": "["}
    in_string = False
    i = 0
    while i < upto and i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"' or ch == "\n":
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "#":
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl
            continue
        elif ch in "{([":
            stack.append((ch, i))
        elif ch in pairs and stack and stack[-1][0] == pairs[ch]:
            stack.pop()
        i += 1
    if not stack:
        return None
    ch, pos = stack[-1]
    line = text.count("\n", 0, pos) + 1
    closing = {"{": "}", "(": ")", "[": "]"}[ch]
    return f"the '{ch}' opened at line {line} is not closed; add a '{closing}'"


def _words_before(text: str, offset: int) -> list[str]:
    """Identifiers on the error's line before the error (to spot a misspelled keyword)."""
    start = text.rfind("\n", 0, offset) + 1
    return re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text[start:offset].split("#")[0])


def _keyword_hint(word: str, expected: list[str]) -> str | None:
    keywords = _keywords_in(expected)
    hint = did_you_mean(word, keywords) if keywords else None
    return hint


def _syntax_diagnostic(e: UnexpectedInput, text: str, file: str) -> Diagnostic:
    if isinstance(e, UnexpectedCharacters):
        span = Span(file, e.line, e.column, e.line, e.column + 1)
        assert e.pos_in_stream is not None  # lark sets it to the lexer's position
        char = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else ""
        if char == '"':
            return Diagnostic(
                span, "string is not closed",
                'add the closing \'"\' on the same line (strings cannot span lines; write \\n for a line break)',
                code=Code.SYNTAX,
            )
        expected = _expected(e.allowed)
        what = repr(char) if char.strip() else f"character {char!r}"
        return Diagnostic(
            span, f"unexpected {what}",
            ("expected one of: " + ", ".join(expected)) if expected else "this character cannot appear here",
            code=Code.SYNTAX,
        )
    if isinstance(e, UnexpectedToken):
        tok = e.token
        expected = _expected(e.accepts or e.expected)
        if tok.type == "$END":
            span = _end_span(text, file)
            hint = _open_brace_hint(text, len(text)) or (
                "expected one of: " + ", ".join(expected) if expected else None
            )
            return Diagnostic(span, "unexpected end of file", hint, code=Code.SYNTAX)
        line = tok.line or 1
        col = tok.column or 1
        span = Span(file, line, col, tok.end_line or line, tok.end_column or col + 1)
        message = f"unexpected {_describe_token(tok)}"
        if len(expected) == 1:
            message += f", expected {expected[0]}"
        hint = None
        if tok.type == "NAME" or (isinstance(tok.value, str) and tok.value.isidentifier()):
            hint = _keyword_hint(str(tok.value), expected)
            if hint and set(_keywords_in(expected)) >= set(STATEMENTS) - {"nestdsl"}:
                hint = f"unknown statement '{tok.value}'; {hint}"
        if hint is None and tok.type in ("LBRACE", "LPAR"):
            # `rul dgd { ... }`: the misspelled keyword was read as a field name.
            for word in reversed(_words_before(text, tok.start_pos or 0)):
                dym = did_you_mean(word, sorted(KEYWORDS))
                if dym and word not in KEYWORDS:
                    hint = f"'{word}' is not a keyword here; {dym}"
                    break
        if hint is None and len(expected) > 1:
            hint = "expected one of: " + ", ".join(expected)
        return Diagnostic(span, message, hint, code=Code.SYNTAX)
    if isinstance(e, UnexpectedEOF):  # pragma: no cover - Earley only; kept for safety
        return Diagnostic(_end_span(text, file), "unexpected end of file", _open_brace_hint(text, len(text)), code=Code.SYNTAX)
    return Diagnostic(Span(file, getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1), f"syntax error: {e}", code=Code.SYNTAX)


# ---------------------------------------------------------------------------------------------
# Strings

_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {
    '"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f",
    "0": "\0", "a": "\a", "v": "\v", "e": "\x1b",
}


def unescape(body: str) -> str:
    """Decode the escapes of a `.nest` string body (raises ValueError on an unknown escape)."""

    def sub(m: re.Match[str]) -> str:
        esc = m.group(1)
        if len(esc) > 1:
            code = int(esc[1:], 16)
            if code > 0x10FFFF:
                raise ValueError(f"\\{esc}")
            return chr(code)
        if esc in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[esc]
        raise ValueError(f"\\{esc}")

    return _ESCAPE.sub(sub, body)


# ---------------------------------------------------------------------------------------------
# Tree → Document

_INT_RE = re.compile(r"^[+-]?\d+$")
_LAYER_TYPES = {
    "memory_layer": ("memory", "memory"),
    "mal_layer": ("mal", "memory"),
    "mag_layer": ("mag", "memory"),
    "self_modifying_layer": ("self_modifying", "memory"),
    "cms_layer": ("cms", "cms"),
    "mlp_layer": ("mlp", None),
}
_SECTION_NAMES = {"levels": "level", "memories": "memory", "cms": "cms", "blocks": "block"}
_SINGLETONS = {
    "version": ("nestdsl", "`nestdsl` version line"),
    "model": ("model", "model section"),
    "train": ("train", "train section"),
    "data": ("data", "data section"),
    "optimizer": ("optimizer", "optimizer section"),
}


def _tree(child: Tree[Token] | Token) -> Tree[Token]:
    """`child`, which the grammar makes a subtree (lark types every child as tree-or-token)."""
    return cast("Tree[Token]", child)


class _Builder:
    """Walks the parse tree, filling `doc.data`, `doc.positions` and `doc.key_positions`."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.file = doc.file
        self.errors: list[Diagnostic] = []

    # -- positions ---------------------------------------------------------------------------

    def span(self, item: Tree[Token] | Token) -> Span:
        if isinstance(item, Token):
            line = item.line or 1
            col = item.column or 1
            return Span(self.file, line, col, item.end_line, item.end_column)
        meta = item.meta
        if getattr(meta, "empty", True):
            return Span(self.file, 1, 1)
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def from_to(self, start: Span, end: Span) -> Span:
        return Span(self.file, start.line, start.col, end.end_line, end.end_col)

    def keyword_span(self, tree: Tree[Token], keyword: str) -> Span:
        meta = tree.meta
        return Span(self.file, meta.line, meta.column, meta.line, meta.column + len(keyword))

    def put(self, target: dict[str, Any], path: Path, key: str, value: Any, value_span: Span,
            key_span: Span | None = None, what: str = "field") -> bool:
        """Store `target[key] = value` at `path + (key,)`, diagnosing duplicates."""
        full = path + (key,)
        if key in target:
            first = self.doc.key_positions.get(full) or self.doc.positions.get(full)
            where = f" (first given at line {first.line})" if first else ""
            self.errors.append(
                Diagnostic(
                    key_span or value_span,
                    f"duplicate {what} '{key}'",
                    f"'{key}' was already given{where}; remove one of them",
                    code=Code.DUPLICATE,
                )
            )
            return False
        target[key] = value
        self.doc.positions[full] = value_span
        self.doc.key_positions[full] = key_span or value_span
        return True

    # -- statements --------------------------------------------------------------------------

    def build(self, tree: Tree[Token]) -> None:
        data: dict[str, Any] = self.doc.data
        self.doc.positions[()] = Span(self.file, 1, 1)
        for stmt in tree.children:
            if not isinstance(stmt, Tree):
                continue
            handler = getattr(self, "stmt_" + str(stmt.data))
            handler(stmt, data)

    def singleton(self, stmt: Tree[Token], data: dict[str, Any], kind: str, value: Any, value_span: Span) -> None:
        key, label = _SINGLETONS[kind]
        if key in data:
            first = self.doc.key_positions.get((key,)) or self.doc.positions.get((key,))
            self.errors.append(
                Diagnostic(
                    self.keyword_span(stmt, key),
                    f"duplicate {label}",
                    f"the first one is at line {first.line}; a spec has one {label}" if first else None,
                    code=Code.DUPLICATE,
                )
            )
            return
        data[key] = value
        self.doc.positions[(key,)] = value_span
        self.doc.key_positions[(key,)] = self.keyword_span(stmt, key)

    def named(self, stmt: Tree[Token], data: dict[str, Any], section: str, name_tree: Tree[Token], value: Any,
              end: Span | None = None) -> Path | None:
        """Add a named definition `data[section][name] = value`; None if it is a duplicate."""
        name, name_span = self.name(name_tree)
        table = data.setdefault(section, {})
        if (section,) not in self.doc.positions:
            self.doc.positions[(section,)] = self.span(stmt)
            self.doc.key_positions[(section,)] = self.keyword_span(stmt, _SECTION_NAMES[section])
        path = (section, name)
        if name in table:
            first = self.doc.key_positions[path]
            self.errors.append(
                Diagnostic(
                    name_span,
                    f"duplicate {_SECTION_NAMES[section]} '{name}'",
                    f"'{name}' was first defined at line {first.line}, column {first.col}; rename or remove one",
                    code=Code.DUPLICATE,
                )
            )
            return None
        table[name] = value
        self.doc.positions[path] = self.from_to(name_span, end or self.span(stmt))
        self.doc.key_positions[path] = name_span
        return path

    def stmt_version(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        tok = cast(Token, stmt.children[0])
        self.singleton(stmt, data, "version", self.number(tok), self.span(tok))

    def stmt_spec(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        name, name_span = self.name(_tree(stmt.children[0]))
        if "name" in data:
            first = self.doc.positions[("name",)]
            self.errors.append(
                Diagnostic(self.keyword_span(stmt, "spec"), "duplicate `spec` line",
                           f"the spec is already named at line {first.line}", code=Code.DUPLICATE)
            )
            return
        self.put(data, (), "name", name, name_span, self.keyword_span(stmt, "spec"))
        doc_tok = stmt.children[1]
        if isinstance(doc_tok, Token):
            self.put(data, (), "doc", self.string(doc_tok), self.span(doc_tok), self.span(doc_tok))

    def stmt_doc(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        tok = cast(Token, stmt.children[0])
        self.put(data, (), "doc", self.string(tok), self.span(tok), self.keyword_span(stmt, "doc"))

    def stmt_model(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        fields: dict[str, Any] = {}
        self.singleton(stmt, data, "model", fields, self.span(stmt))
        if data.get("model") is fields:
            self.fields(_tree(stmt.children[0]), ("model",), fields)

    def stmt_train(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        fields: dict[str, Any] = {}
        self.singleton(stmt, data, "train", fields, self.span(stmt))
        if data.get("train") is fields:
            self.fields(_tree(stmt.children[0]), ("train",), fields)

    def stmt_level(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        name_tree, period, doc_tok = stmt.children
        value: dict[str, Any] = {}
        path = self.named(stmt, data, "levels", _tree(name_tree), value)
        if path is None:
            return
        every, every_span = self.period(_tree(period))
        self.put(value, path, "every", every, every_span)
        if isinstance(doc_tok, Token):
            self.put(value, path, "doc", self.string(doc_tok), self.span(doc_tok))

    def stmt_memory(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        name_tree, kind_tree, args, body = stmt.children
        value: dict[str, Any] = {}
        path = self.named(stmt, data, "memories", _tree(name_tree), value)
        if path is None:
            return
        kind, kind_span = self.name(_tree(kind_tree))
        self.put(value, path, "kind", kind, kind_span)
        if isinstance(args, Tree):
            self.args(args, path, value)
        if isinstance(body, Tree):
            for item in body.children:
                if not isinstance(item, Tree):
                    continue
                if item.data == "entry":
                    self.entry(item, path, value)
                else:  # rule
                    self.rule(item, path, value)

    def rule(self, item: Tree[Token], path: Path, target: dict[str, Any]) -> None:
        kind_tree, args, body = item.children
        rule: dict[str, Any] = {}
        if not self.put(target, path, "rule", rule, self.span(item), self.keyword_span(item, "rule")):
            return
        rpath = path + ("rule",)
        kind, kind_span = self.name(_tree(kind_tree))
        self.put(rule, rpath, "kind", kind, kind_span)
        if isinstance(args, Tree):
            self.args(args, rpath, rule)
        if isinstance(body, Tree):
            self.body(body, rpath, rule)

    def stmt_cms(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        name_tree, mode_tree, *stages = stmt.children
        value: dict[str, Any] = {}
        path = self.named(stmt, data, "cms", _tree(name_tree), value)
        if path is None:
            return
        if isinstance(mode_tree, Tree):
            mode, mode_span = self.name(mode_tree)
            self.put(value, path, "mode", mode, mode_span)
        items: list[Any] = []
        self.put(value, path, "stages", items, self.span(stmt), self.keyword_span(stmt, "cms"))
        for stage in stages:
            if not isinstance(stage, Tree):
                continue
            spath = path + ("stages", len(items))
            entry: dict[str, Any] = {}
            self.doc.positions[spath] = self.span(stage)
            items.append(entry)
            head = _tree(stage.children[0])
            if head.data == "inline_level":  # `stage every 4 steps`: an anonymous level
                level, level_span = self.value(head, spath + ("level",))
            else:
                level, level_span = self.name(head)
            self.put(entry, spath, "level", level, level_span)
            for e in stage.children[1:]:
                if isinstance(e, Tree):
                    self.entry(e, spath, entry)

    def stmt_block(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        name_tree, *layers = stmt.children
        value: dict[str, Any] = {}
        path = self.named(stmt, data, "blocks", _tree(name_tree), value)
        if path is None:
            return
        items: list[Any] = []
        self.put(value, path, "layers", items, self.span(stmt), self.keyword_span(stmt, "block"))
        for layer in layers:
            if not isinstance(layer, Tree):
                continue
            lpath = path + ("layers", len(items))
            entry: dict[str, Any] = {}
            self.doc.positions[lpath] = self.span(layer)
            items.append(entry)
            type_, ref_field = _LAYER_TYPES[str(layer.data)]
            self.put(entry, lpath, "type", type_, self.keyword_span(layer, type_))
            rest = layer.children
            if ref_field is not None:
                ref, ref_span = self.name(_tree(rest[0]))
                self.put(entry, lpath, ref_field, ref, ref_span)
                rest = rest[1:]
            for e in rest:
                if isinstance(e, Tree):
                    self.layer_entry(e, lpath, entry, type_)

    def layer_entry(self, e: Tree[Token], path: Path, target: dict[str, Any], type_: str) -> None:
        key_tok = _tree(e.children[0]).children[0]
        key = str(key_tok)
        if key not in _layer_fields(type_):
            dym = did_you_mean(key, LAYER_KEYWORDS)
            if dym:
                self.errors.append(
                    Diagnostic(
                        self.span(key_tok),
                        f"unknown field '{key}' in a {type_} layer",
                        f"a new layer starts with its type: {dym}",
                        code=Code.UNKNOWN_FIELD,
                    )
                )
                return
        self.entry(e, path, target)

    def stmt_optimizer_ref(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        tok = cast(Token, stmt.children[0])
        self.singleton(stmt, data, "optimizer", self.string(tok), self.span(tok))

    def stmt_optimizer(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        self.section_with_items(stmt, data, "optimizer", "type", "groups", "group", "params")

    def stmt_data(self, stmt: Tree[Token], data: dict[str, Any]) -> None:
        self.section_with_items(stmt, data, "data", "task", "tasks", "task", "task")

    def section_with_items(
        self, stmt: Tree[Token], data: dict[str, Any], section: str, disc: str, items_key: str,
        item_keyword: str, item_disc: str,
    ) -> None:
        """`section DISC (args) { entries  item_keyword ITEM_DISC (args) {..} ... }`: the shape of
        `optimizer TYPE { group PARAMS {..} }` and `data continual { task KIND {..} }`."""
        disc_tree, args, body = stmt.children
        value: dict[str, Any] = {}
        self.singleton(stmt, data, section, value, self.span(stmt))
        if data.get(section) is not value:
            return
        path: Path = (section,)
        name, name_span = self.name(_tree(disc_tree))
        self.put(value, path, disc, name, name_span)
        if isinstance(args, Tree):
            self.args(args, path, value)
        if not isinstance(body, Tree):
            return
        items: list[Any] = []
        for item in body.children:
            if not isinstance(item, Tree):
                continue
            if item.data == "entry":
                self.entry(item, path, value)
                continue
            if not items and not self.put(value, path, items_key, items, self.span(item),
                                          self.keyword_span(item, item_keyword)):
                continue
            ipath = path + (items_key, len(items))
            sub: dict[str, Any] = {}
            self.doc.positions[ipath] = self.span(item)
            items.append(sub)
            sub_tree, sargs, sbody = item.children
            sub_name, sub_span = self.name(_tree(sub_tree))
            self.put(sub, ipath, item_disc, sub_name, sub_span)
            if isinstance(sargs, Tree):
                self.args(sargs, ipath, sub)
            if isinstance(sbody, Tree):
                self.body(sbody, ipath, sub)

    # -- fields ------------------------------------------------------------------------------

    def fields(self, tree: Tree[Token], path: Path, target: dict[str, Any]) -> None:
        if tree.data == "args":
            self.args(tree, path, target)
        else:
            self.body(tree, path, target)

    def body(self, tree: Tree[Token], path: Path, target: dict[str, Any]) -> None:
        for e in tree.children:
            if isinstance(e, Tree):
                self.entry(e, path, target)

    def args(self, tree: Tree[Token], path: Path, target: dict[str, Any]) -> None:
        for arg in tree.children:
            if not isinstance(arg, Tree):
                continue
            key_tok = _tree(arg.children[0]).children[0]
            key = str(key_tok)
            value_tree = arg.children[1] if len(arg.children) > 1 else None
            key_span = self.span(key_tok)
            if value_tree is None:  # a bare flag: `residual`
                self.put(target, path, key, True, key_span, key_span)
            else:
                value, value_span = self.value(value_tree, path + (key,))
                self.put(target, path, key, value, value_span, key_span)

    def entry(self, tree: Tree[Token], path: Path, target: dict[str, Any]) -> None:
        key_tok = _tree(tree.children[0]).children[0]
        key = str(key_tok)
        value, value_span = self.value(tree.children[1], path + (key,))
        self.put(target, path, key, value, value_span, self.span(key_tok))

    # -- values ------------------------------------------------------------------------------

    def value(self, tree: Tree[Token] | Token, path: Path) -> tuple[Any, Span]:
        """Convert a value node; positions of nested items (list elements, gate fields) are
        recorded under `path` (the value's own position is recorded by the caller)."""
        span = self.span(tree)
        if isinstance(tree, Token):  # pragma: no cover - every value alternative is aliased
            return str(tree), span
        kind = tree.data
        if kind == "number":
            return self.number(cast(Token, tree.children[0])), span
        if kind == "string":
            return self.string(cast(Token, tree.children[0])), span
        if kind == "word":
            return str(tree.children[0]), span
        if kind == "true":
            return True, span
        if kind == "false":
            return False, span
        if kind == "none":
            return None, span
        if kind == "list":
            items: list[Any] = []
            for child in tree.children:
                if child is None:
                    continue
                item, item_span = self.value(child, path + (len(items),))
                self.doc.positions[path + (len(items),)] = item_span
                items.append(item)
            return items, span
        if kind == "gate":
            name_tree, *opts = tree.children
            gate: dict[str, Any] = {}
            squash, squash_span = self.name(_tree(name_tree))
            self.put(gate, path, "learned", squash, squash_span)
            for opt in opts:
                if not isinstance(opt, Tree):
                    continue
                key_tok = _tree(opt.children[0]).children[0]
                v, v_span = self.value(opt.children[1], path + (str(key_tok),))
                self.put(gate, path, str(key_tok), v, v_span, self.span(key_tok))
            return gate, span
        if kind == "inline_level":  # `every 16 tokens ["doc"]`: {every: ..., doc: ...}
            period, doc_tok = tree.children
            level: dict[str, Any] = {}
            every, every_span = self.period(_tree(period))
            self.put(level, path, "every", every, every_span)
            if isinstance(doc_tok, Token):
                self.put(level, path, "doc", self.string(doc_tok), self.span(doc_tok))
            return level, span
        raise AssertionError(f"unknown value node {kind}")  # pragma: no cover

    def period(self, tree: Tree[Token]) -> tuple[Any, Span]:
        first = cast(Token, tree.children[0])
        if first.type == "STRING":
            return self.string(first), self.span(first)
        unit = tree.children[1]
        number_text = str(first)
        if unit is None:
            return self.number(first), self.span(first)
        unit_tok = _tree(unit).children[0]
        if _INT_RE.match(number_text):
            number_text = str(int(number_text))
        return f"{number_text} {unit_tok}", self.from_to(self.span(first), self.span(unit_tok))

    def number(self, tok: Token) -> int | float:
        text = str(tok)
        if _INT_RE.match(text):
            return int(text)
        return float(text)

    def string(self, tok: Token) -> str:
        body = str(tok)[1:-1]
        try:
            return unescape(body)
        except ValueError as e:
            self.errors.append(
                Diagnostic(self.span(tok), f"invalid escape '{e}' in string",
                           'use \\" \\\\ \\n \\t \\r or \\uXXXX', code=Code.SYNTAX)
            )
            return body

    def name(self, tree: Tree[Token]) -> tuple[str, Span]:
        tok = cast(Token, tree.children[0])
        if tok.type == "STRING":
            return self.string(tok), self.span(tok)
        return str(tok), self.span(tok)


@cache
def _layer_fields(type_: str) -> frozenset[str]:
    models: dict[str, type[ir.Node]] = {
        "memory": ir.MemoryLayer, "mal": ir.MALLayer, "mag": ir.MAGLayer,
        "self_modifying": ir.SelfModifyingLayer, "cms": ir.CMSLayer, "mlp": ir.MLPLayer,
    }
    return frozenset(models[type_].model_fields)
