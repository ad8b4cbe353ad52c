"""The spec-language reference (docs/spec-reference.md), generated from the IR models.

`reference_markdown()` walks the pydantic models of `nestdsl.spec.ir` from `ir.Spec` (nested
models, discriminated unions such as the block layers and the data tasks, `float | LearnedGate`
gates) and writes one section per model: its docstring, where it sits in a spec, and one table
row per field with the field's type and constraints (`Field(ge=..., gt=..., min_length=...)`),
its default and its description. The document is a pure function of the models, so a test can
hold the committed file equal to it (`nestdsl schema --markdown > docs/spec-reference.md`).

Fields that carry no `description=` in ir.py take one from `FIELD_NOTES` below; a test checks
that every note names a real field still without its own description, so once ir.py grows one
the note has to go (the two can never disagree).
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel, WithJsonSchema
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from nestdsl.spec import ir

__all__ = ["FIELD_NOTES", "MODEL_NOTES", "description", "reachable_models", "reference_markdown"]

#: Descriptions of the fields ir.py leaves undocumented, keyed by (model, field). They say what
#: the runtime does with the value (read from the code that consumes it).
FIELD_NOTES: dict[tuple[type[BaseModel], str], str] = {
    (ir.Spec, "name"): "the spec's name (shown in progress lines and reports)",
    (ir.Spec, "doc"): "one-line description",
    (ir.Spec, "model"): "the architecture; a spec without it is an outer-optimizer spec",
    (ir.Spec, "levels"): "named clocks that memories and CMS stages refer to; `token` and "
                         "`step` (period 1 token / 1 step) always exist",
    (ir.Spec, "memories"): "named associative memories, used by the block layers",
    (ir.Spec, "cms"): "named Continuum Memory Systems, used by `cms` layers",
    (ir.Spec, "blocks"): "named blocks of layers, repeated by `model.pattern`",
    (ir.Spec, "data"): "the training task, chosen by `task`",
    (ir.Spec, "train"): "the outer training loop",
    (ir.Model, "vocab"): "token ids of the embedding and the head; must cover the data's "
                         "vocabulary (256 for bytes and the synthetic tasks, the BPE size)",
    (ir.Model, "width"): "model width (embedding and residual stream)",
    (ir.Model, "depth"): "number of blocks",
    (ir.Model, "heads"): "heads of the memories and attention; head dimension = width / heads",
    (ir.Model, "tie_embeddings"): "the output head reuses the input embedding matrix",
    (ir.Period, "unit"): "tokens (inside a sequence) or outer optimizer steps",
    (ir.Level, "doc"): "free text shown in the level graph",
    (ir.Memory, "kind"): "a matrix per head, an MLP per head, or non-parametric softmax attention",
    (ir.CMSStage, "activation"): "MLP activation",
    (ir.CMS, "mode"): "chain: each stage refines the previous one's output (NL Eq. 70); "
                      "independent: a learned softmax-weighted sum of the stages (Eq. 74); "
                      "nested: chain wiring, each stage reset to its initial state every period "
                      "of the next (slower) stage",
    (ir.CMS, "stages"): "the MLP stages, fastest first, each with its own level",
    (ir._Layer, "residual"): "add the layer's output to its input",
    (ir.MemoryLayer, "type"): "layer type (the discriminator)",
    (ir.MemoryLayer, "memory"): "name of a memory in `memories`",
    (ir.MALLayer, "type"): "layer type (the discriminator)",
    (ir.MALLayer, "memory"): "name of the parametric memory, applied first",
    (ir.MALLayer, "attention"): "name of an attention memory (sliding window) applied to its output",
    (ir.MAGLayer, "type"): "layer type (the discriminator)",
    (ir.MAGLayer, "memory"): "name of the parametric memory",
    (ir.MAGLayer, "attention"): "name of an attention memory (sliding window) gated with it",
    (ir.SelfModifyingLayer, "type"): "layer type (the discriminator)",
    (ir.SelfModifyingLayer, "conv"): "causal depthwise conv width on q,k,v (0: none)",
    (ir.SelfModifyingLayer, "qk_norm"): "L2-normalise q and k",
    (ir.SelfModifyingLayer, "output_gate"): "output norm and sigmoid gate",
    (ir.CMSLayer, "type"): "layer type (the discriminator)",
    (ir.CMSLayer, "cms"): "name of a CMS in `cms`",
    (ir.MLPLayer, "type"): "layer type (the discriminator)",
    (ir.MLPLayer, "hidden"): "hidden multiple of the width",
    (ir.MLPLayer, "activation"): "MLP activation",
    (ir.ParamGroup, "params"): "which parameters: matrices (2-D or more, embeddings excepted), "
                               "vectors (norm gains, biases, gates' vectors), embeddings, or all; "
                               "when several groups match, the last one wins",
    (ir.ParamGroup, "type"): "optimizer type for these parameters (null: the optimizer's)",
    (ir.ParamGroup, "lr"): "learning rate for these parameters (null: the optimizer's)",
    (ir.ParamGroup, "weight_decay"): "weight decay for these parameters (null: the optimizer's)",
    (ir.Optimizer, "type"): "the update rule (the discriminator)",
    (ir.Optimizer, "lr"): "outer learning rate, the peak of `train.schedule`",
    (ir.Optimizer, "weight_decay"): "weight decay",
    (ir.Optimizer, "groups"): "route parameter classes to another type / lr / weight decay",
    (ir._Data, "seq_len"): "tokens per training sequence",
    (ir._Data, "batch"): "sequences per outer step",
    (ir._Data, "seed"): "data seed: every batch is a pure function of (seed, step)",
    (ir.TextData, "task"): "task (the discriminator)",
    (ir.TextData, "path"): "a text file, or a folder read recursively for `*.txt` files; a relative "
                           "path is tried against the working folder, then the spec's folder",
    (ir.TextData, "tokenizer"): "bytes: one token per byte (256 ids); bpe: a byte-level BPE trained "
                                "on the corpus (optional `tokenizers` package), cached in the run "
                                "folder; or the path of a local tokenizer.json (its vocabulary is "
                                "the file's)",
    (ir.TextData, "val_fraction"): "the last fraction of the token stream, held out for validation",
    (ir.MQARData, "task"): "task (the discriminator)",
    (ir.MQARData, "num_pairs"): "key-value pairs before the queries (at most 127)",
    (ir.MQARData, "num_queries"): "queries after the pairs (null: num_pairs)",
    (ir.NIAHData, "task"): "task (the discriminator)",
    (ir.NIAHData, "variant"): "S-NIAH variant (RULER S-NIAH-1/2/3)",
    (ir.CopyData, "task"): "task (the discriminator)",
    (ir.CopyData, "length"): "length of the random string to copy",
    (ir.ContinualData, "task"): "task (the discriminator)",
    (ir.ContinualData, "tasks"): "the tasks in order; they share this section's seq_len and batch",
    (ir.Train, "steps"): "outer optimizer steps (`nestdsl train --steps` overrides it)",
    (ir.Train, "schedule"): "outer learning-rate schedule after the warm-up (decays to 0)",
    (ir.Train, "warmup"): "outer steps of linear learning-rate warm-up",
    (ir.Train, "grad_clip"): "clip the outer gradient's global norm at this value (null: off)",
    (ir.Train, "seed"): "seed of the Python, NumPy and torch generators (parameter initialisation)",
    (ir.Train, "log_every"): "steps between two records of metrics.jsonl (and of telemetry)",
    (ir.Train, "ckpt_every"): "steps between two checkpoints (the last step is always saved)",
    (ir.Train, "precision"): "fp32, or bf16 autocast",
    (ir.Block, "layers"): "the layers in order, each chosen by `type`",
}

#: Models documented by another: a typed parameter group is ParamGroup plus its type's fields,
#: which that type's section lists (`_group_table`).
_STAND_INS: dict[type[BaseModel], type[BaseModel]] = {m: ir.ParamGroup for m in ir.GROUP_MODELS.values()}

#: Intros of the models ir.py gives no docstring (same rule as FIELD_NOTES).
MODEL_NOTES: dict[type[BaseModel], str] = {
    ir.Train: "The outer training loop: steps, learning-rate schedule, logging, checkpoints, "
              "precision and the inner-loop telemetry.",
}

# Readable names of the constraint bounds pydantic records as `annotated_types` metadata.
_LOWER: dict[type, str] = {at.Ge: "≥", at.Gt: ">"}
_UPPER: dict[type, str] = {at.Le: "≤", at.Lt: "<"}
_BOUND_ATTR: dict[type, str] = {at.Ge: "ge", at.Gt: "gt", at.Le: "le", at.Lt: "lt"}
_SCALARS: dict[Any, str] = {int: "int", float: "float", str: "str", bool: "bool"}


# ---------------------------------------------------------------------------------------------
# Walking the models


@dataclass
class _Section:
    """One model's section: where it appears in a spec and how it is selected."""

    model: type[BaseModel]
    depth: int
    places: list[str] = field(default_factory=list)
    selector: str | None = None      # `type: memory` for a member of a discriminated union
    written_as: str | None = None    # a model with its own surface form (a period: "16 tokens")


