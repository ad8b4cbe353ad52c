"""Every Deep ir.Optimizer through `nestdsl train`: the tiny transformer preset trains with each
shipped optimizer spec (`nestdsl/optim/specs/*.yaml`, by name; and the types no shipped spec uses,
inline: dgd, precond_momentum, sgd) for 8 steps, logs finite losses, builds the optimizer the spec names, and resumes from its mid-run
checkpoint bit-identically to the uninterrupted run (CPU, float32).

The resume check copies the step-4 checkpoint (and the metrics file, whose later lines the
resumed run must drop) of the uninterrupted run A into a fresh folder B and continues it: B is
then exactly a run killed after its step-4 checkpoint. The learning rate is still in warmup at
every step (warmup 20 > 8), so a schedule that stopped reaching an optimizer after the resume
(e.g. a MultiOptimizer whose `param_groups` no longer alias its children's) breaks the check.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import nestdsl.runtime.checkpoint as ck
from nestdsl.cli import app
from nestdsl.runtime.metrics import read_metrics
from nestdsl.spec.shipped import OPTIMIZER_DIR

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "specs" / "transformer.yaml"
OPTIM_SPECS = sorted(OPTIMIZER_DIR.glob("*.yaml"))
STEPS, MID = 8, 4

# Types no shipped optimizer spec uses, set inline (YAML flow mappings through --set).
INLINE = {
    "dgd": "{type: dgd, lr: 0.05}",
    "dgd+adamw": "{type: dgd, lr: 0.05, groups: [{params: embeddings, type: adamw, lr: 0.003}]}",
    "precond_momentum": "{type: precond_momentum, lr: 0.003, beta: 0.9, beta2: 0.99}",
    "sgd": "{type: sgd, lr: 0.05}",
}
# the shipped specs by name (`--set optimizer=m3`), then the inline types
CASES = [(p.stem, p.stem) for p in OPTIM_SPECS] + list(INLINE.items())

runner = CliRunner()

# the brief's arguments, plus a checkpoint in the middle of the run and a few log lines
ARGS = [
    "--set", "model.depth=1", "--set", "data.seq_len=32", "--set", "data.batch=4",
    "--set", f"train.ckpt_every={MID}", "--set", "train.log_every=2",
    "--steps", str(STEPS), "--no-compile", "-q",
]  # fmt: skip


def _train(optimizer: str, out: Path, *extra: str) -> Any:
    args = ["train", str(PRESET), "--set", f"optimizer={optimizer}", *ARGS, "--out", str(out)]
    r = runner.invoke(app, [*args, *extra])
    assert r.exit_code == 0, (r.output, r.exception)
    return r


def _expected_types(optimizer: str) -> set[str]:
    """The optimizer types the spec routes the transformer's parameters to."""
    import yaml

    if optimizer.startswith("{"):
        doc = yaml.safe_load(optimizer)
    else:
        doc = yaml.safe_load((OPTIMIZER_DIR / f"{optimizer}.yaml").read_text())["optimizer"]
    return {doc["type"], *(g.get("type", doc["type"]) for g in doc.get("groups", []))}


