"""A spec that `nestdsl check` accepts lowers and runs (issue: every rule lives in the checker).

Mutations of the presets — memory kinds, rules, erase rates, norms, residuals, read modes, chunk
sizes, Hope's adaptive projections and targets, CMS modes — are generated; each one the checker
accepts must compile and run a forward/backward pass. A mutation the checker rejects must be
rejected with positioned diagnostics, never a traceback.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nestdsl
from nestdsl.diagnostics import SpecError
from nestdsl.pipeline import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
BASES = ["titans-lmm", "hope", "hope", "hope", "gated-deltanet", "ttt-mlp", "samba", "titans-mag"]

MEMORY_CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "kind": st.sampled_from(["linear", "mlp"]),
    "objective": st.sampled_from(["dot", "l2"]),
    "residual": st.sampled_from([None, True, False]),
    "norm": st.sampled_from([None, True, False]),
    "read": st.sampled_from(["after", "before", "chunk"]),
    "hidden": st.sampled_from([None, 1, 2]),
    "init": st.sampled_from([None, "zeros", "learned"]),
}
RULE_CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "kind": st.sampled_from(["gd", "dgd"]),
    "erase": st.sampled_from([None, "eta", "normalized", "retained"]),
    "momentum": st.sampled_from([None, 0.5, {"learned": "sigmoid", "init": 0.9}]),
    "retention": st.sampled_from([None, 0.99, {"learned": "sigmoid", "init": 0.95}]),
    "clip": st.sampled_from([None, 1.0]),
    "lr_per_dim": st.booleans(),
}
LEVEL_PERIODS = st.sampled_from(["4 tokens", "8 tokens", "12 tokens", "16 tokens", "32 tokens"])


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    base = draw(st.sampled_from(BASES))
    doc = yaml.safe_load((SPECS / f"{base}.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["model"]["depth"] = 1
    doc["optimizer"] = {"type": "adamw", "lr": 1e-3}
    doc["data"] = {"task": "copy", "seq_len": 128, "batch": 2, "length": 8}
    mems = [n for n, m in doc.get("memories", {}).items() if m.get("kind") != "attention"]
    for name in draw(st.lists(st.sampled_from(mems), max_size=2, unique=True)) if mems else []:
        mem = doc["memories"][name]
        for field in draw(st.lists(st.sampled_from(sorted(MEMORY_CHANGES)), max_size=3, unique=True)):
            mem[field] = draw(MEMORY_CHANGES[field])
        rule = mem.setdefault("rule", {})
        for field in draw(st.lists(st.sampled_from(sorted(RULE_CHANGES)), max_size=3, unique=True)):
            rule[field] = draw(RULE_CHANGES[field])
    for level in draw(st.lists(st.sampled_from(sorted(doc.get("levels", {})) or ["-"]), max_size=2)):
        if level in doc.get("levels", {}) and "tokens" in str(doc["levels"][level]["every"]):
            doc["levels"][level]["every"] = draw(LEVEL_PERIODS)
    for block in doc["blocks"].values():
        for layer in block["layers"]:
            if layer["type"] == "self_modifying":
                layer["adaptive"] = draw(st.lists(st.sampled_from(["q", "k", "v", "eta", "alpha"]),
                                                  max_size=5, unique=True))
                layer["values"] = draw(st.sampled_from(["self", "shared"]))
    for cms in doc.get("cms", {}).values():
        cms["mode"] = draw(st.sampled_from(["chain", "nested", "independent"]))
    for mem in doc.get("memories", {}).values():          # YAML null = unset
        for k in [k for k, v in mem.items() if v is None]:
            del mem[k]
        for k in [k for k, v in mem.get("rule", {}).items() if v is None]:
            del mem["rule"][k]
    return base, doc


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_every_spec_the_checker_accepts_lowers_and_runs(case: tuple[str, dict[str, Any]],
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    base, doc = case
    path = tmp_path_factory.mktemp("spec") / f"{base}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        spec = load_spec(path)
    except SpecError as e:                          # rejected: positioned, one line per problem
        assert all(d.span.line >= 1 for d in e.diagnostics)
        return
    system = nestdsl.compile(spec, compile=False)
    tokens = torch.randint(0, system.model.vocab, (2, 32))
    loss = system.model.loss(tokens, tokens)
    loss.backward()
    assert torch.isfinite(loss)
