"""Both syntaxes, one IR: parse(print(ir)) == ir for every preset and for generated specs.

Presets are globbed (YAML and `.nest`), so new presets are covered automatically; each `.nest`
twin must equal its YAML sibling.  The hypothesis strategy builds random *pydantic-valid* specs
(semantic checks are not required): it exercises every IR field, names and strings that need
quoting, floats that YAML 1.1 would misread (1e-08), and every data task.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nestdsl.spec import ir, parse_file, parse_text
from nestdsl.spec.printer import print_spec
from nestdsl.spec.shipped import OPTIMIZER_DIR

SPECS = Path(__file__).resolve().parents[2] / "specs"
# The model presets, and the optimizer specs shipped in the package (`optimizer: adamw`).
PRESETS = sorted(p for p in SPECS.rglob("*") if p.suffix in {".yaml", ".yml", ".nest"}) + sorted(
    p for p in OPTIMIZER_DIR.iterdir() if p.suffix in {".yaml", ".nest"})
TWINS = [p for p in PRESETS if p.suffix == ".nest"]


def _id(p: Path) -> str:
    return str(p.relative_to(SPECS)) if p.is_relative_to(SPECS) else f"optim/{p.name}"


def _roundtrip(spec: ir.Spec) -> None:
    y = print_spec(spec, "yaml")
    n = print_spec(spec, "nest")
    _, from_yaml = parse_text(y, "printed.yaml", "yaml")
    assert from_yaml == spec, f"YAML round trip changed the spec:\n{y}"
    _, from_nest = parse_text(n, "printed.nest", "nest")
    assert from_nest == spec, f".nest round trip changed the spec:\n{n}"
    # yaml -> nest -> yaml
    _, again = parse_text(print_spec(from_nest, "yaml"), "again.yaml", "yaml")
    assert again == spec
    # Printing is canonical: printing the re-parsed spec gives the same text.
    assert print_spec(from_yaml, "yaml") == y
    assert print_spec(from_nest, "nest") == n


def test_presets_exist() -> None:
    assert any(p.suffix == ".yaml" for p in PRESETS)
    assert TWINS, "no .nest presets"


@pytest.mark.parametrize("path", PRESETS, ids=_id)
def test_preset_roundtrips(path: Path) -> None:
    _, spec = parse_file(path)
    _roundtrip(spec)


@pytest.mark.parametrize("path", TWINS, ids=_id)
def test_nest_twin_equals_yaml(path: Path) -> None:
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.exists():
        pytest.skip(f"{_id(path)} has no YAML twin")
    _, from_nest = parse_file(path)
    _, from_yaml = parse_file(yaml_path)
    assert from_nest == from_yaml


def test_at_least_a_third_of_presets_have_nest_twins() -> None:
    yamls = [p for p in PRESETS if p.suffix in {".yaml", ".yml"}]
    twins = [p for p in yamls if p.with_suffix(".nest").exists()]
    assert 3 * len(twins) >= len(yamls), f"{len(twins)} .nest twins for {len(yamls)} YAML presets"


def test_printed_yaml_is_plain_yaml() -> None:
    # The YAML form is ordinary YAML: a generic loader reads the same structure.
    _, spec = parse_file(SPECS / "hope.yaml")
    data = yaml.safe_load(print_spec(spec, "yaml"))
    assert data["name"] == spec.name and data["levels"]["chunk"]["every"] == "16 tokens"


def test_tricky_scalars_roundtrip() -> None:
    spec = ir.Spec.model_validate(
        {
            "name": "yes",
            "doc": 'a "doc": with # and\nnewline, unicode é ✓ and \x01',
            "optimizer": {"type": "adamw", "lr": 1e-08, "eps": 1.5e-12, "weight_decay": 1e20},
            "levels": {"true": {"every": "1 token"}, "16": {"every": 3, "doc": "null"}},
            "memories": {"my mem": {"kind": "linear", "objective": "1.5", "level": "none"}},
            "data": {"task": "text", "path": "data/input.txt"},
            "train": {"grad_clip": None},
        }
    )
    _roundtrip(spec)


def test_fmt_rejects_unknown_syntax() -> None:
    _, spec = parse_file(SPECS / "hope.yaml")
    with pytest.raises(ValueError):
        print_spec(spec, "toml")


# ---------------------------------------------------------------------------------------------
# Generated specs

IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
ODD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x1F600), min_size=1, max_size=8
)
NAMES = st.one_of(IDENT, IDENT, IDENT, ODD)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
POS = st.floats(min_value=1e-12, max_value=1e6, allow_nan=False)
UNIT = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
ANY_FLOAT = st.floats(allow_nan=False, allow_infinity=False, width=64)
SMALL_INT = st.integers(min_value=1, max_value=4096)


def _opt(d: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=d)


GATE = st.one_of(
    ANY_FLOAT,
    st.fixed_dictionaries(
        {"learned": st.sampled_from(["sigmoid", "softplus"])},
        optional={"scale": POS, "init": st.one_of(st.none(), ANY_FLOAT)},
    ),
)
RULE = st.fixed_dictionaries(
    {"kind": st.sampled_from(["gd", "dgd"])},
    optional={"lr": GATE, "retention": st.one_of(st.none(), GATE), "momentum": st.one_of(st.none(), GATE)},
)
PARAMETRIC = {
    "objective": st.one_of(st.none(), st.sampled_from(["dot", "l2", "huber"]), TEXT),
    "rule": st.one_of(st.none(), RULE),
    "level": st.one_of(st.none(), NAMES),
    "read": st.sampled_from(["after", "before", "chunk"]),
    "writes": st.sampled_from(["grad", "stop"]),
    "residual": st.one_of(st.none(), st.booleans()),
    "heads": st.one_of(st.none(), SMALL_INT),
}
MEMORY = st.one_of(   # one model per kind: each kind takes its own fields only
    st.fixed_dictionaries({"kind": st.just("linear")}, optional=PARAMETRIC),
    st.fixed_dictionaries({"kind": st.just("mlp")}, optional={
        **PARAMETRIC,
        "depth": st.one_of(st.none(), st.integers(2, 6)),
        "hidden": st.one_of(st.none(), SMALL_INT),
        "activation": st.one_of(st.none(), st.sampled_from(["silu", "gelu", "relu", "tanh"])),
    }),
    st.fixed_dictionaries({"kind": st.just("attention")}, optional={
        "window": st.one_of(st.none(), SMALL_INT), "heads": st.one_of(st.none(), SMALL_INT)}),
)
PERIOD = st.one_of(
    SMALL_INT,
    st.builds(lambda n, u: f"{n} {u}", SMALL_INT, st.sampled_from(["token", "tokens", "step", "steps"])),
)
LEVEL = st.fixed_dictionaries({"every": PERIOD}, optional={"doc": st.one_of(st.none(), TEXT)})
STAGE = st.fixed_dictionaries(
    {"level": NAMES},
    optional={
        "hidden": SMALL_INT,
        "activation": st.sampled_from(["silu", "gelu", "relu", "tanh"]),
        "signal": st.sampled_from(["task", "local"]),
        "scope": st.sampled_from(["sequence", "stream"]),
        "lr": POS,
    },
)
CMS = st.fixed_dictionaries(
    {"stages": st.lists(STAGE, min_size=1, max_size=3)},
    optional={"mode": st.sampled_from(["chain", "independent", "nested"])},
)
LAYER_COMMON = {"norm": st.sampled_from(["rms", "layer", "none"]), "residual": st.booleans()}
MIXER = {**LAYER_COMMON, "conv": st.integers(0, 8), "qk_norm": st.booleans(), "output_gate": st.booleans()}
LAYER = st.one_of(
    st.fixed_dictionaries({"type": st.just("memory"), "memory": NAMES}, optional=MIXER),
    st.fixed_dictionaries({"type": st.just("mal"), "memory": NAMES, "attention": NAMES}, optional=LAYER_COMMON),
    st.fixed_dictionaries({"type": st.just("mag"), "memory": NAMES, "attention": NAMES}, optional=LAYER_COMMON),
    st.fixed_dictionaries(
        {"type": st.just("self_modifying"), "memory": NAMES, "projections": NAMES},
        optional={**MIXER, "adaptive": st.lists(st.sampled_from(["k", "v", "q", "eta", "alpha"]), max_size=5)},
    ),
    st.fixed_dictionaries({"type": st.just("cms"), "cms": NAMES}, optional=LAYER_COMMON),
    st.fixed_dictionaries(
        {"type": st.just("mlp")},
        optional={**LAYER_COMMON, "hidden": SMALL_INT, "activation": st.sampled_from(["silu", "gelu"])},
    ),
)
BLOCK = st.fixed_dictionaries({"layers": st.lists(LAYER, min_size=1, max_size=4)})
MODEL = st.fixed_dictionaries(
    {"width": SMALL_INT, "depth": SMALL_INT, "pattern": st.lists(NAMES, min_size=1, max_size=3)},
    optional={"vocab": st.integers(2, 100_000), "heads": SMALL_INT, "tie_embeddings": st.booleans()},
)
OPT_TYPES = ["sgd", "momentum", "precond_momentum", "delta_momentum", "dmgd", "muon", "m3", "adamw", "dgd"]
# Each optimizer type takes its own hyper-parameters (ir.OPTIMIZER_FIELDS); a typed group may
# set its type's, null meaning "the optimizer's".
HYPER = {
    "beta": UNIT, "beta2": st.floats(0.0, 0.999), "eps": POS, "momentum_lr": POS,
    "normalize": st.sampled_from(["none", "row", "global"]), "hidden": SMALL_INT,
    "output": st.sampled_from(["identity", "newton_schulz"]), "ns_steps": SMALL_INT,
    "slow_every": SMALL_INT, "beta_slow": UNIT, "alpha": POS,
}
GROUP_COMMON = {"lr": st.one_of(st.none(), POS), "weight_decay": st.one_of(st.none(), UNIT)}
PARAMS = st.sampled_from(["matrices", "vectors", "embeddings", "all"])
GROUP = st.one_of(
    st.fixed_dictionaries({"params": PARAMS}, optional={"type": st.none(), **GROUP_COMMON}),
    *[st.fixed_dictionaries(
        {"params": PARAMS, "type": st.just(kind)},
        optional={**GROUP_COMMON, **{f: st.one_of(st.none(), HYPER[f]) for f in ir.OPTIMIZER_FIELDS[kind]}})
      for kind in OPT_TYPES],
)
OPTIMIZER = st.one_of(*[
    st.fixed_dictionaries(
        {"type": st.just(kind)},
        optional={"lr": POS, "weight_decay": UNIT, **{f: HYPER[f] for f in ir.OPTIMIZER_FIELDS[kind]},
                  "groups": st.lists(GROUP, max_size=3)})
    for kind in OPT_TYPES
])
DATA_COMMON = {"seq_len": st.integers(2, 8192), "batch": SMALL_INT, "seed": st.integers(-(2**40), 2**40)}
SIMPLE_DATA = st.one_of(
    st.fixed_dictionaries(
        {"task": st.just("text"), "path": TEXT},
        optional={**DATA_COMMON, "tokenizer": st.sampled_from(["bytes", "bpe"]),
                  "vocab_size": st.one_of(st.none(), st.integers(2, 65536)), "val_fraction": st.floats(0.0, 0.99)},
    ),
    st.fixed_dictionaries(
        {"task": st.just("mqar")},
        optional={**DATA_COMMON, "num_pairs": SMALL_INT, "num_queries": st.one_of(st.none(), SMALL_INT)},
    ),
    st.fixed_dictionaries({"task": st.just("niah")}, optional={**DATA_COMMON, "variant": st.sampled_from([1, 2, 3])}),
    st.fixed_dictionaries({"task": st.just("copy")}, optional={**DATA_COMMON, "length": SMALL_INT}),
)
DATA = st.one_of(
    SIMPLE_DATA,
    st.fixed_dictionaries(
        {"task": st.just("continual"), "tasks": st.lists(SIMPLE_DATA, min_size=2, max_size=3)},
        optional={**DATA_COMMON, "switch_every": SMALL_INT},
    ),
)
TRAIN = _opt(
    {
        "steps": SMALL_INT, "schedule": st.sampled_from(["constant", "cosine", "linear"]),
        "warmup": st.integers(0, 1000), "grad_clip": st.one_of(st.none(), POS), "seed": st.integers(0, 2**31),
        "log_every": SMALL_INT, "ckpt_every": SMALL_INT, "precision": st.sampled_from(["fp32", "bf16"]),
        "compile": st.booleans(),
    }
)
SPEC = st.fixed_dictionaries(
    {"name": st.one_of(IDENT, st.text(alphabet=string.printable, min_size=1, max_size=12), ODD)},
    optional={
        "nestdsl": st.integers(0, 3),
        "doc": st.one_of(st.none(), TEXT),
        "model": st.one_of(st.none(), MODEL),
        "levels": st.dictionaries(NAMES, LEVEL, max_size=3),
        "memories": st.dictionaries(NAMES, MEMORY, max_size=3),
        "cms": st.dictionaries(NAMES, CMS, max_size=2),
        "blocks": st.dictionaries(NAMES, BLOCK, max_size=2),
        "optimizer": st.one_of(st.none(), OPTIMIZER, TEXT.filter(bool)),
        "data": st.one_of(st.none(), DATA),
        "train": st.one_of(st.none(), TRAIN),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPEC)
def test_generated_specs_roundtrip(data: dict[str, Any]) -> None:
    spec = ir.Spec.model_validate(data)
    _roundtrip(spec)
