"""Semantic checks: collects every problem in a validated spec as positioned diagnostics."""

from __future__ import annotations

from nestdsl.diagnostics import Diagnostic, SpecError
from nestdsl.spec import ir
from nestdsl.spec.source import Document


def collect_diagnostics(spec: ir.Spec, doc: Document) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    diags.extend(_check_optimizer_ref(spec, doc))
    return diags


def check_spec(spec: ir.Spec, doc: Document) -> None:
    diags = collect_diagnostics(spec, doc)
    if diags:
        raise SpecError(diags, {doc.file: doc.text})


def _check_optimizer_ref(spec: ir.Spec, doc: Document) -> list[Diagnostic]:
    from nestdsl.spec import parse_file, resolve_optimizer_path

    path = resolve_optimizer_path(spec)
    if path is None:
        return []
    if not path.is_file():
        return [Diagnostic(doc.position(("optimizer",)), f"optimizer spec '{spec.optimizer}' not found",
                           f"looked for {path}; give a path relative to this spec file", code="unknown-ref")]
    try:
        _, opt_spec = parse_file(path)
    except SpecError as e:
        return list(e.diagnostics)
    if opt_spec.outer_optimizer is None:
        return [Diagnostic(doc.position(("optimizer",)), f"'{spec.optimizer}' has no `optimizer:` section", code="unknown-ref")]
    spec._resolved_optimizer = opt_spec.outer_optimizer
    return []
