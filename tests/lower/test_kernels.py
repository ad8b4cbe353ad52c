"""The kernel registry (ops/kernels.py) as users meet it: automatic choice per device, forcing
with `--kernel`, the refusals `compile --explain` prints, and a forced kernel computing the same
model (the Triton scan in Triton's interpreter here)."""

from __future__ import annotations

import inspect

import pytest
import torch
from typer.testing import CliRunner

import nestdsl
from nestdsl.cli import app
from nestdsl.ops import MLPMemory, kernels
from nestdsl.ops.objectives import get_objective, soft_clipped_l2

runner = CliRunner()


def call(memory, objective, *, device="cpu", dtype=torch.float32, compile=True, **kw):
    args = dict(memory=memory, objective=get_objective(objective), rule="gd", erase="eta",
                read="after", chunk_size=16, retention=True, momentum=True, d_key=16,
                d_value=16, device=torch.device(device), dtype=dtype, compile=compile)
    args.update(kw)
    return kernels.MemoryCall(**args)


def test_automatic_choice_follows_device_and_compile_switch():
    mlp = MLPMemory(depth=2, hidden=64)
    assert kernels.choose(call(mlp, soft_clipped_l2(1.0))).name == "compiled"
    assert kernels.choose(call(mlp, "l2", compile=False)).name == "chunked"
    on_gpu = call(mlp, soft_clipped_l2(1.0), device="cuda", dtype=torch.bfloat16)
    triton = pytest.importorskip("nestdsl.ops.triton_mlp")
    assert kernels.choose(on_gpu).name == ("triton" if triton.available() else "compiled")
    # a configuration the kernel does not cover falls through to the torch scan, with the reason
    deep = call(MLPMemory(depth=3, hidden=64), "l2", device="cuda")
    assert kernels.choose(deep).name == "compiled"
    assert "MLP depth 3" in dict(kernels.verdicts(deep))["triton"].reason
    # a DeltaNet layer under bf16 autocast on CUDA: fla's delta rule where fla is installed
    from nestdsl.ops import fla_linear

    delta = call("linear", "l2", chunk_size=1, retention=False, momentum=False, device="cuda",
                 dtype=torch.bfloat16)
    assert kernels.choose(delta).name == ("fla" if fla_linear.available() else "compiled")
    if fla_linear.available():
        fp32 = call("linear", "l2", chunk_size=1, retention=False, momentum=False, device="cuda")
        assert "refuses torch.float32" in dict(kernels.verdicts(fp32))["fla"].reason
        assert kernels.choose(fp32).name == "compiled"


def test_forcing_names_the_reason_a_kernel_refuses():
    assert kernels.choose(call("linear", "l2", chunk_size=1), "reference").name == "reference"
    with pytest.raises(ValueError, match="kernel 'fla' cannot run this memory: chunk size 16"):
        kernels.choose(call("linear", "dot", retention=False, momentum=False), "fla")
    with pytest.raises(ValueError, match="kernel 'cuda' cannot run this memory: unknown kernel; known: triton, fla"):
        kernels.choose(call("linear", "dot"), "cuda")


def test_compile_spec_validates_forced_kernels():
    with pytest.raises(ValueError, match="no parametric memory 'nope'; its memories: titans"):
        nestdsl.compile("specs/titans-lmm.yaml", compile=False, kernels={"nope": "chunked"})
    with pytest.raises(ValueError, match="kernel 'fast' for 'titans' is unknown"):
        nestdsl.compile("specs/titans-lmm.yaml", compile=False, kernels={"titans": "fast"})
    with pytest.raises(ValueError, match="memory 'mem' .*kernel 'fla' cannot run this memory"):
        nestdsl.compile("specs/deltanet.yaml", compile=False, kernels={"*": "fla"})
    system = nestdsl.compile("specs/titans-lmm.yaml", compile=False, kernels={"*": "reference"})
    assert {r.kernel for r in system.plan if r.kind.startswith("memory")} == {"reference"}


def _triton_interpreted():
    triton_mlp = pytest.importorskip("nestdsl.ops.triton_mlp")
    if not triton_mlp.available() or not triton_mlp.interpreted():
        pytest.skip("needs triton with TRITON_INTERPRET=1 (tests/conftest.py)")
    return triton_mlp


