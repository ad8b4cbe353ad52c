"""`nestdsl train` on bad input: each case gives its one-line message, exit code 2, no traceback,
and keeps the last good checkpoint (stand-in system: independent of the model lowering)."""

from __future__ import annotations

import errno
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train_standin as S  # noqa: E402

import nestdsl.runtime.checkpoint as ck  # noqa: E402
from nestdsl.cli import app  # noqa: E402
from nestdsl.runtime.metrics import read_metrics  # noqa: E402

runner = CliRunner()


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(r: Any, *fragments: str) -> str:
    """Exit 2, exactly one `error:` line holding every fragment, no traceback."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output, r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), r.exception
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    for f in fragments:
        assert f in lines[0], r.output
    assert "internal error" not in r.output
    return lines[0]


def text_spec_at(tmp: Path, data_path: Path | str, **kw: Any) -> Path:
    return S.write_spec(tmp / "spec.yaml", data=f"{{task: text, path: '{data_path}', seq_len: 32, batch: 8}}", **kw)


def assert_loadable(run: Path, step: int) -> None:
    latest = ck.find_latest(run)
    assert latest is not None and latest.name == f"step_{step:06d}"
    model = S.StandinModel(256, 32)
    loaded = ck.load_checkpoint(latest, model=model)
    assert loaded.step == step
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# Data paths


def test_missing_data_path(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = text_spec_at(tmp_path, tmp_path / "nope.txt")
    assert_user_error(cli("train", spec, "--out", tmp_path / "run", "-q"), "data path not found", "nope.txt")
    assert ck.find_latest(tmp_path / "run") is None


def test_empty_data_file_and_folder(tmp_path, monkeypatch):
    S.install(monkeypatch)
    (tmp_path / "empty.txt").write_text("")
    spec = text_spec_at(tmp_path, tmp_path / "empty.txt")
    assert_user_error(cli("train", spec, "--out", tmp_path / "run", "-q"), "data file is empty")
    (tmp_path / "folder").mkdir()
    spec = text_spec_at(tmp_path, tmp_path / "folder")
    assert_user_error(cli("train", spec, "--out", tmp_path / "run", "-q"), "data folder is empty")


def test_unreadable_data_file(tmp_path, monkeypatch):
    S.install(monkeypatch)
    data = S.write_corpus(tmp_path / "locked.txt")
    data.chmod(0)
    real = Path.read_bytes

    def denied(self: Path) -> bytes:  # root ignores file modes: refuse like the kernel would
        if self.name == "locked.txt":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    try:
        spec = text_spec_at(tmp_path, data)
        assert_user_error(cli("train", spec, "--out", tmp_path / "run", "-q"), "cannot read data file", "Permission denied")
    finally:
        data.chmod(0o644)


def test_data_too_short_for_seq_len(tmp_path, monkeypatch):
    S.install(monkeypatch)
    (tmp_path / "short.txt").write_text("tiny")
    spec = text_spec_at(tmp_path, tmp_path / "short.txt")
    assert_user_error(cli("train", spec, "--out", tmp_path / "run", "-q"), "need at least seq_len+1")


def test_relative_data_path_resolves_next_to_the_spec(tmp_path, monkeypatch):
    S.install(monkeypatch)
    S.write_corpus(tmp_path / "corpus.txt")
    spec = text_spec_at(tmp_path, "corpus.txt", steps=2, log_every=1, ckpt_every=2)
    monkeypatch.chdir(tmp_path.parent)  # not the spec's folder
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_resume_with_a_checkpoint_from_another_spec(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2, log_every=1, ckpt_every=2)
    assert cli("train", spec, "--out", tmp_path / "run", "-q").exit_code == 0
    # another spec (a changed learning rate) is refused, naming the field ...
    other = tmp_path / "other.yaml"
    other.write_text(spec.read_text().replace("lr: 0.01", "lr: 0.02"))
    assert_user_error(cli("train", other, "--out", tmp_path / "run", "--resume", "-q"),
                      "differs in 1 field", "lr: 0.01 → 0.02", "--force")
    # ... and so is the same file with an override that changes the model
    r = cli("train", spec, "--out", tmp_path / "run", "--resume", "-q", "--set", "model.width=16")
    assert_user_error(r, "model.width")
    assert_loadable(tmp_path / "run", 2)


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    S.install(monkeypatch, nan_at=3)
    spec = S.text_spec(tmp_path, steps=10, log_every=1, ckpt_every=2)
    line = assert_user_error(cli("train", spec, "--out", tmp_path / "run", "-q"), "non-finite at step 3", "kept")
    assert str(tmp_path / "run") in line
    assert_loadable(tmp_path / "run", 2)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_non_finite_between_log_steps_is_caught_before_the_checkpoint(tmp_path, monkeypatch):
    S.install(monkeypatch, nan_at=3)
    spec = S.text_spec(tmp_path, steps=10, log_every=5, ckpt_every=2)
    assert_user_error(cli("train", spec, "--out", tmp_path / "run", "-q"), "non-finite at step 3")
    assert_loadable(tmp_path / "run", 2)  # step 4's state (after the NaN) was never written


def test_huge_learning_rate_diverges_cleanly(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=20, log_every=1, ckpt_every=1, grad_clip=None)
    r = cli("train", spec, "--out", tmp_path / "run", "-q", "--set", "optimizer.lr=1.0e+20")
    line = assert_user_error(r, "non-finite", "last good checkpoint", "kept")
    # the loss may stay finite one step longer than the parameters: either way, the checkpoint
    # kept is finite and loads
    latest = ck.find_latest(tmp_path / "run")
    assert latest is not None, line
    assert_loadable(tmp_path / "run", ck.read_meta(latest)["step"])


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=10, log_every=2, ckpt_every=2)
    real = ck._save_tensors
    calls = {"n": 0}

    def full_after_first_checkpoint(tensors: Any, path: Path) -> None:
        if path.parent.name.startswith(".tmp-step_000004"):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path)

    monkeypatch.setattr(ck, "_save_tensors", full_after_first_checkpoint)
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert calls["n"] == 1
    assert_user_error(r, "disk full", "step_000002", "intact")
    assert_loadable(tmp_path / "run", 2)


def test_full_disk_while_logging_metrics(tmp_path, monkeypatch):
    from nestdsl.runtime import metrics

    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=10, log_every=2, ckpt_every=2)
    real_log = metrics.MetricsWriter.log

    def log(self: Any, step: int, **values: Any) -> Any:
        if step >= 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_log(self, step, **values)

    monkeypatch.setattr(metrics.MetricsWriter, "log", log)
    assert_user_error(cli("train", spec, "--out", tmp_path / "run", "-q"), "disk full")
    assert_loadable(tmp_path / "run", 2)


# ---------------------------------------------------------------------------------------------
# Command line


def test_set_with_an_unknown_key_is_a_positioned_diagnostic(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2)
    r = cli("train", spec, "--out", tmp_path / "run", "--set", "train.stepz=5")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    # positioned on the override itself: `--set train.stepz=5:1:1: error: unknown field ...`
    assert "--set train.stepz=5:1:" in r.output and "unknown field 'stepz'" in r.output
    assert "did you mean 'steps'" in r.output
    assert not (tmp_path / "run").exists()


def test_set_with_a_bad_value_is_a_diagnostic(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2)
    r = cli("train", spec, "--out", tmp_path / "run", "--set", "train.steps=-1")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "steps" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2)
    assert_user_error(cli("train", spec, "--out", tmp_path / "run", "--device", "cuda"), "CUDA is not available")


def test_unknown_device(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2)
    assert_user_error(cli("train", spec, "--out", tmp_path / "run", "--device", "tpu"), "--device")


def test_vocab_smaller_than_the_task(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2)
    r = cli("train", spec, "--out", tmp_path / "run", "-q", "--set", "model.vocab=100")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "model.vocab" in r.output and "256" in r.output  # the checker's diagnostic


def test_runtime_vocab_check_backs_up_the_checker():
    from types import SimpleNamespace

    from nestdsl.runtime.tasks import DataError
    from nestdsl.runtime.train import _check_vocab

    spec = SimpleNamespace(model=SimpleNamespace(vocab=100))
    with pytest.raises(DataError, match="set model.vocab to at least 256"):
        _check_vocab(spec, SimpleNamespace(name="text", vocab_size=256))


def test_optimizer_only_spec_is_refused(tmp_path):
    r = cli("train", S.REPO / "nestdsl" / "optim" / "specs" / "adamw.yaml", "--out", tmp_path / "run")
    assert_user_error(r, "no `model:` section")


def test_missing_spec_file(tmp_path):
    r = cli("train", tmp_path / "nope.yaml", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output


def test_progress_display_and_summary(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=4, log_every=2, ckpt_every=4)
    r = cli("train", spec, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "step 2/4  loss" in r.output and "tok/s" in r.output and "lr 1.00e-02" in r.output
    assert "done 4 steps" in r.output
    rec = read_metrics(tmp_path / "run")
    assert len(rec) == 2 and all(math.isfinite(x["loss"]) for x in rec)


def test_version_prints_the_package_version():
    import nestdsl

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"nestdsl {nestdsl.__version__}"
