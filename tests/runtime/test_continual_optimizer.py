"""`optimizer_at_switch: reset` (NL §4.5): at each continual task switch the outer optimizer
starts afresh; a run split at a switch and resumed equals the run in one go, bitwise."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train as T  # noqa: E402

import nestdsl.runtime.checkpoint as ck  # noqa: E402


def _spec(tmp: Path, reset: str) -> Path:
    data = {"task": "continual", "seq_len": 32, "batch": 4, "switch_every": 4,
            "optimizer_at_switch": reset,
            "tasks": [{"task": "copy", "length": 4}, {"task": "copy", "length": 8, "seed": 5}]}
    path = T.preset_spec(tmp, "transformer", steps=8, data=data, log_every=1, ckpt_every=4)
    doc = yaml.safe_load(path.read_text())
    out = tmp / f"transformer-{reset}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    latest = ck.find_latest(run)
    assert latest is not None
    return load_file(str(latest / "model.safetensors"))


def test_reset_changes_the_run_and_resuming_at_the_switch_is_exact(tmp_path: Path) -> None:
    keep, reset = _spec(tmp_path, "keep"), _spec(tmp_path, "reset")
    T._train(keep, tmp_path / "keep")
    T._train(reset, tmp_path / "reset")
    a, b = _weights(tmp_path / "keep"), _weights(tmp_path / "reset")
    assert any(not torch.equal(a[k], b[k]) for k in a)           # the reset did something
    # identical until the switch at step 4: the first four losses agree
    assert T.losses(tmp_path / "keep")[:4] == T.losses(tmp_path / "reset")[:4]
    assert T.losses(tmp_path / "keep")[4:] != T.losses(tmp_path / "reset")[4:]
    T._train(reset, tmp_path / "split", steps=4)                  # stop at the switch ...
    T._train(reset, tmp_path / "split", steps=8, resume=True)     # ... and resume across it
    T.assert_bitwise(_weights(tmp_path / "reset"), _weights(tmp_path / "split"))
    assert T.losses(tmp_path / "reset") == T.losses(tmp_path / "split")
