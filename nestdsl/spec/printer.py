"""Print a `Spec` (the IR) as canonical YAML or `.nest` text (`nestdsl fmt`).

Canonical means: deterministic, fields in IR declaration order with the discriminator first
(`kind`, `type`, `task`, `params`), fields equal to their default omitted (required fields and
discriminators are always printed), small leaf records on one line. `full=True` (what
`nestdsl fmt --resolved` prints) writes the defaults out too.  Printing works from the IR,
not from the source text, so **comments and formatting of the input are not preserved**; the
guarantee is semantic: parsing the printed text gives an IR equal to the one printed
(`parse(print(ir)) == ir`, tested for every preset and for generated specs).

YAML needs care that the loader (YAML 1.1 rules) reads every scalar back as the same type:
floats always carry a `.` (`1.0e-08`, since `1e-08` would load as a string), and strings that
would resolve to something else (`yes`, `null`, `1.5`, `"16"`) or contain YAML syntax are
double-quoted with escapes.  In `.nest`, names that are not plain identifiers, and values that
collide with value keywords (`true`, `null`, `learned`, ...), are double-quoted.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from nestdsl.spec import ir
from nestdsl.spec.periods import DataShape, LevelKind, classify

__all__ = ["nest_from_plain", "print_spec", "to_plain"]

WIDTH = 100

# Discriminators print first (and always); reference fields of layers follow the type.
_FIRST = ("params", "type", "task", "kind", "learned")
_LAYER_REFS = ("memory", "cms", "attention", "projections")
# Memory fields shown as arguments of the kind in `.nest`: `mlp(depth 2, hidden 2, residual)`.
_MEMORY_ARGS = ("depth", "hidden", "activation", "residual", "window", "heads")


def print_spec(spec: ir.Spec, syntax: str, *, full: bool = False) -> str:
    """The spec as canonical text in `syntax` ("yaml" or "nest"); ends with a newline.

    `full` (`nestdsl fmt --resolved`): every field is printed with its value, defaults included,
    except fields that are empty (`null`, `[]`, `{}`) by default and are still empty (absent and
    empty mean the same) and the defaults nothing reads, which the checker rejects once written
    out: an optimizer's hyper-parameters its types do not read, a persistent CMS stage's
    in-context settings and a continual sub-task's shape (`_plain_spec`)."""
    if syntax == "yaml":
        return _print_yaml(spec, full)
    if syntax == "nest":
        return _print_nest(spec, full)
    raise ValueError(f"unknown syntax {syntax!r}; expected 'yaml' or 'nest'")


# ---------------------------------------------------------------------------------------------
# IR → plain ordered data (defaults dropped)


def _is_default(field: Any, value: Any) -> bool:
    if field.is_required():
        return False
    default = field.get_default(call_default_factory=True)
    if type(value) is not type(default) and not (
        isinstance(value, (int, float)) and isinstance(default, (int, float))
        and not isinstance(value, bool) and not isinstance(default, bool)
    ):
        return False
    return bool(value == default)


def _is_empty_default(field: Any, value: Any) -> bool:
    """An empty value (`None`, `[]`, `{}`) that is also the field's default: nothing to show."""
    empty = value is None or (isinstance(value, (list, dict)) and not value)
    return empty and _is_default(field, value)


