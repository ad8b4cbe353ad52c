"""Every shipped preset loads, validates and passes the semantic checks; the required ones exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestdsl.pipeline import load_spec
from nestdsl.spec.shipped import OPTIMIZER_DIR, optimizer_names

SPECS = Path(__file__).resolve().parent.parent / "specs"

# The presets issue 2 (item 7) promises; each must exist as YAML (a `.nest` twin is optional).
REQUIRED_MODELS = [
    "transformer", "linear-attention", "gla", "deltanet", "gated-deltanet", "ttt-linear",
    "ttt-mlp", "titans-lmm", "titans-mal", "titans-mag", "samba", "hope", "hope-attention",
]
REQUIRED_SCALE = [f"{m}-{s}" for m in ("hope", "titans-lmm", "transformer") for s in ("340m", "760m", "1.3b")]
REQUIRED_OPTIM = ["sgd-momentum", "adamw", "delta-momentum", "dmgd", "muon", "m3"]

# The model presets, and the optimizer specs shipped in the package (`optimizer: adamw`).
ALL_SPECS = sorted(p for p in SPECS.rglob("*") if p.suffix in {".yaml", ".yml", ".nest"}) + sorted(
    p for p in OPTIMIZER_DIR.iterdir() if p.suffix in {".yaml", ".nest"})


def _id(p: Path) -> str:
    return str(p.relative_to(SPECS)) if p.is_relative_to(SPECS) else f"optim/{p.name}"


@pytest.mark.parametrize(
    "rel",
    [f"{n}.yaml" for n in REQUIRED_MODELS]
    + [f"scale/{n}.yaml" for n in REQUIRED_SCALE],
)
def test_required_preset_exists(rel: str) -> None:
    assert (SPECS / rel).is_file(), f"missing preset specs/{rel}"


@pytest.mark.parametrize("name", REQUIRED_OPTIM)
def test_required_optimizer_is_shipped_by_name(name: str) -> None:
    assert name in optimizer_names(), f"missing shipped optimizer spec nestdsl/optim/specs/{name}.yaml"
    assert (OPTIMIZER_DIR / f"{name}.nest").is_file(), f"{name}.yaml has no .nest twin"


def test_optimizer_specs_are_not_duplicated_in_specs() -> None:
    # One copy of each shipped optimizer spec: in the package, referenced by name.
    assert not (SPECS / "optim").exists()


def test_model_presets_reference_optimizers_portably() -> None:
    # A preset copied anywhere still loads: its optimizer is inline or a shipped spec's name.
    for path in ALL_SPECS:
        spec = load_spec(path)
        if isinstance(spec.optimizer, str):
            assert spec.optimizer in optimizer_names(), f"{_id(path)}: optimizer: {spec.optimizer}"


@pytest.mark.parametrize("path", ALL_SPECS, ids=_id)
def test_preset_loads_and_checks(path: Path) -> None:
    spec = load_spec(path)  # raises SpecError (with file:line:col) on any problem
    if spec.model is not None:
        # Model presets carry everything `nestdsl train` needs.
        assert spec.outer_optimizer is not None, "model preset without an outer optimizer"
        assert spec.data is not None and spec.train is not None
    else:
        assert spec.outer_optimizer is not None, "optimizer preset without `optimizer:`"


@pytest.mark.parametrize("name", REQUIRED_MODELS)
def test_tiny_presets_are_tiny(name: str) -> None:
    # Tiny presets must train on a 2-core CPU in minutes (issue 2, item 7).
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.model is not None and spec.data is not None and spec.train is not None
    assert spec.model.width <= 64 and spec.model.depth <= 4 and spec.model.vocab <= 256
    # a token budget rather than a batch size: Hope's main job trains copy-8 at seq 32, batch 32
    # (more sequences per second than batch 8 on one thread) for 700 steps
    assert spec.data.seq_len <= 128
    assert spec.data.seq_len * spec.data.batch * spec.train.steps <= 1_000_000


@pytest.mark.parametrize("name", REQUIRED_SCALE)
def test_scale_presets_use_bpe_32k(name: str) -> None:
    spec = load_spec(SPECS / "scale" / f"{name}.yaml")
    assert spec.model is not None and spec.data is not None
    assert spec.data.task == "text" and spec.data.tokenizer == "bpe"
    assert spec.data.vocab_size == spec.model.vocab == 32000
    assert spec.model.width % spec.model.heads == 0


def test_hope_cms_has_in_context_and_persistent_levels() -> None:
    spec = load_spec(SPECS / "hope.yaml")
    stages = spec.cms["hope_cms"].stages
    units = [spec.level_period(s.level).unit for s in stages]
    assert "tokens" in units and "steps" in units
    assert all(s.signal == "task" for s in stages if spec.level_period(s.level).unit == "tokens")
