"""Document → IR: pydantic validation with errors mapped back to file:line:col.

pydantic reports errors as `loc` tuples; we map each one onto the document (`Document.resolve_path`),
turn its error type into a readable message with a hint (did-you-mean for unknown fields and
enum values, the allowed values, the field's meaning), and attach a source span to every IR node.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from nestdsl.codes import Code
from nestdsl.diagnostics import Diagnostic, SpecError, choices_hint, did_you_mean
from nestdsl.spec import ir
from nestdsl.spec.source import UNTYPED_TAG, Document, Path

# Error types that only say "this was not of type X": in a union they are noise when another
# member accepted the type and reported a more specific problem.
_TYPE_ERRORS = {
    "string_type", "float_type", "float_parsing", "int_type", "int_parsing", "bool_type",
    "bool_parsing", "model_type", "model_attributes_type", "dict_type", "list_type", "none_required",
    "int_from_float", "literal_error", "is_instance_of",
}


def validate_document(doc: Document) -> ir.Spec:
    """Validate a parsed document into a `Spec`; raise SpecError with every problem found."""
    if not isinstance(doc.data, dict):
        raise SpecError(
            [Diagnostic(doc.position(()), f"a spec must be a mapping of sections, got {_kind(doc.data)}",
                        "start with `name: my-model` and a `model:` or `optimizer:` section", code=Code.TYPE)],
            {doc.file: doc.text},
        )
    lift_inline_levels(doc)
    try:
        spec = ir.Spec.model_validate(doc.data)
    except ValidationError as e:
        error = SpecError(_unique(_diagnostics(e, doc)), {doc.file: doc.text})
        # What did validate, for the check stage to report its semantic problems too, so one
        # run shows every error instead of one layer at a time (nestdsl/pipeline.py).
        error.partial = _partial_spec(e, doc)
        raise error from None
    attach_spans(spec, (), doc)
    spec._document = doc
    bools = _bool_coercions(spec, (), doc)
    if bools:
        raise SpecError(bools, {doc.file: doc.text})
    return spec


def inline_level_sites(data: Any) -> list[tuple[Path, str, str]]:
    """Where `data` writes an inline level (`level: {every: ...}`): (path, generated name, what)
    for memories and CMS stages, in document order. The generated name is the field's path
    without its section: `<memory>.level`, `<cms>.stages.<i>.level`."""
    sites: list[tuple[Path, str, str]] = []
    memories = data.get("memories")
    if isinstance(memories, dict):
        for name, mem in memories.items():
            if isinstance(mem, dict) and isinstance(mem.get("level"), dict):
                sites.append((("memories", name, "level"), f"{name}.level", f"memory '{name}'"))
    cms = data.get("cms")
    if isinstance(cms, dict):
        for name, c in cms.items():
            stages = c.get("stages") if isinstance(c, dict) else None
            for i, stage in enumerate(stages if isinstance(stages, list) else []):
                if isinstance(stage, dict) and isinstance(stage.get("level"), dict):
                    sites.append((("cms", name, "stages", i, "level"), f"{name}.stages.{i}.level",
                                  f"cms '{name}' stage {i + 1}"))
    return sites


def lift_inline_levels(doc: Document) -> None:
    """Move every inline level into `levels:` under its generated name (see
    `inline_level_sites`) and refer to it by that name: the IR, the checker, the level graph and
    the compiler see exactly a spec that declares the level. Positions move along (errors in the
    level still point into the inline mapping) and `doc.moved` maps the new path back to the
    written one for messages."""
    data = doc.data
    sites = inline_level_sites(data)
    if not sites or not isinstance(data.get("levels", {}), dict):
        return  # nothing to lift, or `levels:` is not a mapping (validation reports it)
    levels = data.setdefault("levels", {})
    clashes: list[Diagnostic] = []
    for path, name, what in sites:
        if name in levels:
            first = doc.key_positions.get(("levels", name))
            where = f" (line {first.line})" if first else ""
            clashes.append(Diagnostic(
                doc.position(path), f"the inline level of {what} is named '{name}', but `levels:` "
                f"already has a level '{name}'{where}",
                f"rename that level, or write `level: {name}` to use it", code=Code.DUPLICATE))
            continue
        node: Any = data
        for part in path[:-1]:
            node = node[part]
        levels[name] = node[path[-1]]
        node[path[-1]] = name
        new = ("levels", name)
        for table in (doc.positions, doc.key_positions):
            for p, span in list(table.items()):
                if p[: len(path)] == path:
                    table[new + p[len(path):]] = span
        doc.moved[new] = path
    if clashes:
        raise SpecError(clashes, {doc.file: doc.text})


def _unique(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for d in diags:
        key = (d.span.file, d.span.line, d.span.col, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _bool_coercions(node: Any, path: Path, doc: Document) -> list[Diagnostic]:
    """`depth: true` validates as 1 in pydantic's lax mode; a boolean for a number is a mistake.

    (Lax mode stays on because it usefully reads YAML 1.1 strings like `3e-3` as numbers.)
    """
    out: list[Diagnostic] = []
    if isinstance(node, ir.Node):
        for name in type(node).model_fields:
            if name == "span":
                continue
            value = getattr(node, name)
            sub = path + (name,)
            raw = doc.find(sub)
            if not isinstance(value, bool) and isinstance(value, (int, float)) and isinstance(raw, bool):
                expected = _describe_annotation(type(node), name)
                out.append(Diagnostic(doc.position(sub), f"invalid value for '{_dotted(doc.written(sub))}': expected {expected}, got {_kind(raw)}",
                                      _field_hint(type(node), name), code=Code.TYPE))
            out.extend(_bool_coercions(value, sub, doc))
    elif isinstance(node, dict):
        for key, value in node.items():
            out.extend(_bool_coercions(value, path + (key,), doc))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_bool_coercions(value, path + (i,), doc))
    return out


# Named sections whose entries can be dropped one by one to validate the rest of a spec.
_NAMED_SECTIONS = ("levels", "memories", "cms", "blocks")


@dataclass(frozen=True)
class PartialSpec:
    """The part of a rejected document that validates: the spec less what pydantic rejected,
    and what was dropped (`broken`: {"memories": {"x"}, "data": set()}), so the checker does not
    report references to it again."""

    spec: ir.Spec
    doc: Document
    broken: dict[str, set[str]]


def _partial_spec(error: ValidationError, doc: Document) -> PartialSpec | None:
    """What remains after dropping the entries pydantic rejected.

    A rejected entry of a named section (a memory, level, cms or block) is dropped; a rejected
    `optimizer`, `data` or `train` section is dropped too. A rejected `model`, or a rejection at
    the top level, leaves too little to check (None).
    """
    if not isinstance(doc.data, dict):
        return None
    broken: dict[str, set[str]] = {}
    data = dict(doc.data)
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        if not loc or not isinstance(loc[0], str) or loc[0] not in doc.data:
            return None
        section = loc[0]
        if section in broken and not broken[section]:
            continue  # the whole section is already dropped
        if section in _NAMED_SECTIONS and len(loc) >= 2 and isinstance(data[section], dict) and loc[1] in doc.data[section]:
            entries = dict(data[section])
            entries.pop(loc[1], None)
            data[section] = entries
            broken.setdefault(section, set()).add(str(loc[1]))
        elif section in ("optimizer", "data", "train"):
            data.pop(section, None)
            broken.setdefault(section, set())
        else:
            return None
    try:
        spec = ir.Spec.model_validate(data)
    except (ValidationError, ValueError, TypeError):
        return None
    attach_spans(spec, (), doc)
    spec._source_file = doc.file
    return PartialSpec(spec, doc, broken)


def attach_spans(node: Any, path: Path, doc: Document) -> None:
    """Set `span` on every IR node from the document positions."""
    if isinstance(node, ir.Node):
        node.span = doc.position(path)
        for name in type(node).model_fields:
            if name != "span":
                attach_spans(getattr(node, name), path + (name,), doc)
    elif isinstance(node, dict):
        for key, value in node.items():
            attach_spans(value, path + (key,), doc)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            attach_spans(value, path + (i,), doc)


# ---------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing (null)"
    return type(value).__name__


def _dotted(loc: Path) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + str(part))
    return out or "<spec>"


def _union_site(loc: tuple[Any, ...], doc: Document) -> tuple[Any, ...] | None:
    """The loc prefix where a union member name was inserted (None if not in a union)."""
    node = doc.data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(part, str) and (part[:1].isupper() or part in ("str", "float", "int", "bool", "none") or "[" in part):
            return tuple(loc[:i])
        else:
            return None
    return None


def _diagnostics(error: ValidationError, doc: Document) -> list[Diagnostic]:
    errors = error.errors(include_url=False)
    # Collapse union-member noise: per union site keep specific errors, or one "expected" message.
    by_site: dict[tuple[Any, ...], list[ErrorDetails]] = {}
    plain: list[ErrorDetails] = []
    for err in errors:
        site = _union_site(err["loc"], doc)
        if site is None:
            plain.append(err)
        else:
            by_site.setdefault(site, []).append(err)
    diags = [_one(err, doc) for err in plain]
    for site, errs in by_site.items():
        # An error deeper than `site + (member,)` comes from a union member that accepted the
        # value's shape (e.g. a mapping for `Optimizer | str`): that member is what the user meant,
        # so its errors (even plain type errors) are the real ones. Otherwise no member fits.
        deep = [e for e in errs if len(e["loc"]) > len(site) + 1]
        specific = deep or [e for e in errs if e["type"] not in _TYPE_ERRORS]
        if specific:
            diags.extend(_one(e, doc) for e in specific)
        else:
            diags.append(_union_mismatch(site, errs, doc))
    return _unique(diags)


def _union_mismatch(site: tuple[Any, ...], errs: list[ErrorDetails], doc: Document) -> Diagnostic:
    path = doc.resolve_path(site)
    value = doc.get(path) if path == tuple(site) else None
    field = site[-1] if site else "spec"
    model = _model_at(site[:-1], doc) if site else None
    expected = _describe_annotation(model, str(field)) if model else "another type"
    return Diagnostic(
        doc.position(path),
        f"invalid value for '{_dotted(doc.written(site))}': expected {expected}, got {_kind(value)}",
        _field_hint(model, str(field)),
        code=Code.TYPE,
    )


def _one(err: ErrorDetails, doc: Document) -> Diagnostic:
    loc: tuple[Any, ...] = tuple(err["loc"])
    etype: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    path = doc.resolve_path(loc)
    value = err.get("input")
    clean = tuple(p for p in doc.strip_tags(loc) if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))
    field = str(clean[-1]) if clean else "spec"
    parent_model = _model_at(clean[:-1], doc)
    where = _dotted(doc.written(doc.strip_tags(clean)))
    if len(path) < len(loc) and not isinstance(doc.find(path), (dict, list)) and etype != "missing":
        # The value was a scalar that a before-validator expanded (a period "16 tokens" becomes
        # {every, unit}): name the field the user wrote, not the expanded one.
        where = _dotted(doc.written(path))
        field = str(path[-1]) if path else field
        parent_model = _model_at(_clean_doc_path(path[:-1], loc), doc) if path else parent_model

    if etype == "extra_forbidden":
        misplaced = _misplaced_memory_field(clean, doc) or _misplaced_optimizer_field(clean, doc)
        if misplaced is not None:
            return misplaced
        allowed = _fields(parent_model)
        hint = did_you_mean(field, allowed) or ("allowed fields: " + ", ".join(allowed) if allowed else None)
        if field in allowed:    # a field of another variant of a union (data: {task: text, path})
            hint = (f"'{field}' belongs to another variant of this section: its `task:` / `type:` "
                    "decides which fields it takes (docs/spec-reference.md lists each variant's)")
        return Diagnostic(
            doc.position(path, key=True),
            f"unknown field '{field}' in {_section(doc.written(clean[:-1]))}",
            hint,
            code=Code.UNKNOWN_FIELD,
        )
    if etype == "missing":
        # Point at the key that opens the incomplete mapping (`model:`), not its first entry.
        hint = _field_hint(parent_model, field)
        if hint is None and parent_model is not None:
            hint = f"add `{field}:` with {_describe_annotation(parent_model, field)}"
        return Diagnostic(
            doc.position(path, key=True),
            f"missing required field '{field}' in {_section(doc.written(clean[:-1]))}",
            hint,
            code=Code.MISSING,
        )
    if etype == "union_tag_invalid":
        tags = [t for t in re.findall(r"'([^']*)'", str(ctx.get("expected_tags", ""))) if t != UNTYPED_TAG]
        disc = ctx.get("discriminator", "type").strip("'")
        disc = "type" if disc.endswith("()") else disc  # a union tagged by a function (groups)
        return Diagnostic(
            doc.position(path + (disc,)),
            f"unknown {disc} '{ctx.get('tag')}' in {_section(clean)}",
            choices_hint(str(ctx.get("tag")), tags),
            code=Code.UNKNOWN_VALUE,
        )
    if etype == "union_tag_not_found":
        disc = str(ctx.get("discriminator", "type")).strip("'")
        tags = _union_tags(clean, disc)
        hint = (f"add `{disc}:` with one of {', '.join(repr(t) for t in tags)}" if tags
                else f"say which {disc} this is")
        return Diagnostic(doc.position(path, key=True), f"missing required field '{disc}' in {_section(clean)}",
                          hint, code=Code.MISSING)
    if etype == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", ""))) or [
            s.strip() for s in re.split(r",| or ", str(ctx.get("expected", ""))) if s.strip()
        ]
        return Diagnostic(
            doc.position(path),
            f"invalid value {value!r} for '{where}'",
            choices_hint(str(value), allowed),
            code=Code.UNKNOWN_VALUE,
        )
    bound = {
        "greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<=",
    }
    if etype in bound:
        limit = next(iter(ctx.values()), "the limit")
        return Diagnostic(
            doc.position(path),
            f"'{where}' must be {bound[etype]} {limit}, got {value!r}",
            _field_hint(parent_model, field),
            code=Code.RANGE,
        )
    if etype in ("too_short", "too_long"):
        return Diagnostic(
            doc.position(path),
            f"'{where}' needs at least {ctx.get('min_length', 1)} item(s)" if etype == "too_short" else f"'{where}' has too many items",
            _field_hint(parent_model, field),
            code=Code.RANGE,
        )
    if etype in _TYPE_ERRORS or etype.endswith("_type") or etype.endswith("_parsing"):
        entry = _dict_entry_model(clean)
        if entry is not None and etype in ("model_type", "model_attributes_type", "dict_type"):
            # An entry of a named section (`memories: {x: ...}`) that is not a mapping: most
            # often a field indented one level too little, so it reads as an entry name.
            section, what = str(clean[-2]), _ENTRY_NAMES.get(entry.__name__, entry.__name__.lower())
            hint = f"each entry of '{section}' is a name followed by a mapping (a {what})"
            if field in entry.model_fields:
                hint = f"'{field}' is a field of a {what}: indent it under the {what}'s name"
            return Diagnostic(doc.position(path), f"invalid value for '{where}': expected a mapping (a {what}), got {_kind(value)}",
                              hint, code=Code.TYPE)
        expected = _describe_annotation(parent_model, field) if parent_model else etype.replace("_", " ")
        return Diagnostic(
            doc.position(path),
            f"invalid value for '{where}': expected {expected}, got {_kind(value)}",
            _field_hint(parent_model, field),
            code=Code.TYPE,
        )
    if etype == "value_error":
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        return Diagnostic(doc.position(path), f"'{where}': {msg}", None, code=Code.VALUE)
    # Any other pydantic error type (none that the IR's constraints produce today): a value
    # pydantic refused, in pydantic's words. Normalised to the registry (nestdsl/codes.py).
    return Diagnostic(doc.position(path), f"'{where}': {err.get('msg')}", _field_hint(parent_model, field), code=Code.VALUE)


def _misplaced_memory_field(clean: tuple[Any, ...], doc: Document) -> Diagnostic | None:
    """A field that another memory kind reads, written on this one (`depth` on a linear
    memory): said in the memory's terms (`ir.misplaced_field`), not as an unknown field."""
    if len(clean) != 3 or clean[0] != "memories":
        return None
    _, name, field = clean
    node = doc.get(("memories", name))
    kind = node.get("kind") if isinstance(node, dict) else None
    if not isinstance(kind, str):
        return None
    target: tuple[Any, ...] = ("memories", name, field)
    rule = node.get("rule")
    if field == "rule" and isinstance(rule, dict) and rule.get("kind") == "dgd" \
            and (kind, "rule.kind=dgd") in ir.MISPLACED:
        field, target = "rule.kind=dgd", (*target, "kind")
    words = ir.misplaced_field(kind, str(field), str(name))
    if words is None:
        return None
    at_value = field == "rule.kind=dgd"
    return Diagnostic(doc.position(target, key=not at_value), words[0], words[1], code=Code.COMBINATION)


