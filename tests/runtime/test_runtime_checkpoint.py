"""Checkpoints: exact round trip, RNG restore, atomicity, ENOSPC, spec hash, keep-last-K."""

from __future__ import annotations

import errno
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import nestdsl.runtime.checkpoint as ck
from nestdsl.runtime.checkpoint import (
    CheckpointError,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

SPEC = "name: tiny\nmodel: {width: 8}\n"


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 11))
    m[2].weight = m[0].weight  # tied embeddings
    return m


def train_steps(m: torch.nn.Module, opt: torch.optim.Optimizer, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 11, (4, 5), generator=g)
        loss = torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_same(a, b, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert type(k) is type(next(kk for kk in b if kk == k)), path
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}.{i}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert type(a) is type(b) and a == b, path


def test_adamw_round_trip_and_exact_resume(tmp_path: Path):
    m = make_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    train_steps(m, opt, 3, seed=1)
    p = save_checkpoint(tmp_path, 3, model=m, optimizer=opt, spec_text=SPEC)
    assert p == tmp_path / "step_000003"
    assert sorted(x.name for x in p.iterdir()) == [
        "meta.json", "model.safetensors", "optim.safetensors", "state.safetensors"
    ]
    assert (tmp_path / "latest").read_text().strip() == "step_000003"
    # the tied weight is stored once
    assert len(load_file(str(p / "model.safetensors"))) == len(m.state_dict()) - 1

    c = load_checkpoint(tmp_path, spec_text=SPEC)
    assert c.step == 3 and c.data_position == 3 and c.spec_text == SPEC
    assert_same(m.state_dict(), dict(c.model_state))
    assert_same(opt.state_dict(), c.optim_state)

    m2 = make_model(seed=123)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1.0)
    load_checkpoint(p, model=m2, optimizer=opt2, spec_text=SPEC)
    assert m2[2].weight is m2[0].weight
    assert_same(opt.state_dict(), opt2.state_dict())
    train_steps(m, opt, 2, seed=2)
    train_steps(m2, opt2, 2, seed=2)
    for a, b in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)


class ScalarOptimizer:
    """A generic optimizer-like object whose state mixes tensors and Python values."""

    def __init__(self) -> None:
        self.state = {
            "step": 7,
            "lr": 0.1 + 0.2,
            "bad": float("nan"),
            "big": float("inf"),
            "flag": True,
            "none": None,
            "name": "m3",
            "groups": [{"betas": (0.9, 0.99), "params": [0, 1]}],
            "per_param": {0: {"m": torch.randn(3, 2), "count": 2}, 1: {"m": torch.randn(4).double()}},
            "bf": torch.randn(5).to(torch.bfloat16),
            "ids": torch.arange(4, dtype=torch.int32),
            "np": np.arange(3, dtype=np.int16),
            "dtype": torch.float16,
            (1, "x"): 2.5,
            "view": None,
        }
        base = torch.randn(4, 4)
        self.state["view"] = [base, base[1]]  # a view sharing storage with another tensor

    def state_dict(self):
        return self.state

    def load_state_dict(self, s):
        self.state = s


def test_generic_optimizer_state(tmp_path: Path):
    o = ScalarOptimizer()
    save_checkpoint(tmp_path, 1, model={"w": torch.ones(2)}, optimizer=o, spec_text=SPEC,
                    extra={"accum": {"cms.0": torch.full((3,), 0.5)}, "count": 4})
    o2 = ScalarOptimizer()
    c = load_checkpoint(tmp_path, optimizer=o2, model=None)
    assert_same(o.state, o2.state)
    assert_same({"accum": {"cms.0": torch.full((3,), 0.5)}, "count": 4}, c.extra)
    # several optimizers at once
    a, b = ScalarOptimizer(), ScalarOptimizer()
    save_checkpoint(tmp_path, 2, model={"w": torch.ones(2)}, optimizer={"muon": a, "adam": b}, spec_text=SPEC)
    a2, b2 = ScalarOptimizer(), ScalarOptimizer()
    load_checkpoint(tmp_path, optimizer={"muon": a2, "adam": b2})
    assert_same(a.state, a2.state)
    assert_same(b.state, b2.state)


def test_rng_restore(tmp_path: Path):
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    torch.rand(3), random.random(), np.random.rand()
    save_checkpoint(tmp_path, 1, model={"w": torch.zeros(1)}, spec_text=SPEC)
    expected = (torch.rand(4), random.random(), np.random.rand(2), torch.randint(0, 9, (3,)))
    load_checkpoint(tmp_path, restore_rng=True)
    got = (torch.rand(4), random.random(), np.random.rand(2), torch.randint(0, 9, (3,)))
    assert torch.equal(expected[0], got[0]) and expected[1] == got[1]
    assert np.array_equal(expected[2], got[2]) and torch.equal(expected[3], got[3])