def _group_types(optim_state: Any) -> set[str]:
    """The `type` recorded in every param group of a (possibly nested) optimizer state."""
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "param_groups" in x:
                found.update(g["type"] for g in x["param_groups"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(optim_state)
    return found


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{what}: {k} differs"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted run of every case (shared by the tests below)."""
    base = tmp_path_factory.mktemp("optim-runs")
    out: dict[str, Path] = {}
    for name, optimizer in CASES:
        run = base / name
        _train(optimizer, run)
        out[name] = run
    return out


@pytest.mark.parametrize(("name", "optimizer"), CASES, ids=[c[0] for c in CASES])
def test_trains_with_finite_losses_and_the_named_optimizer(
    runs: dict[str, Path], name: str, optimizer: str
) -> None:
    run = runs[name]
    records = read_metrics(run)
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert all(math.isfinite(r["loss"]) for r in records), records
    latest = ck.find_latest(run)
    assert latest is not None and latest.name == f"step_{STEPS:06d}"
    loaded = ck.load_checkpoint(latest)
    assert _group_types(loaded.optim_state) == _expected_types(optimizer)
    params = load_file(str(latest / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in params.values())


@pytest.mark.parametrize(("name", "optimizer"), CASES, ids=[c[0] for c in CASES])
def test_resume_from_the_mid_run_checkpoint_is_bitwise(
    runs: dict[str, Path], tmp_path: Path, name: str, optimizer: str
) -> None:
    a = runs[name]
    b = tmp_path / "B"
    b.mkdir()
    mid = ck.checkpoint_name(MID)
    shutil.copytree(a / mid, b / mid)
    shutil.copy(a / "metrics.jsonl", b / "metrics.jsonl")  # holds steps 6, 8: must be dropped
    (b / "latest").write_text(mid + "\n")
    _train(optimizer, b, "--resume")

    fa, fb = ck.find_latest(a), ck.find_latest(b)
    assert fa.name == fb.name == ck.checkpoint_name(STEPS)
    for fname in ("model.safetensors", "optim.safetensors"):
        _assert_bitwise(load_file(str(fa / fname)), load_file(str(fb / fname)), f"{name} {fname}")
    la, lb = read_metrics(a), read_metrics(b)
    assert [(r["step"], r["loss"]) for r in la] == [(r["step"], r["loss"]) for r in lb]


# ---------------------------------------------------------------------------------------------
# build_level_optimizers on the lowered transformer (in process)


def _system(depth: int = 1) -> Any:
    import nestdsl
    from nestdsl.pipeline import load_spec

    spec = load_spec(PRESET, overrides=[f"model.depth={depth}", "data.seq_len=32", "data.batch=2"])
    torch.manual_seed(0)
    return spec, nestdsl.compile(spec, compile=False)


def _batch(vocab: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (2, 32), generator=g)
    return tokens, torch.roll(tokens, -1, dims=1)


def test_dgd_hooks_capture_every_linear_of_the_model() -> None:
    from nestdsl.optim import DGD
    from nestdsl.runtime.train import build_level_optimizers
    from nestdsl.spec import ir

    _, system = _system()
    spec = ir.optimizer(type="dgd", lr=0.05, groups=[ir.param_group(params="embeddings", type="adamw")])
    (lo,) = build_level_optimizers(system, spec)
    linears = [m for m in system.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and len(lo.hooks) == len(linears)
    dgd = next(o for o in lo.optimizer.optimizers if isinstance(o, DGD))
    tokens, targets = _batch()
    system.model.loss(tokens, targets, None).backward()
    assert set(map(id, dgd._captured)) == {id(m.weight) for m in linears}
    # the step consumes them, and differs from plain GD by the input-dependent erase term
    w = linears[0].weight
    gd = w.detach() - 0.05 * w.grad
    lo.optimizer.step()
    assert not dgd._captured
    assert not torch.equal(w.detach(), gd)
    # the embedding went to AdamW by being an nn.Embedding (and by its name)
    kinds = {n: g["type"] for g in lo.optimizer.param_groups for n in g["names"]}
    assert kinds["embed.weight"] == "adamw"


def test_dgd_captured_inputs_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    """Mid-accumulation (a persistent level of period k > 1 between its steps) the inputs DGD
    captured so far are part of the optimizer state."""
    from nestdsl.optim import DGD
    from nestdsl.runtime.train import build_level_optimizers
    from nestdsl.spec import ir

    _, system = _system()
    (lo,) = build_level_optimizers(system, ir.optimizer(type="dgd", lr=0.05))
    dgd = lo.optimizer
    assert isinstance(dgd, DGD)
    tokens, targets = _batch()
    system.model.loss(tokens, targets, None).backward()
    ck.save_checkpoint(tmp_path, 1, model=system.model, optimizer=[dgd], spec_text="x")

    _, system2 = _system()
    (lo2,) = build_level_optimizers(system2, ir.optimizer(type="dgd", lr=0.05))
    ck.load_checkpoint(
        ck.find_latest(tmp_path), model=system2.model, optimizer=[lo2.optimizer], spec_text="x"
    )
    saved = {n: dgd._captured[p] for n, p in system.model.named_parameters() if p in dgd._captured}
    got = {
        n: lo2.optimizer._captured[p]
        for n, p in system2.model.named_parameters()
        if p in lo2.optimizer._captured
    }
    assert saved.keys() == got.keys() and saved
    for n in saved:
        assert torch.equal(saved[n][0], got[n][0]) and saved[n][1] == got[n][1]


def test_multi_optimizer_lr_reaches_children_after_load_state_dict() -> None:
    from nestdsl.pipeline import load_spec
    from nestdsl.runtime.train import build_level_optimizers

    spec, system = _system()
    muon = load_spec(PRESET, overrides=["optimizer=muon"]).outer_optimizer
    (lo,) = build_level_optimizers(system, muon)
    opt = lo.optimizer
    opt.load_state_dict(opt.state_dict())
    for g in opt.param_groups:
        g["lr"] = 0.123
    assert all(g["lr"] == 0.123 for child in opt.optimizers for g in child.param_groups)


# ---------------------------------------------------------------------------------------------
# DGD under data parallelism: its erase term uses the global batch's input moments


@pytest.mark.slow
def test_dgd_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    """Two gloo ranks, each on half the batch, end where one process on the whole batch ends:
    DGD all-reduces its captured X^T X (without that, each rank would erase with its own half's
    moments and the ranks' weights would drift apart)."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo not available")
    opt = INLINE["dgd+adamw"]
    one, two = tmp_path / "one", tmp_path / "two"
    _train(opt, one)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc_per_node", "2", "-m", "nestdsl", "train", str(PRESET),
        "--set", f"optimizer={opt}", *ARGS, "--out", str(two),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    fa = load_file(str(ck.find_latest(one) / "model.safetensors"))
    fb = load_file(str(ck.find_latest(two) / "model.safetensors"))
    assert fa.keys() == fb.keys()
    for k in fa:
        torch.testing.assert_close(
            fb[k], fa[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}"
        )