def _misplaced_optimizer_field(clean: tuple[Any, ...], doc: Document) -> Diagnostic | None:
    """A hyper-parameter the optimizer's (or a group's) type does not read: which types do, and
    when one of the spec's groups reads it, that it belongs on that group."""
    if not clean or clean[0] != "optimizer" or len(clean) not in (2, 4):
        return None
    opt = doc.get(("optimizer",))
    if not isinstance(opt, dict) or not isinstance(opt.get("type"), str) or opt["type"] not in ir.OPTIMIZER_FIELDS:
        return None
    field = str(clean[-1])
    users = sorted(k for k, fs in ir.OPTIMIZER_FIELDS.items() if field in fs)
    if not users:
        return None
    groups = [g for g in opt.get("groups") or [] if isinstance(g, dict)]
    if len(clean) == 2:
        kind, what = opt["type"], f"optimizer type '{opt['type']}'"
        readers = [g for g in groups if g.get("type") in users]
        fix = (f"the '{readers[0].get('params')}' group's type {readers[0]['type']} reads it: set it "
               "on that group" if readers else "remove it or change `type`")
    else:
        group = doc.get(clean[:-1])
        if not isinstance(group, dict):
            return None
        if group.get("type") is None:
            return Diagnostic(
                doc.position(clean, key=True),
                f"optimizer group '{group.get('params')}' has no `type`: it sets only lr and weight_decay",
                f"its optimizer is the parent's ({opt['type']}): "
                + (f"set `{field}` on the optimizer" if opt["type"] in users
                   else f"`{field}` is read by {', '.join(users)}: give the group one of those types"),
                code=Code.UNKNOWN_KEY)
        kind = str(group["type"])
        what = f"optimizer group '{group.get('params')}' of type '{kind}'"
        fix = "remove it or change the group's `type`"
    takes = ", ".join(ir.OPTIMIZER_FIELDS.get(kind, ())) or "nothing beyond lr and weight_decay"
    return Diagnostic(doc.position(clean, key=True), f"{what} does not use `{field}`",
                      f"{kind} takes: {takes}; `{field}` is read by {', '.join(users)}; {fix}",
                      code=Code.UNKNOWN_KEY)


