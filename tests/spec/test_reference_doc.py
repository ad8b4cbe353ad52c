"""docs/spec-reference.md is generated from the IR and cannot drift: the committed file is the
generator's output, every field of every model a spec can contain has its row, and
`nestdsl schema --markdown` prints the same text."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.spec import ir
from nestdsl.spec.reference import FIELD_NOTES, MODEL_NOTES, reachable_models, reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec-reference.md"
REGENERATE = "docs/spec-reference.md is stale: regenerate with `nestdsl schema --markdown > docs/spec-reference.md`"


def _models_in(annotation: object) -> set[type[BaseModel]]:
    """Every pydantic model named anywhere inside a type annotation (unions, lists, dicts,
    Annotated): an independent walk, so the test does not trust the generator's."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    found: set[type[BaseModel]] = set()
    for arg in typing.get_args(annotation):
        found |= _models_in(arg)
    return found


def _reachable(root: type[BaseModel]) -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for info in model.model_fields.values():
            if info.exclude is not True:
                todo.extend(_models_in(info.annotation))
    return seen


def _sections(markdown: str) -> dict[str, str]:
    """Heading (a model's class name) → the text of its section."""
    parts = re.split(r"^#{2,3} (\w+)\n", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_committed_reference_is_the_generated_one() -> None:
    assert DOC.read_text(encoding="utf-8") == reference_markdown(), REGENERATE


def test_every_field_of_every_reachable_model_has_a_row_in_its_section() -> None:
    # a typed parameter group is ParamGroup plus its type's hyper-parameters: one section (with
    # a row per type listing them) documents all of them
    typed_groups = set(ir.GROUP_MODELS.values())
    models = _reachable(ir.Spec) - typed_groups
    # the spec's sections, nested models and union members all reach the document
    assert {ir.Model, ir.Rule, ir.LearnedGate, ir.CMSStage, ir.MemoryLayer, ir.SelfModifyingLayer,
            ir.ParamGroup, ir.TextData, ir.ContinualData, ir.Train} <= models
    assert set(reachable_models()) == models
    sections = _sections(reference_markdown())
    assert set(sections) == {m.__name__ for m in models}
    for model in models:
        for name, info in model.model_fields.items():
            row = f"\n| `{name}` |"
            if info.exclude is True:     # provenance (`span`), not something a spec writes
                assert row not in sections[model.__name__]
            else:
                assert row in sections[model.__name__], f"{model.__name__}.{name} has no row"
    for kind, group in ir.GROUP_MODELS.items():
        extra = [n for n in group.model_fields if n not in ir.ParamGroup.model_fields]
        assert extra == list(ir.OPTIMIZER_FIELDS[kind])
        assert f"| `{kind}` | {', '.join(f'`{n}`' for n in extra) or '—'} |" in sections["ParamGroup"]


def test_every_field_and_model_has_a_description() -> None:
    body = reference_markdown()
    assert " |  |\n" not in body, "a field row has an empty description (add Field(description=...))"
    sections = _sections(body)
    for model in _reachable(ir.Spec) - set(ir.GROUP_MODELS.values()):
        # a docstring or note under the heading, before the "In a spec:" line
        assert not sections[model.__name__].lstrip("\n").startswith("In a spec:"), model.__name__


def test_fallback_notes_never_shadow_a_description_of_the_ir() -> None:
    # Once ir.py documents a field (or a model), its note here must go: one source per text.
    for (model, name), _ in FIELD_NOTES.items():
        assert name in model.model_fields, f"FIELD_NOTES names a field {model.__name__}.{name} that does not exist"
        assert not model.model_fields[name].description, (
            f"{model.__name__}.{name} has a description in ir.py now: drop its FIELD_NOTES entry")
    for model in MODEL_NOTES:
        assert not model.__dict__.get("__doc__"), f"{model.__name__} has a docstring now: drop its MODEL_NOTES entry"


def test_types_and_defaults_read_like_the_spec() -> None:
    sections = _sections(reference_markdown())
    rule, gate, model = sections["Rule"], sections["LearnedGate"], sections["Model"]
    assert '| `kind` | `"gd"` \\| `"dgd"` | `"gd"` |' in rule
    assert "| `lr` | float \\| [LearnedGate](#learnedgate) | `1.0` |" in rule
    assert "| `lr_warmup` | int ≥ 1 \\| `null` | `null` |" in rule
    assert "| `scale` | float > 0 | `1.0` |" in gate
    assert "| `width` | int ≥ 1 | required |" in model
    assert "| `beta2` | 0 ≤ float < 1 | `0.999` |" in sections["AdamWOptimizer"]
    assert "| `eps` | float > 0 | `1e-8` |" in sections["AdamWOptimizer"]
    assert "selected by `type: mal`" in sections["MALLayer"]
    assert "`data`, `data.tasks[i]`, selected by `task: text`" in sections["TextData"]
    # a description's |x| must not split the table row
    assert "(1 + eta\\|k\\|^2)" in rule


def test_the_cli_prints_the_reference() -> None:
    res = CliRunner().invoke(app, ["schema", "--markdown"])
    assert res.exit_code == 0, res.output
    assert res.output == reference_markdown()
