"""The training loop: it learns, persistent levels update every k steps with the mean gradient,
resume is exact (in process and after SIGKILL, bitwise on CPU), and two-process DDP (gloo)
matches one process on the same global batch.

Runs on a stand-in system (`test_train_standin`) so it does not depend on the model lowering;
the `slow` tests repeat the key checks on the real tiny presets where they lower.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train_standin as S  # noqa: E402

import nestdsl.runtime.checkpoint as ck  # noqa: E402
from nestdsl.cli import app  # noqa: E402
from nestdsl.pipeline import load_spec  # noqa: E402
from nestdsl.runtime.metrics import read_metrics  # noqa: E402
from nestdsl.spec import read_source  # noqa: E402

runner = CliRunner()


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run)]


def model_tensors(run: Path) -> dict[str, torch.Tensor]:
    latest = ck.find_latest(run)
    assert latest is not None, f"no checkpoint in {run}"
    return load_file(str(latest / "model.safetensors"))


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ---------------------------------------------------------------------------------------------
# Real presets (skipped where the lowering cannot build them yet)

def preset_spec(tmp: Path, preset: str, *, steps: int, data: dict[str, Any], lr: float = 1e-2,
                log_every: int = 5, ckpt_every: int = 100, levels: dict[str, Any] | None = None) -> Path:
    """A tiny variant of `specs/<preset>.yaml` (depth 1) with the given data and train sections
    (and `levels` entries replaced); skips the test when the lowering cannot build it."""
    doc = yaml.safe_load((S.REPO / "specs" / f"{preset}.yaml").read_text())
    doc["model"]["depth"] = 1
    doc.setdefault("levels", {}).update(levels or {})
    doc["optimizer"] = {"type": "adamw", "lr": lr, "weight_decay": 0.0, "beta": 0.9, "beta2": 0.99}
    doc["data"] = data
    doc["train"] = {"steps": steps, "warmup": 0, "schedule": "constant", "log_every": log_every,
                    "ckpt_every": ckpt_every, "compile": False}
    path = tmp / f"{preset}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


HOPE_FAST_LEVELS = {"cms_mid": {"every": "32 tokens"}}


def text_data(tmp: Path, seq_len: int = 32, batch: int = 4) -> dict[str, Any]:
    corpus = tmp / "corpus.txt"
    if not corpus.exists():
        S.write_corpus(corpus)
    return {"task": "text", "path": str(corpus), "seq_len": seq_len, "batch": batch}


# ---------------------------------------------------------------------------------------------
# 1. A short run learns


def test_standin_learns_on_synthetic_text(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=60, log_every=5, ckpt_every=30)
    r = cli("train", spec, "--out", tmp_path / "run", "--no-compile")
    assert r.exit_code == 0, r.output
    ls = losses(tmp_path / "run")
    assert len(ls) == 12
    assert ls[-1] < 0.7 * ls[0], ls
    assert "done" in r.output
    # the final checkpoint is there and loads into a fresh stand-in
    assert ck.find_latest(tmp_path / "run").name == "step_000060"


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["transformer", "titans-lmm", "hope"])
def test_preset_learns(tmp_path, preset):
    # hope: its in-context CMS periods must fit in a sequence; 64 tokens with the mid level at
    # 32 tokens keeps every level (incl. the persistent cms_slow, every 4 steps) and is fast
    hope = preset == "hope"
    data = text_data(tmp_path, seq_len=64 if hope else 32, batch=2 if hope else 4)
    spec = preset_spec(tmp_path, preset, steps=10 if hope else 15, data=data,
                       levels=HOPE_FAST_LEVELS if hope else None)
    r = cli("train", spec, "--out", tmp_path / "run", "--no-compile", "--quiet")
    assert r.exit_code == 0, r.output
    ls = losses(tmp_path / "run")
    assert ls[-1] < 0.7 * ls[0], ls


# ---------------------------------------------------------------------------------------------
# 6. Persistent levels: every k steps, with the mean of the accumulated gradients


def _train(spec_path: Path, run: Path, **kw: Any) -> Any:
    from nestdsl.runtime.train import train

    spec = load_spec(spec_path)
    return train(spec, spec_text=read_source(spec_path), run_dir=run, device="cpu", compile=False, **kw)


def test_persistent_level_steps_every_k_with_mean_gradient(tmp_path, monkeypatch):
    import nestdsl

    # plain SGD (update = -lr * g) and no clipping, so the update shows the gradient exactly
    corpus = S.write_corpus(tmp_path / "corpus.txt")
    spec_path = S.write_spec(tmp_path / "s.yaml", data=f"{{task: text, path: {corpus}, seq_len: 16, batch: 4}}",
                             steps=4, log_every=1, ckpt_every=1, lr=0.5, grad_clip=None)
    spec_path.write_text(spec_path.read_text().replace(
        "{type: adamw, lr: 0.5, weight_decay: 0.0, beta: 0.9, beta2: 0.99}", "{type: sgd, lr: 0.5}"))
    systems: list[Any] = []
    base = S.factory()

    def compile_and_keep(spec: Any, **kw: Any) -> Any:
        system = base(spec, **kw)
        systems.append((system, {k: v.detach().clone() for k, v in system.model.state_dict().items()}))
        return system

    monkeypatch.setattr(nestdsl, "compile", compile_and_keep)
    states: list[dict[str, torch.Tensor]] = []
    accums: list[dict[str, torch.Tensor]] = []
    real_save = ck.save_checkpoint

    def spy(run_dir: Any, step: int, **kw: Any) -> Any:
        states.append({k: v.detach().clone() for k, v in kw["model"].state_dict().items()})
        accums.append({k: v.clone() for k, v in kw["extra"]["accum"].items()})
        return real_save(run_dir, step, **kw)

    monkeypatch.setattr(ck, "save_checkpoint", spy)
    _train(spec_path, tmp_path / "run")
    (system, init), = systems
    before = [init, *states]  # before[s] = the state before step s+1
    for s in range(4):
        slow_changed = not torch.equal(before[s]["slow.weight"], states[s]["slow.weight"])
        assert slow_changed == ((s + 1) % S.SLOW_EVERY_K == 0), s
        assert not torch.equal(before[s]["mix.weight"], states[s]["mix.weight"]), s  # outer: every step
    # between updates the accumulated gradient is checkpointed; after an update it is empty
    assert set(accums[0]) == {"slow.0", "slow.1"} and accums[1] == {} and set(accums[2]) == {"slow.0", "slow.1"}

    # recompute: slow_2 = slow_0 - lr * (g_1 + g_2) / 2, each g at the parameters of its step
    from nestdsl.runtime.tasks import make_task

    task = make_task(load_spec(spec_path).data)
    model = S.StandinModel(256, 32)
    grads = []
    for s in range(2):
        model.load_state_dict(before[s])
        model.zero_grad()
        b = task.batch(s)
        model.loss(b.tokens, b.targets, b.loss_mask).backward()
        grads.append(model.slow.weight.grad.clone())
    assert torch.equal(accums[0]["slow.0"], grads[0])  # the checkpointed accumulator is g_1
    expected = init["slow.weight"] - 0.5 * (grads[0] + grads[1]) / 2
    torch.testing.assert_close(states[1]["slow.weight"], expected, rtol=1e-5, atol=1e-6)


def test_level_groups_follow_roles():
    from nestdsl.runtime.train import _level_groups

    spec = SimpleNamespace(model=SimpleNamespace(vocab=11, width=4))
    system = S.make_system(spec)
    groups = {name: (len(params), k) for name, params, k in _level_groups(system)}
    assert groups == {"outer": (6, 1), "slow": (2, 2)}
    n_params = sum(len(p) for _, p, _ in _level_groups(system))
    assert n_params == len(list(system.model.parameters()))


# ---------------------------------------------------------------------------------------------
# Exact resume, in process: a crash right after a checkpoint in the middle of an accumulation
# window (and of a loss-logging window)


class _Crash(BaseException):
    pass


def test_resume_mid_accumulation_window_is_bitwise(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=11, log_every=2, ckpt_every=3)
    _train(spec, tmp_path / "A")

    real_save = ck.save_checkpoint

    def crash_after_step_3(run_dir: Any, step: int, **kw: Any) -> Any:
        out = real_save(run_dir, step, **kw)
        if step == 3:  # step 3: the slow level holds one accumulated gradient (k = 2)
            assert kw["extra"]["accum"] and kw["extra"]["n_acc"] == 1
            raise _Crash
        return out

    monkeypatch.setattr(ck, "save_checkpoint", crash_after_step_3)
    with pytest.raises(_Crash):
        _train(spec, tmp_path / "B")
    monkeypatch.setattr(ck, "save_checkpoint", real_save)
    assert ck.find_latest(tmp_path / "B").name == "step_000003"
    result = _train(spec, tmp_path / "B", resume=True)
    assert result.start_step == 3
    assert_bitwise(model_tensors(tmp_path / "A"), model_tensors(tmp_path / "B"))
    la, lb = read_metrics(tmp_path / "A"), read_metrics(tmp_path / "B")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [2, 4, 6, 8, 10, 11]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    oa = load_file(str(ck.find_latest(tmp_path / "A") / "optim.safetensors"))
    ob = load_file(str(ck.find_latest(tmp_path / "B") / "optim.safetensors"))
    assert_bitwise(oa, ob)


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2, log_every=1, ckpt_every=1)
    assert cli("train", spec, "--out", tmp_path / "run", "-q").exit_code == 0
    before = ck.find_latest(tmp_path / "run")
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.exit_code == 2, r.output
    assert "--resume" in r.output and "Traceback" not in r.output
    assert ck.find_latest(tmp_path / "run") == before
    # resuming a finished run has nothing to do
    r = cli("train", spec, "--out", tmp_path / "run", "--resume")
    assert r.exit_code == 0 and "already at step 2" in r.output, r.output


def _damage(folder: Path, what: str) -> None:
    """Break one file of a checkpoint folder the way a crash or a bad disk would."""
    if what == "meta":                      # a meta.json cut short mid-write
        f = folder / "meta.json"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:                                   # flipped bytes in a tensor file (same size)
        f = folder / f"{what}.safetensors"
        data = bytearray(f.read_bytes())
        data[-8:] = bytes(255 - b for b in data[-8:])
        f.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["meta", "model", "optim", "state"])
def test_resume_falls_back_past_an_unreadable_checkpoint(tmp_path, monkeypatch, what):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=6, log_every=1, ckpt_every=2)
    _train(spec, tmp_path / "A")                                   # uninterrupted: 6 steps
    _train(spec, tmp_path / "B", steps=4)                         # step_2, step_4
    _damage(tmp_path / "B" / "step_000004", what)
    with pytest.warns(UserWarning, match="step_000004 does not verify.*resuming from step_000002"):
        result = _train(spec, tmp_path / "B", resume=True)
    assert result.start_step == 2
    kept = tmp_path / "B" / "unreadable-step_000004"              # moved aside, not lost
    assert kept.is_dir() and ck.find_latest(tmp_path / "B").name == "step_000006"
    assert_bitwise(model_tensors(tmp_path / "A"), model_tensors(tmp_path / "B"))
    assert losses(tmp_path / "A") == losses(tmp_path / "B")


def test_resume_stops_when_no_checkpoint_verifies(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2, log_every=1, ckpt_every=2)
    assert cli("train", spec, "--out", tmp_path / "run", "-q").exit_code == 0
    folder = tmp_path / "run" / "step_000002"
    _damage(folder, "meta")
    broken = (folder / "meta.json").read_bytes()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    for args in (["--resume"], []):        # neither a resume nor a fresh start may discard the run
        r = cli("train", spec, "--out", tmp_path / "run", "-q", *args)
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        assert ("verifies" in r.output) if args else ("--resume" in r.output)
    kept = tmp_path / "run" / "unreadable-step_000002" / "meta.json"
    assert kept.read_bytes() == broken
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics


# ---------------------------------------------------------------------------------------------
# 2. SIGKILL mid-run + --resume = uninterrupted run (bitwise, CPU), in subprocesses


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, env=S.subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _kill_mid_run(cmd: list[str], run: Path, total: int, timeout: float = 240) -> bool:
    """Start `cmd`, SIGKILL it as soon as its first checkpoint exists; True if it was killed
    before finishing (the latest checkpoint is short of `total`)."""
    proc = subprocess.Popen(cmd, env=S.subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not (run / "latest").exists():
            if proc.poll() is not None:
                raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint appeared in time")
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    latest = ck.find_latest(run)
    assert latest is not None
    return proc.returncode == -signal.SIGKILL and ck.read_meta(latest)["step"] < total


def _sigkill_resume_matches(tmp_path: Path, prefix: list[str], spec: Path, steps: int, extra: list[str]) -> None:
    for attempt in range(4):
        b = tmp_path / f"B{attempt}"
        if _kill_mid_run([*prefix, "train", str(spec), "--out", str(b), "--steps", str(steps), *extra], b, steps):
            break
        steps *= 4  # finished before the kill landed: a longer run
    else:
        pytest.fail("could not kill the run before it finished")
    killed_at = ck.read_meta(ck.find_latest(b))["step"]
    assert 0 < killed_at < steps
    _run([*prefix, "train", str(spec), "--out", str(b), "--steps", str(steps), "--resume", *extra])
    a = tmp_path / "A"
    _run([*prefix, "train", str(spec), "--out", str(a), "--steps", str(steps), *extra])
    assert_bitwise(model_tensors(a), model_tensors(b))
    ma, mb = read_metrics(a), read_metrics(b)
    assert [(r["step"], r["loss"]) for r in ma] == [(r["step"], r["loss"]) for r in mb]
    assert ma[-1]["step"] == steps
    oa = load_file(str(ck.find_latest(a) / "optim.safetensors"))
    ob = load_file(str(ck.find_latest(b) / "optim.safetensors"))
    assert_bitwise(oa, ob)


@pytest.mark.slow      # subprocesses; the in-process resume tests cover the fast lane
def test_sigkill_and_resume_is_bitwise_standin(tmp_path):
    # ckpt_every 3 with k = 2 and log_every 2: the kill lands inside accumulation/log windows
    spec = S.text_spec(tmp_path, steps=120, log_every=2, ckpt_every=3)
    driver = S.write_driver(tmp_path / "driver.py")
    _sigkill_resume_matches(tmp_path, [S.PYTHON, str(driver)], spec, 120, ["--no-compile", "-q"])


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_transformer(tmp_path):
    data = {"task": "mqar", "seq_len": 32, "batch": 4, "num_pairs": 4}
    spec = preset_spec(tmp_path, "transformer", steps=12, data=data, log_every=2, ckpt_every=3)
    _sigkill_resume_matches(tmp_path, [S.PYTHON, "-m", "nestdsl"], spec, 12, ["--no-compile", "-q"])


# ---------------------------------------------------------------------------------------------
# 3. Two-process DDP (gloo, CPU) = one process on the same global batch


def _torchrun() -> str:
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not Path(exe).exists():
        pytest.skip("torchrun not found")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo not available")
    return exe


def _ddp_matches_single(tmp_path: Path, prefix_single: list[str], prefix_ddp: list[str], spec: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _run([*prefix_single, "train", str(spec), "--out", str(one), "--no-compile", "-q"])
    _run([_torchrun(), "--standalone", "--nnodes", "1", "--nproc_per_node", "2", *prefix_ddp,
          "train", str(spec), "--out", str(two), "--no-compile", "-q"])
    a, b = model_tensors(one), model_tensors(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    ma, mb = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]  # rank 0 alone logs: no duplicates
    for ra, rb in zip(ma, mb, strict=True):
        assert abs(ra["loss"] - rb["loss"]) < 1e-4 * max(1.0, abs(ra["loss"]))
    assert [p.name for p in ck.list_checkpoints(one)] == [p.name for p in ck.list_checkpoints(two)]


@pytest.mark.slow      # two gloo processes
def test_ddp_two_processes_match_one_standin(tmp_path):
    # a persistent level (k = 2) too: DDP averages the accumulated gradients correctly
    spec = S.text_spec(tmp_path, steps=6, log_every=2, ckpt_every=3)
    marks = tmp_path / "marks"
    marks.mkdir()
    driver = S.write_driver(tmp_path / "driver.py", record_dir=str(marks))
    _ddp_matches_single(tmp_path, [S.PYTHON, str(driver)], [str(driver)], spec)
    # proof that the two-process run really was DDP, each rank on half the global batch of 8
    assert sorted(p.name for p in marks.iterdir()) == ["rank0-of-1-batch8", "rank0-of-2-batch4", "rank1-of-2-batch4"]


@pytest.mark.slow
def test_ddp_two_processes_match_one_transformer(tmp_path):
    data = {"task": "mqar", "seq_len": 32, "batch": 4, "num_pairs": 4}
    spec = preset_spec(tmp_path, "transformer", steps=4, data=data, log_every=2, ckpt_every=4)
    _ddp_matches_single(tmp_path, [S.PYTHON, "-m", "nestdsl"], ["-m", "nestdsl"], spec)


def _fake_dist(world: int = 2) -> Any:
    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        raise AssertionError("should have been refused before wrapping")

    return SimpleNamespace(rank=0, world_size=world, device="cpu", wrap=wrap)


def test_ddp_refuses_indivisible_batch(tmp_path, monkeypatch):
    from nestdsl.runtime.train import TrainConfigError

    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2)  # batch 8
    with pytest.raises(TrainConfigError, match="not divisible by the 3 processes"):
        _train(spec, tmp_path / "run", distributed=_fake_dist(3))


def test_valid_count_weights_make_ddp_mean_exact():
    """Weighting each rank's mean by its share of the scored tokens (what train() does) turns
    the average over ranks into the global mean, also with unequal masks."""
    from nestdsl.runtime.tasks.base import scored_positions as _valid_count

    g = torch.Generator().manual_seed(0)
    nll = torch.rand(4, 6, generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.6
    targets = torch.zeros(4, 6, dtype=torch.long)
    targets[0, 0] = -100

    def mean(n: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = (m & (t != -100)).float()
        return (n * v).sum() / v.sum().clamp_min(1)

    total = _valid_count(targets, mask)
    ranks = [mean(n, m, t) * (_valid_count(t, m) * 2 / total)
             for n, m, t in zip(nll.chunk(2), mask.chunk(2), targets.chunk(2), strict=True)]
    torch.testing.assert_close(sum(ranks) / 2, mean(nll, mask, targets))


def test_bf16_precision_trains(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=20, log_every=5, ckpt_every=20)
    r = cli("train", spec, "--out", tmp_path / "run", "-q", "--set", "train.precision=bf16")
    assert r.exit_code == 0, r.output
    ls = losses(tmp_path / "run")
    assert ls[-1] < ls[0], ls
    assert all(t.dtype == torch.float32 for t in model_tensors(tmp_path / "run").values())  # fp32 master weights


def test_metrics_are_strict_jsonl(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=4, log_every=2, ckpt_every=4)
    assert cli("train", spec, "--out", tmp_path / "run", "-q").exit_code == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["step"] for r in recs] == [2, 4]
    assert {"loss", "lr", "tokens_per_s", "elapsed"} <= set(recs[0])