def _documented_fields(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    """The fields a spec author writes: `span` and other excluded fields are provenance."""
    for name, info in model.model_fields.items():
        if info.exclude is not True:
            yield name, info


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _discriminator(tp: Any) -> tuple[Any, str | None]:
    """`Annotated[Union[...], Field(discriminator=...)]` → (the union, the discriminator)."""
    if typing.get_origin(tp) is typing.Annotated:
        inner, *meta = typing.get_args(tp)
        for m in meta:
            if isinstance(m, FieldInfo) and isinstance(m.discriminator, str):
                return inner, m.discriminator
        return inner, None
    return tp, None


def _tag(model: type[BaseModel], discriminator: str) -> str:
    """The discriminator value that selects `model` (`type: memory`, `task: text`)."""
    values = typing.get_args(model.model_fields[discriminator].annotation)
    return f"{discriminator}: {', '.join(str(v) for v in values)}"


def _children(tp: Any, place: str) -> Iterator[tuple[type[BaseModel], str, str | None]]:
    """(model, place in a spec, selector) for every model a field's annotation refers to."""
    tp, discriminator = _discriminator(tp)
    members = _union_args(tp)
    if members is not None:
        for member in members:
            for model, where, selector in _children(member, place):
                tag = _tag(model, discriminator) if discriminator and selector is None else selector
                yield model, where, tag
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        yield from _children(args[0], f"{place}[i]")
    elif origin is dict:
        yield from _children(args[1], f"{place}.<name>")
    elif _is_model(tp):
        yield _STAND_INS.get(tp, tp), place, None


def _walk(root: type[BaseModel]) -> list[_Section]:
    """Every model reachable from `root`, depth first in field order (the order of a spec)."""
    sections: dict[type[BaseModel], _Section] = {root: _Section(root, 0, ["the top level"])}

    def visit(model: type[BaseModel], prefix: str, depth: int) -> None:
        for name, info in _documented_fields(model):
            place = f"{prefix}.{name}" if prefix else name
            for child, where, selector in _children(info.annotation, place):
                seen = child in sections
                section = sections.setdefault(child, _Section(child, depth + 1))
                if where not in section.places:
                    section.places.append(where)
                section.selector = section.selector or selector
                section.written_as = section.written_as or _surface_form(info)
                if not seen:
                    visit(child, where, depth + 1)

    visit(root, "", 0)
    return list(sections.values())


def reachable_models(root: type[BaseModel] = ir.Spec) -> list[type[BaseModel]]:
    """The models a spec can contain, in the order the reference lists them."""
    return [s.model for s in _walk(root)]


def _surface_form(info: FieldInfo) -> str | None:
    """A field whose model is written in a form of its own (a `Period` as '16 tokens') says so
    in its JSON-schema override."""
    for m in info.metadata:
        if isinstance(m, WithJsonSchema) and m.json_schema:
            return m.json_schema.get("description")
    return None


# ---------------------------------------------------------------------------------------------
# Rendering types, defaults and descriptions


def _bounds(metadata: list[Any]) -> tuple[str | None, str | None]:
    """('≥ 1', '< 1') from Ge/Gt/Le/Lt metadata (None where unbounded)."""
    lower = upper = None
    for m in metadata:
        kind = type(m)
        if kind in _LOWER:
            lower = f"{_LOWER[kind]} {_number(getattr(m, _BOUND_ATTR[kind]))}"
        elif kind in _UPPER:
            upper = f"{_UPPER[kind]} {_number(getattr(m, _BOUND_ATTR[kind]))}"
    return lower, upper


def _min_length(metadata: list[Any]) -> int | None:
    for m in metadata:
        if isinstance(m, at.MinLen):
            return int(m.min_length)
    return None


def _number(x: Any) -> str:
    """A number as a spec author writes it: 1e-08 → 1e-8."""
    text = repr(x)
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{'-' if m.group(1) == '-' else ''}{m.group(2)}", text)


def _render_type(tp: Any, metadata: list[Any]) -> str:
    """A readable type: `int ≥ 1`, `"gd" | "dgd"`, `float | LearnedGate | null`."""
    tp, discriminator = _discriminator(tp)
    members = _union_args(tp)
    if members is not None:
        if discriminator:
            tags = [f"[`{_tag(m, discriminator).split(': ', 1)[1]}`](#{m.__name__.lower()})"
                    for m in members if _is_model(m)]
            text = f"one of, by `{discriminator}`: " + " \\| ".join(tags)
        else:
            text = " \\| ".join(dict.fromkeys(_render_type(m, metadata) for m in members if m is not type(None)))
        return text + (" \\| `null`" if type(None) in members else "")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in args)
    if origin is list:
        n = _min_length(metadata)
        size = f", ≥ {n} item{'s' if n != 1 else ''}" if n else ""
        return f"list of {_render_type(args[0], [])}{size}"
    if origin is dict:
        return f"map: name → {_render_type(args[1], [])}"
    if _is_model(tp):
        tp = _STAND_INS.get(tp, tp)
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    if tp in _SCALARS:
        name = _SCALARS[tp]
        if tp is str:
            return name + (", non-empty" if _min_length(metadata) else "")
        if tp in (int, float):
            lower, upper = _bounds(metadata)
            if lower and upper:
                # 0 ≤ float ≤ 1 reads better than float ≥ 0, ≤ 1
                return f"{lower.split(' ', 1)[1]} {_flip(lower)} {name} {upper}"
            return " ".join(p for p in (name, lower or upper) if p)
        return name
    return f"`{getattr(tp, '__name__', str(tp))}`"


