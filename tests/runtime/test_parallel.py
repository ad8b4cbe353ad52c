"""Training past one process (`runtime/distributed.py`, `runtime/sharded.py`).

Under torchrun with two gloo processes on CPU: FSDP2 training of titans-lmm and hope gives the
one-process loss curve on the same global batch (12 steps here; benchmarks/parallel_agreement.py
measures 20 at twice the width); a run stopped halfway resumes from its
sharded checkpoint on one process and on two and continues on the same curve (bitwise on the
same process count); the converter turns the sharded checkpoint into the one-process format;
DDP trains hope with its piecewise CMS task sweep (gradients accumulated over the pieces, synced
once) equal to one process. In one process: the sharded format round-trips every piece of state,
and a corrupt shard is caught and set aside like a corrupt safetensors file.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train_standin as S  # noqa: E402

import nestdsl.runtime.checkpoint as ck  # noqa: E402
from nestdsl.pipeline import load_spec  # noqa: E402
from nestdsl.runtime.metrics import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, env=S.subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not Path(exe).exists():
        pytest.skip("torchrun not found")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo not available")
    return [exe, "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]


def _spec(tmp: Path, preset: str, *, seq_len: int | None = None, steps: int = 12) -> Path:
    """A tiny preset at width 32 (depth 2: two FSDP block units) at a small outer lr, logging
    every step (benchmarks/parallel_agreement.py measures width 64, seq 64)."""
    doc = yaml.safe_load((ROOT / "specs" / f"{preset}.yaml").read_text())
    doc["model"].update(depth=2, width=32, heads=2)
    doc["optimizer"] = {"type": "adamw", "lr": 1e-3, "weight_decay": 0.0, "beta": 0.9, "beta2": 0.99}
    # hope: seq 64, so its 32-token CMS level stays in-context
    seq_len = seq_len or (64 if preset == "hope" else 32)
    doc["data"] = {"task": "mqar", "seq_len": seq_len, "batch": 4, "num_pairs": 4}
    if preset == "hope":
        doc["levels"]["cms_mid"] = {"every": "32 tokens"}
    doc["train"] = {"steps": steps, "warmup": 0, "schedule": "constant", "log_every": 1,
                    "ckpt_every": steps // 2, "compile": False}
    path = tmp / f"{preset}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run)]


def _assert_curves_close(a: list[float], b: list[float], tol: float = 1e-5) -> None:
    assert len(a) == len(b)
    worst = max(abs(x - y) / max(1.0, abs(x)) for x, y in zip(a, b, strict=True))
    assert worst <= tol, f"largest relative difference {worst:.2e}: {a} vs {b}"


def _train(prefix: list[str], spec: Path, run: Path, *extra: str) -> None:
    _run([*prefix, "-m", "nestdsl", "train", str(spec), "--out", str(run), "--no-compile", "-q",
          *extra])


ONE = [S.PYTHON]


@pytest.mark.slow      # two gloo processes
def test_fsdp_titans_sigterm_resume_matches_one_process(tmp_path):
    # SIGTERM to torchrun (which forwards it to its workers) at a step of its choosing: the
    # ranks agree on the step, checkpoint it (sharded) and exit 75; --resume continues on the
    # one-process curve (the same-count resume is bitwise: the hope test below)
    spec = _spec(tmp_path, "titans-lmm", steps=20)
    _train(ONE, spec, tmp_path / "one")
    run = tmp_path / "fsdp"
    proc = subprocess.Popen([*_torchrun(), "-m", "nestdsl", "train", str(spec), "--out", str(run),
                             "--no-compile", "-q", "--parallel", "fsdp"],
                            env=S.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while not ((run / "metrics.jsonl").exists()
               and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, errs = proc.communicate(timeout=240)
    meta = ck.read_meta(ck.find_latest(run))
    stopped = meta["step"]
    assert 3 <= stopped < 20 and f"stopped by SIGTERM after step {stopped}" in errs, errs[-3000:]
    assert "exit 75" in errs and meta["layout"] == "sharded" and meta["world_size"] == 2
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(meta["files"])
    _train(_torchrun(), spec, run, "--parallel", "fsdp", "--resume")
    _assert_curves_close(_losses(tmp_path / "one"), _losses(run))


@pytest.mark.slow
def test_fsdp_hope_matches_one_process_and_resumes_on_one_and_two(tmp_path):
    spec = _spec(tmp_path, "hope")
    two = _torchrun()
    _train(ONE, spec, tmp_path / "one")
    _train(two, spec, tmp_path / "fsdp", "--parallel", "fsdp")
    one, fsdp = _losses(tmp_path / "one"), _losses(tmp_path / "fsdp")
    _assert_curves_close(one, fsdp)

    # the run as it stood at step 6 (its sharded checkpoint of that step is the newest), then
    # resumed on 2 processes and on 1
    stop = tmp_path / "stop"
    shutil.copytree(tmp_path / "fsdp", stop)
    shutil.rmtree(stop / "step_000012")
    ck._write_pointer(stop, "step_000006")
    for name in ("on2", "on1"):
        shutil.copytree(stop, tmp_path / name)
    _train(two, spec, tmp_path / "on2", "--parallel", "fsdp", "--resume")
    _train(ONE, spec, tmp_path / "on1", "--resume")
    assert _losses(tmp_path / "on2") == fsdp          # same process count: bitwise
    _assert_curves_close(one, _losses(tmp_path / "on1"))
    assert ck.read_meta(ck.find_latest(tmp_path / "on1")).get("layout") is None   # safetensors

    # the converter: the step-6 shards as a one-process checkpoint holding the same state
    from cli_helpers import cli

    r = cli("checkpoint", "convert", tmp_path / "stop", "--out", tmp_path / "conv")
    assert r.exit_code == 0, r.output
    conv = ck.find_latest(tmp_path / "conv")
    assert conv is not None and conv.name == "step_000006" and (conv / "model.safetensors").is_file()
    spec_obj = load_spec(spec)
    (a, a_opts), (b, b_opts) = _fresh(spec_obj), _fresh(spec_obj)
    sharded_ck = ck.load_checkpoint(stop / "step_000006", model=a.model, optimizer=[
        lo.optimizer for lo in a_opts], level_params=_level_params(a_opts))
    single_ck = ck.load_checkpoint(conv, model=b.model, optimizer=[lo.optimizer for lo in b_opts])
    for (n, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), n
    for lo, lo2 in zip(a_opts, b_opts, strict=True):
        sa, sb = ck.flatten_state(lo.optimizer.state_dict()), ck.flatten_state(lo2.optimizer.state_dict())
        assert sa[1].keys() == sb[1].keys() and all(torch.equal(sa[1][k], sb[1][k]) for k in sa[1])
    assert single_ck.extra["history"] == sharded_ck.extra["history"]
    assert set(single_ck.extra["accum"]) == set(sharded_ck.extra["accum"]) != set()  # cms_slow


PIECES_DRIVER = """\
import sys
from pathlib import Path
import nestdsl.lower.sweep as sweep
sweep.PIECE_TOKENS = 32                     # hope-tiny's periods 16 / 32: 4 pieces at seq 128
_forward = sweep._Pieces.forward
def forward(ctx, run, bounds, *params):
    Path({marks!r}, "pieces").touch()       # proof that the piecewise sweep ran
    return _forward(ctx, run, bounds, *params)