def to_plain(node: Any, full: bool = False) -> Any:
    """IR → dicts/lists/scalars in canonical order, without fields equal to their defaults
    (`full`: with them, see `print_spec`)."""
    if isinstance(node, ir.Period):
        return str(node)
    if isinstance(node, ir.Node):
        fields = type(node).model_fields
        out: dict[str, Any] = {}
        names = [n for n in fields if n != "span"]
        first = [n for n in _FIRST if n in names]
        if isinstance(node, (ir.MemoryLayer, ir.MALLayer, ir.MAGLayer, ir.SelfModifyingLayer, ir.CMSLayer, ir.MLPLayer)):
            first += [n for n in _LAYER_REFS if n in names]
        if isinstance(node, ir.Memory):
            first += [n for n in _MEMORY_ARGS if n in names]  # architecture right after the kind
        ordered = first + [n for n in names if n not in first]
        if isinstance(node, ir.Optimizer):  # the type's hyper-parameters, then the groups
            ordered = [n for n in ordered if n != "groups"] + ["groups"]
        for name in ordered:
            value = getattr(node, name)
            field = fields[name]
            # Required fields and discriminators always print (a rule's `kind` has a default).
            if field.is_required() or (name == "kind" and isinstance(node, ir.Rule)):
                out[name] = to_plain(value, full)
            elif full:
                if not _is_empty_default(field, value):
                    out[name] = to_plain(value, full)
            elif not _is_default(field, value):
                out[name] = to_plain(value, full)
        return out
    if isinstance(node, dict):
        return {k: to_plain(v, full) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [to_plain(v, full) for v in node]
    return node


# ---------------------------------------------------------------------------------------------
# Scalars

_YAML_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./\-]*( [A-Za-z0-9_./\-]+)*\Z")
_PERIOD_TEXT = re.compile(r"^\d+ (tokens?|steps?)\Z")
_NEST_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*\Z")
# `every` starts an inline level (`level every 16 tokens`) where a value or a stage's level goes
_NEST_VALUE_KEYWORDS = frozenset({"true", "false", "null", "learned", "every"})
_SIMPLE_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(s: str) -> str:
    """Double-quoted string with escapes valid in both YAML and `.nest` (non-printables → \\x/\\u/\\U)."""
    out = []
    for ch in s:
        if ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _float_text(x: float, *, yaml_form: bool) -> str:
    if math.isnan(x) or math.isinf(x):
        if yaml_form:
            return ".nan" if math.isnan(x) else (".inf" if x > 0 else "-.inf")
        raise ValueError(f"{x} cannot be written in .nest (only finite numbers)")
    text = repr(float(x))
    if yaml_form and "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"  # YAML 1.1 floats need a dot: 1.0e-08
    return text


def _yaml_str(s: str, *, flow: bool = True) -> str:
    """Plain when YAML reads it back as this very string, else double-quoted.

    In flow context (`{a: b}`, `[a, b]`) plain text must also avoid the flow indicators."""
    if _YAML_PLAIN.match(s) or _PERIOD_TEXT.match(s):
        candidate = True
    elif flow or not s or s != s.strip() or any(ch in s for ch in "\n\r\t\"'") or not s.isprintable():
        candidate = False
    else:
        candidate = s[0] not in "-?:,[]{}#&*!|>'\"%@`" and ": " not in s and " #" not in s and not s.endswith(":")
    if candidate:
        try:
            if yaml.safe_load(f"k: {s}") == {"k": s}:
                return s
        except yaml.YAMLError:
            pass
    return _escape(s)