def test_wrong_spec(tmp_path: Path):
    save_checkpoint(tmp_path, 1, model={"w": torch.zeros(1)}, spec_text=SPEC)
    with pytest.raises(CheckpointError, match="different spec") as e:
        load_checkpoint(tmp_path, spec_text=SPEC + "# changed\n")
    assert "\n" not in str(e.value)
    load_checkpoint(tmp_path, expected_hash=ck.spec_hash(SPEC))


def test_keep_last_k(tmp_path: Path):
    for s in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, s, model={"w": torch.full((2,), float(s))}, spec_text=SPEC, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000040", "step_000050"]
    assert find_latest(tmp_path) == tmp_path / "step_000050"
    save_checkpoint(tmp_path, 60, model={"w": torch.zeros(2)}, spec_text=SPEC, keep=3)
    assert len(list_checkpoints(tmp_path)) == 3
    # re-saving an existing step replaces it
    save_checkpoint(tmp_path, 60, model={"w": torch.ones(2)}, spec_text=SPEC, keep=3)
    assert torch.equal(load_checkpoint(tmp_path).model_state["w"], torch.ones(2))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


CRASH = """
import os, sys, torch
import nestdsl.runtime.checkpoint as ck
real = ck._save_tensors
def crash(tensors, path):
    real(tensors, path)
    os._exit(9)  # killed mid-write: after the first file, before meta/rename
ck._save_tensors = crash
ck.save_checkpoint(sys.argv[1], 2, model={"w": torch.ones(3)}, spec_text="s")
"""


def test_crash_mid_write_keeps_previous(tmp_path: Path):
    save_checkpoint(tmp_path, 1, model={"w": torch.zeros(3)}, spec_text="s")
    r = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path)], capture_output=True, timeout=120)
    assert r.returncode == 9, r.stderr.decode()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-step_000002")]  # partial left
    assert find_latest(tmp_path) == tmp_path / "step_000001"
    # a partial step folder (e.g. copied by hand) and a dangling pointer are ignored too
    (tmp_path / "step_000009").mkdir()
    (tmp_path / "step_000009" / "model.safetensors").write_bytes(b"junk")
    assert find_latest(tmp_path) == tmp_path / "step_000001"
    (tmp_path / "latest").write_text("step_000009\n")
    assert find_latest(tmp_path) == tmp_path / "step_000001"
    assert torch.equal(load_checkpoint(tmp_path).model_state["w"], torch.zeros(3))
    # the next save cleans the stale temp folder
    save_checkpoint(tmp_path, 3, model={"w": torch.ones(3)}, spec_text="s")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert find_latest(tmp_path) == tmp_path / "step_000003"


def test_exception_mid_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    save_checkpoint(tmp_path, 1, model={"w": torch.zeros(3)}, spec_text="s")

    def boom(data_path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_write_bytes", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model={"w": torch.ones(3)}, spec_text="s")
    assert find_latest(tmp_path) == tmp_path / "step_000001"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]


@pytest.mark.parametrize("where", ["optim.safetensors", "meta", "latest"])
def test_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str):
    save_checkpoint(tmp_path, 1, model={"w": torch.zeros(3)}, spec_text="s")
    real_save, real_write = ck._save_tensors, ck._write_bytes

    def full():
        raise OSError(errno.ENOSPC, "No space left on device")

    def save(tensors, path):
        if path.name == where:
            full()
        real_save(tensors, path)

    def write(path, data):
        if (where == "meta" and path.name == "meta.json") or (where == "latest" and "latest" in path.name):
            full()
        real_write(path, data)

    monkeypatch.setattr(ck, "_save_tensors", save)
    monkeypatch.setattr(ck, "_write_bytes", write)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path, 2, model={"w": torch.ones(3)}, spec_text="s")
    msg = str(e.value)
    assert "disk full" in msg and "step_000001 is intact" in msg and "\n" not in msg
    assert find_latest(tmp_path) == tmp_path / "step_000001"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000001"]
    assert torch.equal(load_checkpoint(tmp_path).model_state["w"], torch.zeros(3))


def test_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    save_checkpoint(tmp_path, 1, model=make_model(), spec_text=SPEC)

    def forbidden(*a, **k):
        raise AssertionError("pickle-based loading used")

    monkeypatch.setattr(torch, "load", forbidden)
    import pickle

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    load_checkpoint(tmp_path, model=make_model(1))
    src = Path(ck.__file__).read_text()
    assert "torch.load" not in src and "import pickle" not in src


def test_corrupt_and_missing(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)
    p = save_checkpoint(tmp_path, 1, model={"w": torch.zeros(64)}, spec_text=SPEC)
    f = p / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)
    meta = json.loads((p / "meta.json").read_text())
    meta["version"] = 99
    (p / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(p)


def test_bad_values_and_mismatched_model(tmp_path: Path):
    with pytest.raises(CheckpointError, match="cannot save a value of type object"):
        save_checkpoint(tmp_path, 1, model={"w": torch.zeros(1)}, extra={"x": object()}, spec_text=SPEC)
    assert not list(tmp_path.glob(".tmp-*")) and find_latest(tmp_path) is None
    save_checkpoint(tmp_path, 1, model=make_model(), spec_text=SPEC)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path, model=torch.nn.Linear(3, 3))
