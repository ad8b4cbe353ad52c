"""A checkpoint is identified by what its spec means, not by the spec's text: comments, `fmt`,
the `.nest` twin and run-length changes load; a change of meaning is refused with the list of
fields; `eval` and `train --resume` run with the stored spec when none is given."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_helpers import TINY, cli
from cli_helpers import one_error as error_line

from nestdsl.pipeline import load_spec, spec_from_canonical
from nestdsl.runtime import checkpoint as ck
from nestdsl.spec.identity import canonical, differences, identity

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted(p for p in (ROOT / "specs").rglob("*") if p.suffix in (".yaml", ".nest")
                 and load_spec(p).model is not None)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_canonical_form_rebuilds_the_same_identity(path):
    spec = load_spec(path)
    back = spec_from_canonical(canonical(spec), label="stored", source_file=str(path))
    assert differences(identity(spec), identity(back)) == []


@pytest.mark.parametrize("path", [p for p in PRESETS if p.suffix == ".nest"],
                         ids=lambda p: p.stem)
def test_nest_twin_has_the_yaml_identity(path):
    assert differences(identity(load_spec(path)), identity(load_spec(path.with_suffix(".yaml")))) == []


def test_identity_ignores_text_and_run_fields_but_not_meaning(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text(TINY)
    b = tmp_path / "b.yaml"            # a comment, a default written out, a longer run
    b.write_text("# my copy\n" + TINY.replace("steps: 4, log_every: 2", "steps: 40, log_every: 1")
                 .replace("hidden: 2}", "hidden: 2, residual: true}"))
    assert differences(identity(load_spec(a)), identity(load_spec(b))) == []
    c = tmp_path / "c.yaml"
    c.write_text(TINY.replace("width: 32", "width: 16").replace("lr: 0.003", "lr: 0.01"))
    diffs = {d.path: (d.stored, d.current) for d in differences(identity(load_spec(a)),
                                                                 identity(load_spec(c)))}
    assert diffs == {"model.width": (32, 16), "optimizer.lr": (0.003, 0.01)}


@pytest.fixture
def trained(tmp_path) -> tuple[Path, Path]:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    r = cli("train", spec, "--out", tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    return spec, tmp_path / "run"


def test_eval_without_a_spec_uses_the_stored_one(trained, tmp_path):
    spec, run = trained
    with_file = cli("eval", spec, "--ckpt", run, "--batches", "1")
    stored = cli("eval", "--ckpt", run, "--batches", "1")
    assert with_file.exit_code == 0 and stored.exit_code == 0, stored.output
    assert "evaluating step_000004 (step 4)" in stored.output
    assert with_file.output.splitlines()[1:] == stored.output.splitlines()[1:]
    # the stored spec does not need the file any more (a copied or deleted spec)
    spec.unlink()
    assert cli("eval", "--ckpt", run / "step_000004", "--batches", "1").exit_code == 0


def test_a_formatted_or_commented_spec_loads(trained, tmp_path):
    spec, run = trained
    fmt = cli("fmt", spec, "--to", "nest")
    assert fmt.exit_code == 0, fmt.output
    twin = tmp_path / "tiny.nest"
    twin.write_text("# the same model, other syntax\n" + fmt.output)
    assert cli("eval", twin, "--ckpt", run, "--batches", "1").exit_code == 0


def test_a_change_of_meaning_is_refused_with_the_fields_and_force_loads(trained):
    spec, run = trained
    r = cli("eval", spec, "--ckpt", run, "--batches", "1", "--set", "model.width=16",
            "--set", "optimizer.lr=0.01")
    line = error_line(r)
    assert "differs in 2 fields" in line and "model.width: 32 → 16" in line
    assert "optimizer.lr: 0.003 → 0.01" in line and "--force" in line
    # --force tries anyway: here the weights cannot fit a narrower model (a clear error too)
    assert "does not fit" in error_line(cli("eval", spec, "--ckpt", run, "--batches", "1",
                                            "--set", "model.width=16", "--force"))
    r = cli("eval", spec, "--ckpt", run, "--batches", "1", "--set", "optimizer.lr=0.01", "--force")
    assert r.exit_code == 0, r.output


def test_resume_reports_its_step_and_allows_longer_runs(trained, tmp_path):
    spec, run = trained
    r = cli("train", spec, "--out", run, "--resume", "--steps", "6")
    assert r.exit_code == 0, r.output
    assert "resuming from step 4 (step_000004); changed: train.steps: 4 → 6" in r.output
    # without the spec file: the stored one (and another run-length change)
    r = cli("train", "--resume", "--out", run, "--set", "train.steps=8")
    assert r.exit_code == 0, r.output
    assert "resuming from step 6" in r.output and ck.find_latest(run).name == "step_000008"
    r = cli("train", spec, "--out", run, "--resume", "--steps", "10", "--set", "model.depth=2")
    assert "model.depth: 1 → 2" in error_line(r)
    r = cli("train", spec, "--out", run, "--resume", "--steps", "10", "--set", "optimizer.lr=0.01",
            "--force")
    assert r.exit_code == 0 and "loaded with --force despite: optimizer.lr: 0.003 → 0.01" in r.output
    fresh = tmp_path / "fresh"
    r = cli("train", spec, "--out", fresh, "--resume")
    assert r.exit_code == 0 and f"no checkpoint in {fresh}: starting fresh" in r.output


def test_resume_falls_back_past_a_checkpoint_without_meta(trained):
    spec, run = trained
    (run / "step_000004" / "meta.json").unlink()
    r = cli("train", spec, "--out", run, "--resume")
    assert r.exit_code == 0, r.output
    assert "resuming from step 2" in r.output
    assert ck.find_latest(run).name == "step_000004" and (run / "unreadable-step_000004").is_dir()


def test_a_checkpoint_without_a_stored_identity_needs_force(trained, tmp_path):
    spec, run = trained
    import json

    legacy = tmp_path / "legacy"
    shutil.copytree(run, legacy)
    meta_path = legacy / "step_000004" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["spec"]
    meta_path.write_text(json.dumps(meta))
    assert "older nestdsl" in error_line(cli("eval", spec, "--ckpt", legacy, "--batches", "1"))
    assert "give the spec file" in error_line(cli("eval", "--ckpt", legacy, "--batches", "1"))
    assert cli("eval", spec, "--ckpt", legacy, "--batches", "1", "--force").exit_code == 0