def _plain_scalar(v: Any, *, yaml_form: bool) -> str | None:
    """null / booleans / numbers, spelled the same in both syntaxes (None for anything else)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _float_text(v, yaml_form=yaml_form)
    return None


def _yaml_scalar(v: Any, *, flow: bool = True) -> str:
    plain = _plain_scalar(v, yaml_form=True)
    if plain is not None:
        return plain
    if isinstance(v, str):
        return _yaml_str(v, flow=flow)
    raise TypeError(f"cannot print {type(v).__name__} as a YAML scalar")


def _nest_name(s: str) -> str:
    return s if _NEST_NAME.match(s) else _escape(s)


def _nest_scalar(v: Any) -> str:
    plain = _plain_scalar(v, yaml_form=False)
    if plain is not None:
        return plain
    if isinstance(v, str):
        return v if _NEST_NAME.match(v) and v not in _NEST_VALUE_KEYWORDS else _escape(v)
    raise TypeError(f"cannot print {type(v).__name__} as a .nest value")


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _is_flat_list(v: Any) -> bool:
    return isinstance(v, list) and all(map(_is_scalar, v))


def _is_gate(v: Any) -> bool:
    return isinstance(v, dict) and "learned" in v and all(map(_is_scalar, v.values()))


def _is_leaf(v: Any) -> bool:
    """A record of scalars, flat lists and gates: small enough to print on one line."""
    if isinstance(v, dict):
        return all(_is_scalar(x) or _is_flat_list(x) or _is_gate(x) for x in v.values())
    if isinstance(v, list):
        return _is_flat_list(v)
    return True


# ---------------------------------------------------------------------------------------------
# YAML


def _yaml_flow(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_yaml_str(k)}: {_yaml_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_flow(x) for x in v) + "]"
    return _yaml_scalar(v)


def _yaml_block(d: dict[str, Any], indent: int) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for key, value in d.items():
        head = f"{pad}{_yaml_str(key)}:"
        flow_ok = _is_scalar(value) or _is_flat_list(value) or (
            indent >= 2 and _is_leaf(value)
        )
        if isinstance(value, (dict, list)) and not value:
            flow_ok = True
        if _is_scalar(value):
            lines.append(f"{head} {_yaml_scalar(value, flow=False)}")
            continue
        if flow_ok:
            line = f"{head} {_yaml_flow(value)}"
            if len(line) <= WIDTH or _is_scalar(value) or not value:
                lines.append(line)
                continue
        lines.append(head)
        if isinstance(value, dict):
            lines.extend(_yaml_block(value, indent + 2))
        else:
            lines.extend(_yaml_list(value, indent + 2))
    return lines


def _yaml_list(items: list[Any], indent: int) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for item in items:
        if _is_leaf(item):
            line = f"{pad}- {_yaml_flow(item)}"
            if len(line) <= WIDTH or _is_scalar(item) or not item:
                lines.append(line)
                continue
        if isinstance(item, dict):
            sub = _yaml_block(item, indent + 2)
            sub[0] = f"{pad}- {sub[0].lstrip()}"
            lines.extend(sub)
        else:
            lines.append(f"{pad}-")
            lines.extend(_yaml_list(item, indent + 2))
    return lines


def _plain_spec(spec: ir.Spec, full: bool) -> dict[str, Any]:
    """`to_plain(spec)`; with `full`, less the defaults that nothing reads and that the checker
    rejects once written: `signal`/`scope`/`lr` of a persistent CMS stage (the outer optimizer
    updates it) and a continual sub-task's `seq_len`/`batch` (the run's shape is `data`'s)."""
    plain: dict[str, Any] = to_plain(spec, full)  # a Spec is a mapping
    if not full:
        return plain
    shape = DataShape.of(spec)
    for cname, cms in spec.cms.items():
        for i, stage in enumerate(cms.stages):
            if stage.level not in spec.levels and stage.level not in ir.BUILTIN_LEVELS:
                continue
            if classify(spec.level_period(stage.level), shape).kind == LevelKind.PERSISTENT:
                for name in ("signal", "scope", "lr"):
                    if name not in stage.model_fields_set:
                        plain["cms"][cname]["stages"][i].pop(name, None)
    if isinstance(spec.data, ir.ContinualData):
        for i, task in enumerate(spec.data.tasks):
            for name in ("seq_len", "batch"):
                if name not in task.model_fields_set:
                    plain["data"]["tasks"][i].pop(name, None)
    return plain


def _print_yaml(spec: ir.Spec, full: bool = False) -> str:
    plain = _plain_spec(spec, full)
    plain["nestdsl"] = spec.nestdsl  # the version line is always printed
    header: dict[str, Any] = {k: plain.pop(k) for k in ("nestdsl", "name", "doc") if k in plain}
    chunks = ["\n".join(_yaml_block(header, 0))]
    for key, value in plain.items():
        chunks.append("\n".join(_yaml_block({key: value}, 0)))
    return "\n\n".join(chunks) + "\n"


# ---------------------------------------------------------------------------------------------
# .nest


