"""Preemption: a real SIGTERM / SIGINT sent to a training subprocess finishes the step, writes its
checkpoint, exits 75 with a message, and `--resume` then ends bitwise equal to a run that was
never stopped; a second signal stops at once and leaves the last good checkpoint alone."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train_standin as S  # noqa: E402

import nestdsl.runtime.checkpoint as ck  # noqa: E402
from nestdsl.pipeline import load_spec  # noqa: E402
from nestdsl.runtime.metrics import read_metrics  # noqa: E402
from nestdsl.runtime.preempt import EXIT_PREEMPTED, Interrupted, Preemption  # noqa: E402

STEPS = 400
SLOW_SAVE = """\
import time
import nestdsl.runtime.checkpoint as ck
_fsync = ck._fsync_dir
def _slow(path):
    time.sleep(1.5)
    _fsync(path)
ck._fsync_dir = _slow
from nestdsl.cli import main"""


def _start(driver: Path, spec: Path, run: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [S.PYTHON, str(driver), "train", str(spec), "--out", str(run), "--steps", str(STEPS),
         "--no-compile", "-q", *extra],
        env=S.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(proc: subprocess.Popen[str], run: Path, n: int, timeout: float = 120) -> None:
    """Until the run has logged `n` steps (log_every 1): the loop is running."""
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("the run did not reach its steps in time")
        time.sleep(0.005)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    latest = ck.find_latest(run)
    assert latest is not None
    return load_file(str(latest / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(spec, driver, run) of the run no signal stops. Log every step, checkpoint every 50: a
    signal lands between periodic checkpoints, and inside the persistent level's k = 2
    accumulation window half of the time."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    spec = S.text_spec(tmp, steps=STEPS, log_every=1, ckpt_every=50)
    driver = S.write_driver(tmp / "driver.py")
    r = subprocess.run([S.PYTHON, str(driver), "train", str(spec), "--out", str(tmp / "A"),
                        "--steps", str(STEPS), "--no-compile", "-q"],
                       env=S.subprocess_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return spec, driver, tmp / "A"


# SIGINT (Ctrl-C) goes through the same handler: `test_preemption_flag_then_interrupt_in_process`
@pytest.mark.slow      # three training subprocesses
@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_signal_checkpoints_the_step_and_resume_is_exact(tmp_path, sig, uninterrupted):
    spec, driver, a = uninterrupted
    b = tmp_path / "B"
    proc = _start(driver, spec, b)
    _wait_for_steps(proc, b, random.Random(sig).randint(3, 9))
    proc.send_signal(sig)
    out, errs = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, out + errs
    stopped = ck.read_meta(ck.find_latest(b))["step"]
    assert 0 < stopped < STEPS
    assert f"stopped by {sig.name} after step {stopped}" in errs
    assert "--resume" in errs and "Traceback" not in errs
    assert read_metrics(b)[-1]["step"] == stopped          # every finished step was logged

    r = subprocess.run([S.PYTHON, str(driver), "train", str(spec), "--out", str(b), "--steps",
                        str(STEPS), "--resume", "--no-compile", "-q"],
                       env=S.subprocess_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [(m["step"], m["loss"]) for m in read_metrics(a)] == \
        [(m["step"], m["loss"]) for m in read_metrics(b)]


@pytest.mark.slow
def test_second_signal_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    spec = S.text_spec(tmp_path, steps=STEPS, log_every=1, ckpt_every=2)
    # every checkpoint write sleeps 2 x 1.5 s after its files are written: the second signal,
    # 1.2 s after the first (later than a duplicate delivery), lands inside a write
    driver = S.write_driver(tmp_path / "driver.py")
    driver.write_text(driver.read_text().replace("from nestdsl.cli import main", SLOW_SAVE))
    b = tmp_path / "B"
    proc = _start(driver, spec, b)
    _wait_for_steps(proc, b, 3)
    while not (b / "latest").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.2)
    proc.send_signal(signal.SIGTERM)
    out, errs = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + errs
    assert errs.count("interrupted:") == 1 and "Traceback" not in errs
    latest = ck.find_latest(b)
    assert latest is not None and ck.is_complete(latest)
    ck.load_checkpoint(latest, model=S.make_system(load_spec(spec)).model)   # it verifies
    assert not list(b.glob(".tmp-*")) or ck.find_latest(b) == latest     # a torn write is inert


def test_preemption_flag_then_interrupt_in_process():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with Preemption(duplicate_s=0.0) as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
        with pytest.raises(Interrupted):
            signal.raise_signal(signal.SIGINT)
    # a repeat within the window is the same notice delivered twice (a job-wide SIGTERM that
    # torchrun forwards as well): still one graceful stop
    with Preemption(duplicate_s=60.0) as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
    # the previous handlers are back
    assert {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} == before