def _same_training_step(spec: str, kinds: tuple[str, ...], tokens, tol: float, launches=None):
    """Loss and parameter gradients of one step with every memory on the torch chunk step and
    on the Triton kernels: equal to `tol` (relative to each gradient's size)."""
    triton_mlp = _triton_interpreted()
    result = {}
    for kern in ("chunked", "triton"):
        torch.manual_seed(0)
        system = nestdsl.compile(spec, compile=False, kernels={"*": kern})
        assert {r.kernel for r in system.plan if r.kind.startswith(kinds)} == {kern}
        before = triton_mlp.LAUNCHES
        loss = system.model.loss(tokens, tokens)
        loss.backward()
        if kern == "triton" and launches is not None:
            assert launches[0] < triton_mlp.LAUNCHES - before <= launches[1]
        result[kern] = loss, {n: p.grad for n, p in system.model.named_parameters()
                              if p.grad is not None}
    (l_ref, g_ref), (l_tri, g_tri) = result["chunked"], result["triton"]
    torch.testing.assert_close(l_tri, l_ref, atol=1e-5, rtol=1e-5)
    assert g_ref.keys() == g_tri.keys()
    for n in g_ref:
        scale = g_ref[n].abs().max().item()
        torch.testing.assert_close(g_tri[n], g_ref[n], atol=tol * max(scale, 1e-3), rtol=tol,
                                   msg=lambda m, n=n: f"{n}: {m}")


def test_forced_triton_kernel_trains_the_same_model():
    """titans-lmm with every memory on the Triton scan (two launches per layer and step: the
    forward and the backward kernel): same loss and parameter gradients as the torch scan."""
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    _same_training_step("specs/titans-lmm.yaml", ("memory",), tokens, 1e-4, launches=(3, 4))


def test_cli_explain_lists_kernels_and_refusals():
    r = runner.invoke(app, ["compile", "specs/titans-lmm.yaml", "--explain", "--no-compile"])
    assert r.exit_code == 0, r.output
    text = r.output
    assert "memory kernels" in text
    assert "titans (titans): chunked (automatic)" in text
    assert "compiled   refused: compile is off (--no-compile)" in text
    assert "fla        refused: MLP memory" in text
    r = runner.invoke(app, ["compile", "specs/titans-lmm.yaml", "--no-compile",
                            "--kernel", "titans=reference"])
    assert r.exit_code == 0 and "reference" in r.output, r.output


@pytest.mark.parametrize("args,msg", [
    (["--kernel", "titans=warp"], "kernel 'warp' for 'titans' is unknown"),
    (["--kernel", "=chunked"], "expected NAME or MEMORY=NAME"),
    (["--kernel", "fla"], "kernel 'fla' cannot run this memory: MLP memory"),
])
def test_cli_kernel_errors_are_one_line(args, msg):
    r = runner.invoke(app, ["compile", "specs/titans-lmm.yaml", "--no-compile", *args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and msg in errors[0], r.output


@pytest.mark.slow   # the interpreter runs both kernels for every chunk of every memory
def test_forced_triton_kernel_runs_hopes_joint_loop():
    """Hope's self-modifying layer with M_mem and the projection memories on the Triton chunk
    step: the same loss and parameter gradients as the torch chunk step (fp32; Hope's inner
    norms amplify rounding). Launches: 2 layers × 2 chunks × (M_mem, projections) forward, and
    the backward of each whose outputs are used (the last projection write's are not)."""
    tokens = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    _same_training_step("specs/hope.yaml", ("self_modifying",), tokens, 2e-3, launches=(8, 16))


def test_cli_train_refuses_a_kernel_that_cannot_run(tmp_path):
    r = runner.invoke(app, ["train", "specs/titans-lmm.yaml", "--steps", "1", "--out",
                            str(tmp_path / "run"), "--kernel", "titans=fla", "--quiet"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "kernel 'fla' cannot run this memory: MLP memory" in errors[0]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def _shape(fn) -> list[tuple[str, object, object]]:
    """A signature without annotations: names, kinds and defaults."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(inspect.unwrap(fn)).parameters.values()]


def test_every_kernel_takes_the_same_signature():
    """One protocol: every registered kernel's scan is `scan(*, x: ScanInputs)` and every chunk
    step (Hope's joint loop) has `mlp_chunk_step`'s parameters."""
    from nestdsl.ops.mlp_chunked import mlp_chunk_step
    from nestdsl.vocabulary import KERNEL_NAMES

    assert tuple(kernels.KERNELS) == KERNEL_NAMES
    for kernel in kernels.KERNELS.values():
        assert _shape(kernel.scan) == [("x", inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty)], kernel.name
        if kernel.chunk_step is None or kernel.name == "compiled":   # compiled wraps the chunked step
            continue
        if kernel.name == "triton":
            pytest.importorskip("triton")
        assert _shape(kernel.chunk_step()) == _shape(mlp_chunk_step), kernel.name