_ENTRY_NAMES = {"Level": "level", "Memory": "memory", "LinearMemory": "memory", "MLPMemory": "memory",
                "AttentionMemory": "memory", "CMS": "cms", "Block": "block"}


def _dict_entry_model(clean: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model of a named-section entry when `clean` is `(..., section, name)`, else None."""
    if len(clean) < 2:
        return None
    for tp in _types_at(clean[:-1]):
        for t in _unwrap(tp):
            if typing.get_origin(t) is dict:
                value_tp = typing.get_args(t)[1]
                models = [m for m in _unwrap(value_tp) if isinstance(m, type) and issubclass(m, BaseModel)]
                if models:
                    return models[0]
    return None


def _clean_doc_path(path: Path, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(p for p in path if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))


def _section(loc: tuple[Any, ...]) -> str:
    return f"'{_dotted(loc)}'" if loc else "the spec"


# ---------------------------------------------------------------------------------------------
# Walking the IR types along a loc (for allowed-field lists and field descriptions)


def _union_tags(loc: tuple[Any, ...], disc: str) -> list[str]:
    """The values the discriminator `disc` takes across the union members at `loc`."""
    tags: list[str] = []
    for tp in _types_at(loc):
        for member in _unwrap(tp):
            field = getattr(member, "model_fields", {}).get(disc)
            if field is not None:
                tags.extend(str(a) for a in typing.get_args(field.annotation))
    return tags


def _unwrap(tp: Any) -> list[Any]:
    """All concrete types inside Optional/Union/Annotated/list/dict wrappers (one level)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        out = []
        for a in typing.get_args(tp):
            out.extend(_unwrap(a))
        return out
    return [tp]


def _model_at(loc: tuple[Any, ...], doc: Document | None = None) -> type[BaseModel] | None:
    """The model at `loc`; for a discriminated union, the member the document's node names
    (its `kind:` / `type:` / `task:`) when `doc` is given, else the first member."""
    current = _types_at(loc)
    models = [t for tp in current for t in _unwrap(tp) if isinstance(t, type) and issubclass(t, BaseModel)]
    if len(models) > 1 and doc is not None:
        try:
            node = doc.get(doc.resolve_path(loc))
        except (KeyError, IndexError, TypeError):
            node = None
        if isinstance(node, dict):
            for model in models:
                for disc in ("kind", "type", "task"):
                    field = model.model_fields.get(disc)
                    if field is not None and node.get(disc) in typing.get_args(field.annotation):
                        return model
    return models[0] if models else None


def _types_at(loc: tuple[Any, ...]) -> list[Any]:
    """The annotations reachable from `Spec` along `loc` (empty when the loc leaves the IR)."""
    current: list[Any] = [ir.Spec]
    for part in loc:
        nxt: list[Any] = []
        for tp in current:
            for t in _unwrap(tp):
                origin = typing.get_origin(t)
                if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
                    f = t.model_fields.get(part)
                    if f is not None:
                        nxt.append(f.annotation)
                    elif part == t.__name__:
                        nxt.append(t)
                elif origin is dict and isinstance(part, str):
                    nxt.append(typing.get_args(t)[1])
                elif origin is list and isinstance(part, int):
                    nxt.append(typing.get_args(t)[0])
        if not nxt:
            return []
        current = nxt
    return current


def _fields(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    if model is ir.Node:
        return []
    fields: list[str] = []
    # For a discriminated-union position, offer the union of all members' fields.
    for name in model.model_fields:
        if name != "span":
            fields.append(name)
    return fields


def _field_hint(model: type[BaseModel] | None, field: str) -> str | None:
    if model is None:
        return None
    if (model is ir.Level and field == "every") or (model is ir.Period and field == "every"):
        return "a period is a positive number of tokens or optimizer steps, e.g. '16 tokens' or '4 steps'"
    f = model.model_fields.get(field)
    if f is None or not f.description:
        return None
    return f"'{field}': {f.description}"


def _describe_annotation(model: type[BaseModel] | None, field: str) -> str:
    if model is None or field not in model.model_fields:
        return "a different type"
    names = []
    for t in _unwrap(model.model_fields[field].annotation):
        origin = typing.get_origin(t)
        if t is type(None):
            continue
        if origin is typing.Literal:
            names.append("one of " + ", ".join(repr(a) for a in typing.get_args(t)))
        elif origin is list:
            names.append("a list")
        elif origin is dict:
            names.append("a mapping")
        elif t is bool:
            names.append("true/false")
        elif t is int:
            names.append("an integer")
        elif t is float:
            names.append("a number")
        elif t is str:
            names.append("a string")
        elif isinstance(t, type) and issubclass(t, ir.Period):
            names.append("a period like '16 tokens' or '4 steps'")
        elif isinstance(t, type) and issubclass(t, ir.LearnedGate):
            names.append("{learned: sigmoid|softplus, scale: ..}")
        elif isinstance(t, type) and issubclass(t, BaseModel):
            names.append("a mapping")
        else:
            names.append(str(t))
    return " or ".join(dict.fromkeys(names)) or "a different type"