sweep._Pieces.forward = staticmethod(forward)
from nestdsl.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_ddp_hope_piecewise_sweep_matches_one_process(tmp_path):
    # 3 steps: from the persistent level's first update (step 4) on, seq 128 amplifies the
    # rounding of a differently ordered gradient sum, pieces or not (measured: 2.7e-5 at step 4
    # without pieces, 1.1e-5 with)
    spec = _spec(tmp_path, "hope", seq_len=128, steps=3)
    marks = tmp_path / "marks"
    marks.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(PIECES_DRIVER.format(marks=str(marks)))
    _run([S.PYTHON, str(driver), "train", str(spec), "--out", str(tmp_path / "one"), "-q",
          "--no-compile"])
    assert (marks / "pieces").exists()
    (marks / "pieces").unlink()
    _run([*_torchrun(), str(driver), "train", str(spec), "--out", str(tmp_path / "ddp"), "-q",
          "--no-compile"])
    assert (marks / "pieces").exists()
    _assert_curves_close(_losses(tmp_path / "one"), _losses(tmp_path / "ddp"))


# ---------------------------------------------------------------------------------------------
# The sharded format in one process (DCP runs without a process group)


def _standin_run(tmp: Path, monkeypatch: Any, steps: int) -> tuple[Any, Any, Any]:
    """A stand-in system (with a k = 2 persistent level) trained `steps` steps, with its
    optimizers and loop state."""
    from nestdsl.runtime.train import train

    S.install(monkeypatch)
    spec = S.text_spec(tmp, steps=steps, log_every=2, ckpt_every=100)
    train(load_spec(spec), run_dir=tmp / "run", compile=False)
    return spec, tmp / "run", load_spec(spec)


def _fresh(spec_obj: Any) -> tuple[Any, list[Any]]:
    import nestdsl
    from nestdsl.runtime.train import DEFAULT_OPTIMIZER, build_level_optimizers

    system = nestdsl.compile(spec_obj, compile=False)
    return system, build_level_optimizers(system, spec_obj.outer_optimizer or DEFAULT_OPTIMIZER)