def _nest_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_nest_value(x) for x in v) + "]"
    if isinstance(v, dict):
        if "learned" in v:  # a learned gate
            parts = [f"learned {_nest_name(v['learned'])}"]
            parts += [f"{k} {_nest_value(x)}" for k, x in v.items() if k != "learned"]
            return " ".join(parts)
        if "every" in v and set(v) <= {"every", "doc"}:  # an inline level (document data)
            doc = f" {_escape(v['doc'])}" if v.get("doc") is not None else ""
            return f"every {v['every']}{doc}"
        raise ValueError(f"no .nest syntax for a nested record here: {v!r}")
    return _nest_scalar(v)


def _entries(d: dict[str, Any]) -> list[str]:
    return [f"{k} {_nest_value(v)}" for k, v in d.items()]


def _braced(prefix: str, entries: list[str], indent: int, *, align: bool = False) -> list[str]:
    """`prefix { a 1  b 2 }` on one line when it fits, else one entry per line."""
    pad = " " * indent
    if not entries:
        return [f"{pad}{prefix} {{}}"]
    one = f"{pad}{prefix} {{ " + "  ".join(entries) + " }"
    if len(one) <= WIDTH and not align:
        return [one]
    inner = _aligned(entries) if align else entries
    return [f"{pad}{prefix} {{"] + [f"{pad}  {e}" for e in inner] + [f"{pad}}}"]


def _aligned(entries: list[str]) -> list[str]:
    keys = [e.split(" ", 1)[0] for e in entries]
    width = max(len(k) for k in keys)
    return [f"{k.ljust(width)}  {e.split(' ', 1)[1]}" if " " in e else e for k, e in zip(keys, entries, strict=True)]


def _print_nest(spec: ir.Spec, full: bool = False) -> str:
    plain = _plain_spec(spec, full)
    plain["nestdsl"] = spec.nestdsl
    return nest_from_plain(plain)


def nest_from_plain(plain: dict[str, Any]) -> str:
    """`.nest` text for plain spec data (what `to_plain` gives, or a parsed document's data
    with periods as text): used by `print_spec` and to draft `.nest` twins of YAML presets."""
    chunks: list[list[str]] = []

    head = [f"nestdsl {plain.get('nestdsl', ir.SPEC_VERSION)}"]
    spec_line = f"spec {_nest_name(plain['name'])}"
    if plain.get("doc") is not None:
        with_doc = f"{spec_line} {_escape(plain['doc'])}"
        if len(with_doc) <= WIDTH:
            head.append(with_doc)
        else:
            head += [spec_line, f"doc {_escape(plain['doc'])}"]
    else:
        head.append(spec_line)
    chunks.append(head)

    if "model" in plain:
        chunks.append(_braced("model", _entries(plain["model"]), 0))

    if plain.get("levels"):
        levels = plain["levels"]
        width = max(len(_nest_name(n)) for n in levels)
        lines = []
        for name, level in levels.items():
            line = f"level {_nest_name(name).ljust(width)}  every {level['every']}"
            if "doc" in level and level["doc"] is not None:
                line += f"  {_escape(level['doc'])}"
            lines.append(line.rstrip())
        chunks.append(lines)

    for name, memory in plain.get("memories", {}).items():
        chunks.append(_nest_memory(name, memory))

    for name, cms in plain.get("cms", {}).items():
        mode = cms.get("mode", "chain")
        lines = [f"cms {_nest_name(name)} {mode} {{"]
        heads = [_nest_value(st["level"]) if isinstance(st["level"], dict)
                 else _nest_scalar(st["level"]) if st["level"] == "every" else _nest_name(st["level"])
                 for st in cms["stages"]]
        width = max(len(h) for h in heads)
        for stage, level in zip(cms["stages"], heads, strict=True):
            rest = {k: v for k, v in stage.items() if k != "level"}
            stage_head = f"stage {level.ljust(width)}"
            lines.append(("  " + "  ".join([stage_head, *_entries(rest)])).rstrip())
        lines.append("}")
        chunks.append(lines)

    for name, block in plain.get("blocks", {}).items():
        lines = [f"block {_nest_name(name)} {{"]
        for layer in block["layers"]:
            lines.extend("  " + line for line in _nest_layer(layer))
        lines.append("}")
        chunks.append(lines)

    if "optimizer" in plain:
        opt = plain["optimizer"]
        if isinstance(opt, str):
            chunks.append([f"optimizer {_escape(opt)}"])
        else:
            chunks.append(_nest_optimizer(opt))

    if "data" in plain:
        chunks.append(_nest_data(plain["data"]))

    if "train" in plain:
        chunks.append(_braced("train", _entries(plain["train"]), 0))

    return "\n\n".join("\n".join(c) for c in chunks) + "\n"


