"""`nestdsl probe`: its perturbations change only the needle or the haystack, and its verdicts
tell a dead memory, a chaotic one and the responsive presets apart."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.lower import telemetry
from nestdsl.pipeline import load_spec
from nestdsl.runtime.probe import CHAOTIC_FROM, DEAD_BELOW, perturbed_niah, probe, verdict

#: Hope's M_mem as it was before the map: inner LayerNorm at gain 1, no read norm (chaotic)
HOPE_GAIN_1 = ["memories.titans.norm=true", "memories.titans.norm_gain=1.0",
               "memories.titans.read_norm=null", "memories.titans.rule.normalized_lr=false",
               "memories.titans.rule.lr={learned: sigmoid, scale: 0.1}"]


def test_perturbations_touch_only_the_needle_or_the_haystack():
    drawn, needle, hay = perturbed_niah(16, seed=7)
    assert drawn.shape == needle.shape == hay.shape == (16, 128)
    digits = set(range(ord("0"), ord("9") + 1))
    for a, n, h in zip(drawn.tolist(), needle.tolist(), hay.tolist(), strict=True):
        dn = [i for i, (x, y) in enumerate(zip(a, n, strict=True)) if x != y]
        dh = [i for i, (x, y) in enumerate(zip(a, h, strict=True)) if x != y]
        # 7 consecutive digits changed into other digits (each digit moves by 1..9 mod 10)
        assert len(dn) == 7 and dn == list(range(dn[0], dn[0] + 7))
        assert all(a[i] in digits and n[i] in digits for i in dn)
        # up to 7 haystack characters, none of them a digit, away from the needle and the question
        assert 0 < len(dh) <= 7 and not set(dh) & set(range(dn[0] - 16, dn[-1] + 3))
        assert all(a[i] not in digits and h[i] not in digits for i in dh)
        assert max(dh) < len(a) - 30


def test_verdict_thresholds():
    assert verdict(DEAD_BELOW / 2, DEAD_BELOW / 3) == "dead"
    assert verdict(0.2, 0.15) == "responsive"
    assert verdict(0.2, CHAOTIC_FROM) == "chaotic" and verdict(CHAOTIC_FROM, 0.1) == "chaotic"
    assert verdict(math.nan, 0.1) == "chaotic"


@pytest.mark.parametrize("preset, overrides, expected", [
    ("titans-lmm", [], "responsive"),
    ("deltanet", [], "responsive"),
    ("hope", [], "responsive"),
    ("hope", HOPE_GAIN_1, "chaotic"),
    ("hope", [*HOPE_GAIN_1, "memories.titans.rule.lr={learned: sigmoid, scale: 1.0e-6}"], "dead"),
])
def test_probe_classifies_memory_layers(preset, overrides, expected):
    spec = load_spec(f"specs/{preset}.yaml", overrides=overrides)
    report = probe(spec, sequences=12)
    kinds = {"titans-lmm": "memory", "deltanet": "memory", "hope": "self_modifying"}[preset]
    assert [lp.layer for lp in report.layers] == [f"block 0.0 {kinds}", f"block 1.0 {kinds}"]
    assert [lp.verdict for lp in report.layers] == [expected, expected], report.layers
    for lp in report.layers:
        assert lp.memory is not None and lp.write_size is not None and lp.state_growth is not None
        # layer 0's input differs only at the changed tokens: isolated = end to end
        if lp.layer.startswith("block 0"):
            assert lp.needle == pytest.approx(lp.needle_end_to_end, rel=1e-5)
        if preset == "hope":
            assert lp.branch_share is not None and 0 < lp.branch_share < 1.5


def test_probe_after_training_steps_reports_the_trained_model():
    spec = load_spec("specs/deltanet.yaml", overrides=["data={task: niah, variant: 1, seq_len: 128, "
                                                       "batch: 2}", "train.warmup=0"])
    at_init, trained = probe(spec, sequences=4), probe(spec, sequences=4, steps=2)
    assert trained.steps == 2
    assert trained.layers[0].needle != at_init.layers[0].needle


def test_telemetry_write_size_and_branch_share():
    before = (torch.ones(1, 1, 2, 2),)
    after = (torch.ones(1, 1, 2, 2) * 1.5,)
    assert float(telemetry.write_size(before, after)) == pytest.approx(0.5)
    assert math.isnan(float(telemetry.write_size((torch.zeros(1, 1, 2, 2),), after)))
    q = torch.tensor([[3.0, 0.0]])
    o = torch.tensor([[3.0, 4.0]])
    assert float(telemetry.branch_share(o, q)) == pytest.approx(4 / 5)


def test_cli_probe_json_and_table():
    runner = CliRunner()
    r = runner.invoke(app, ["probe", "specs/titans-lmm.yaml", "--json", "--sequences", "4"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [lp["verdict"] for lp in data["layers"]] == ["responsive", "responsive"]
    r = runner.invoke(app, ["probe", "specs/titans-lmm.yaml", "--sequences", "4"])
    assert r.exit_code == 0 and "responsive" in r.output and "block 0.0 memory" in r.output
    r = runner.invoke(app, ["probe", "specs/titans-lmm.yaml", "--set", "model.vocab=64"])
    assert r.exit_code == 2 and "vocab 64" in r.output and "Traceback" not in r.output


def test_compile_explain_warns_on_a_chaotic_memory(tmp_path):
    """`compile --explain` runs the probe at initialisation and warns where a memory is chaotic."""
    from nestdsl.spec import read_source

    spec = tmp_path / "hope-gain-1.yaml"
    text = read_source("specs/hope.yaml")
    assert "    norm: false" in text and "    read_norm: 1.0" in text
    # a copy outside specs/: `optimizer: adamw` names the shipped spec from anywhere
    spec.write_text(text.replace("    norm: false", "    norm: true").replace(
        "    read_norm: 1.0", "    norm_gain: 1.0"))
    r = CliRunner().invoke(app, ["compile", str(spec), "--explain", "--no-compile"])
    assert r.exit_code == 0, r.output
    assert "warning" in r.output and "chaotic" in r.output
    r = CliRunner().invoke(app, ["compile", "specs/titans-lmm.yaml", "--explain", "--no-compile"])
    assert r.exit_code == 0 and "responsive" in r.output and "warning" not in r.output