def _level_params(level_opts: list[Any]) -> dict[str, Any]:
    return {f"{lo.name}.{i}": p for lo in level_opts for i, p in enumerate(lo.params)}


def test_sharded_format_round_trips_every_state(tmp_path, monkeypatch):
    from nestdsl.runtime import sharded
    from nestdsl.runtime.loop import Ranks
    from nestdsl.runtime.resume import LoopState, restore
    from nestdsl.spec.identity import record

    _, run, spec_obj = _standin_run(tmp_path, monkeypatch, steps=3)   # mid k = 2 window
    system, level_opts = _fresh(spec_obj)
    rec = record(spec_obj)
    restore(run, model=system.model, level_opts=level_opts, record=rec, device="cpu", rank=0)
    assert any(p.grad is not None for lo in level_opts if lo.every_k > 1 for p in lo.params)
    loop = LoopState(3, [{"step": 2, "loss": 1.5}], torch.tensor(0.25), 1)
    out = tmp_path / "sharded"
    sharded.save(out, 3, ranks=Ranks(), model=system.model, level_opts=level_opts, loop=loop,
                 spec_text="x", spec_record=rec)
    meta = ck.read_meta(ck.find_latest(out))
    assert meta["layout"] == "sharded"

    other, other_opts = _fresh(spec_obj)
    state = restore(out, model=other.model, level_opts=other_opts, record=rec, device="cpu", rank=0)
    assert (state.step, state.history, float(state.loss_acc), state.n_acc) == (3, loop.history, 0.25, 1)
    for (n, a), (_, b) in zip(system.model.state_dict().items(), other.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    for lo, lo2 in zip(level_opts, other_opts, strict=True):
        sa, sb = ck.flatten_state(lo.optimizer.state_dict()), ck.flatten_state(lo2.optimizer.state_dict())
        assert json.dumps(sa[0], sort_keys=True) == json.dumps(sb[0], sort_keys=True)
        assert sa[1].keys() == sb[1].keys() and all(torch.equal(sa[1][k], sb[1][k]) for k in sa[1])
        for p, q in zip(lo.params, lo2.params, strict=True):
            assert (p.grad is None) == (q.grad is None)
            assert p.grad is None or torch.equal(p.grad, q.grad)


def test_corrupt_shard_is_caught_and_set_aside(tmp_path, monkeypatch):
    from nestdsl.runtime import sharded
    from nestdsl.runtime.loop import Ranks
    from nestdsl.runtime.resume import LoopState, restore
    from nestdsl.spec.identity import record

    _, _, spec_obj = _standin_run(tmp_path, monkeypatch, steps=2)
    system, level_opts = _fresh(spec_obj)
    rec = record(spec_obj)
    out = tmp_path / "sharded"
    for step in (4, 6):
        sharded.save(out, step, ranks=Ranks(), model=system.model, level_opts=level_opts,
                     loop=LoopState.fresh("cpu"), spec_text="x", spec_record=rec)
    shard = next((out / "step_000006").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ck.UnreadableCheckpoint, match="sha256"):
        ck.load_checkpoint(out / "step_000006", model=_fresh(spec_obj)[0].model)
    other, other_opts = _fresh(spec_obj)
    with pytest.warns(UserWarning, match="does not verify"):
        state = restore(out, model=other.model, level_opts=other_opts, record=rec, device="cpu", rank=0)
    assert state.step == 4 and (out / "unreadable-step_000006").is_dir()


def test_fsdp_refuses_matrix_optimizers():
    from nestdsl.optim import build
    from nestdsl.runtime.train import LevelOptimizer, TrainConfigError, _check_shardable
    from nestdsl.spec import ir

    w = torch.nn.Parameter(torch.randn(8, 8))
    muon = build(ir.MuonOptimizer(type="muon", lr=0.02), [("w", w)])
    with pytest.raises(TrainConfigError, match="updates whole matrices"):
        _check_shardable([LevelOptimizer("outer", [w], 1, muon, [0.02])])
    adamw = build(ir.AdamWOptimizer(type="adamw", lr=1e-3), [("w", w)])
    _check_shardable([LevelOptimizer("outer", [w], 1, adamw, [1e-3])])


def test_bad_parallel_and_convert_inputs_are_one_line_errors(tmp_path, monkeypatch):
    from cli_helpers import cli, one_error

    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2)
    assert "--parallel must be ddp or fsdp" in one_error(cli("train", spec, "--parallel", "zero",
                                                             "--out", tmp_path / "r"))
    r = cli("train", spec, "--out", tmp_path / "run", "-q", "--no-compile")
    assert r.exit_code == 0, r.output
    line = one_error(cli("checkpoint", "convert", tmp_path / "run", "--out", tmp_path / "c"))
    assert "already a one-process (safetensors) checkpoint" in line