def _flip(bound: str) -> str:
    """'≥ 0' → '≤' (the operator of `0 ≤ x`)."""
    return {"≥": "≤", ">": "<"}[bound.split(" ", 1)[0]]


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    return f"`{_literal(value)}`"


def _literal(value: Any) -> str:
    """A default in spec syntax: `true`, `null`, `"gd"`, `1e-8`, `["k", "v"]`."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_literal(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    """Table-cell safe: one line, pipes escaped (|k|^2 would split the row)."""
    return " ".join(text.split()).replace("|", "\\|")


def description(model: type[BaseModel], name: str) -> str:
    """The field's own description, else the one of its JSON-schema override (a period), else
    its note in FIELD_NOTES (looked up along the base classes: `_Data.seq_len`), else empty."""
    info = model.model_fields[name]
    if info.description:
        return info.description
    surface = _surface_form(info)
    if surface:
        return surface
    for owner in model.__mro__:
        if (owner, name) in FIELD_NOTES:
            return FIELD_NOTES[(owner, name)]
    return ""


def _docstring(model: type[BaseModel]) -> str | None:
    # Own docstring only: a subclass without one must not repeat its base's.
    doc = model.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if doc else MODEL_NOTES.get(model)


# ---------------------------------------------------------------------------------------------
# The document

_INTRO = """\
# Spec language reference

