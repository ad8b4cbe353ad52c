"""Semantic checks over a validated spec (references, periods, combinations)."""

from __future__ import annotations

from nestdsl.check.checker import check_spec, collect_diagnostics, with_semantic_problems

__all__ = ["check_spec", "collect_diagnostics", "with_semantic_problems"]
