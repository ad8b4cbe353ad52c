"""benchmarks/sensitivity.py perturbs exactly what it says: the pass key's digits, or haystack
letters, and nothing else; its per-layer report covers every layer."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "sensitivity.py"


def _module():
    spec = importlib.util.spec_from_file_location("sensitivity", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_perturbations_touch_only_the_needle_or_the_haystack():
    drawn, needle, hay = _module()._sequences(16, seed=7)
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


def test_probe_reports_every_layer():
    rec = _module().probe("deltanet", steps=0, n=4)
    assert list(rec["layers"]) == ["block 0.0 memory", "block 0.1 mlp", "block 1.0 memory",
                                   "block 1.1 mlp"]
    for r in rec["layers"].values():
        assert math.isfinite(r["needle"]) and math.isfinite(r["haystack"]) and r["needle"] > 0