A nestdsl spec describes a whole Nested Learning system: the model (memories with their
objective and inner update rule, the levels — clocks — they fire at, Continuum Memory System
chains, blocks of layers), the outer optimizer, the data and the training loop. A spec has two
interchangeable surface forms, YAML (`specs/hope.yaml`) and `.nest` (its twin `specs/hope.nest`);
both parse to the same validated model, and `nestdsl fmt SPEC --to yaml|nest` converts one into
the other. A field left out takes the default below; `null` is None. Where a default depends on
the rest of the spec (a memory's residual, MLP shape, initial state, erase rate),
`nestdsl fmt --resolved SPEC` prints the spec with every value the compiler decides filled in.
`nestdsl schema` prints the JSON Schema of the YAML form (for editor completion), and
`nestdsl check SPEC` applies the semantic rules no table can express (references between
sections, periods, which fields a memory kind or an optimizer type reads). Each of its
diagnostics has a code (the `code` of `nestdsl check --json`): `nestdsl codes` lists them, and
`nestdsl codes CODE` says what one means and how it is usually fixed.

This file is generated from the pydantic models in `nestdsl/spec/ir.py` by
`nestdsl schema --markdown > docs/spec-reference.md`; tests/spec/test_reference_doc.py keeps
the two equal. In the tables, `int ≥ 1` is a validated range, `a | b` an alternative and a link
a nested section; in a place, `<name>` is a key you choose and `[i]` a list position.
"""


def _group_table() -> list[str]:
    """The hyper-parameters a group of each `type` may set (those its optimizer section lists)."""
    rows = ["", "A group with a `type` may also set that type's hyper-parameters:", "",
            "| type | also takes |", "|---|---|"]
    for kind, names in ir.OPTIMIZER_FIELDS.items():
        rows.append(f"| `{kind}` | {', '.join(f'`{n}`' for n in names) or '—'} |")
    return rows


_EXTRAS: dict[type[BaseModel], Callable[[], list[str]]] = {ir.ParamGroup: _group_table}


def _section(section: _Section) -> list[str]:
    model = section.model
    heading = "##" if section.depth <= 1 else "###"
    lines = [f"{heading} {model.__name__}", ""]
    doc = _docstring(model)
    if doc:
        lines += [doc, ""]
    places = ", ".join(p if p == "the top level" else f"`{p}`" for p in section.places)
    where = f"In a spec: {places}"
    if section.selector:
        where += f", selected by `{section.selector}`"
    lines.append(where + ".")
    if section.written_as:
        lines.append(f"Written as one value: {section.written_as}.")
    lines += ["", "| field | type | default | description |", "|---|---|---|---|"]
    fields = list(_documented_fields(model))
    if section.selector:
        # the discriminator first: it is what a reader looks for in a union member's table
        key = section.selector.split(":", 1)[0]
        fields.sort(key=lambda item: item[0] != key)
    for name, info in fields:
        kind = _render_type(info.annotation, list(info.metadata))
        lines.append(f"| `{name}` | {kind} | {_default(info)} | {_cell(description(model, name))} |")
    lines += _EXTRAS.get(model, lambda: [])()
    return lines + [""]


def reference_markdown() -> str:
    """The spec-language reference as markdown (deterministic: a function of ir.py alone)."""
    lines = [_INTRO]
    for section in _walk(ir.Spec):
        lines += _section(section)
    return "\n".join(lines).rstrip("\n") + "\n"