def _nest_memory(name: str, memory: dict[str, Any]) -> list[str]:
    args = []
    for key in _MEMORY_ARGS:
        if key in memory:
            value = memory[key]
            args.append(key if value is True else f"{key} {_nest_value(value)}")
    head = f"memory {_nest_name(name)} {memory['kind']}" + (f"({', '.join(args)})" if args else "")
    body: list[str] = []
    for key, value in memory.items():
        if key == "kind" or key in _MEMORY_ARGS:
            continue
        if key == "rule":
            body.extend(_nest_rule(value))
        else:
            body.append(f"  {key} {_nest_value(value)}")
    if not body:
        return [head]
    return [head + " {", *body, "}"]


def _nest_rule(rule: dict[str, Any]) -> list[str]:
    entries = _entries({k: v for k, v in rule.items() if k != "kind"})
    prefix = f"rule {rule['kind']}"
    if not entries:
        return [f"  {prefix}"]
    gates = any(isinstance(v, dict) for v in rule.values())
    return _braced(prefix, entries, 2, align=gates)


def _nest_layer(layer: dict[str, Any]) -> list[str]:
    """A layer on one line, or (wider than `WIDTH` in its block) its fields continued on lines
    indented under it: newlines are not significant in `.nest`."""
    type_ = layer["type"]
    rest = dict(layer)
    del rest["type"]
    ref = {"memory": "memory", "mal": "memory", "mag": "memory", "self_modifying": "memory", "cms": "cms"}.get(type_)
    entries = _entries(rest) if ref is None else None
    if ref is None:  # `mlp hidden 4`: no reference to set apart
        head, sep = type_, " "
    else:
        head, sep = f"{type_} {_nest_name(rest.pop(ref))}", "  "
        entries = _entries(rest)
    one = (head + sep + "  ".join(entries)).rstrip() if entries else head
    if len(one) + 2 <= WIDTH or not entries:
        return [one]
    lines, current = [], head
    for entry in entries:
        if len(current) + 2 + len(entry) + 2 > WIDTH and current.strip():
            lines.append(current)
            current = "    " + entry
        else:
            current = f"{current}{sep if current == head else '  '}{entry}"
    return [*lines, current]


def _nest_with_items(
    keyword: str, value: dict[str, Any], disc: str, items_key: str, item_keyword: str, item_disc: str
) -> list[str]:
    """`keyword DISC { fields  item_keyword ITEM_DISC { ... } ... }`: the shape shared by
    `optimizer TYPE { group PARAMS {..} }` and `data continual { task KIND {..} }`."""
    items = value.get(items_key, [])
    fields = {k: v for k, v in value.items() if k not in (disc, items_key)}
    prefix = f"{keyword} {value[disc]}"
    if not items:
        return [prefix] if not fields else _braced(prefix, _entries(fields), 0)
    lines = [f"{prefix} {{"] + [f"  {e}" for e in _entries(fields)]
    for item in items:
        rest = {k: v for k, v in item.items() if k != item_disc}
        iprefix = f"{item_keyword} {item[item_disc]}"
        lines.extend(_braced(iprefix, _entries(rest), 2) if rest else [f"  {iprefix}"])
    return lines + ["}"]


def _nest_optimizer(opt: dict[str, Any]) -> list[str]:
    return _nest_with_items("optimizer", opt, "type", "groups", "group", "params")


def _nest_data(data: dict[str, Any]) -> list[str]:
    return _nest_with_items("data", data, "task", "tasks", "task", "task")
