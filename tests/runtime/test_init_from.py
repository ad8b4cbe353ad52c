"""CMS from a pre-trained model (NL arXiv §7.3): a Hope-Attention model whose CMS starts from a
trained Transformer's MLPs is, with its in-context step sizes -> 0, that Transformer exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import nestdsl
from nestdsl.cli import app
from nestdsl.pipeline import load_spec
from nestdsl.runtime.evaluate import load_model
from nestdsl.runtime.init_from import InitError, init_from_checkpoint
from nestdsl.runtime.train import train

ATTENTION = {"type": "memory", "memory": "attn", "conv": 0, "qk_norm": False, "output_gate": False}
DATA = {"task": "copy", "length": 4, "seq_len": 32, "batch": 4}
MODEL = {"vocab": 256, "width": 32, "depth": 2, "heads": 2, "pattern": ["b"]}
TRAIN = {"steps": 3, "log_every": 1, "ckpt_every": 3, "compile": False}


def _write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _pretrained(tmp: Path, activation: str = "gelu") -> Path:
    spec = _write(tmp / f"transformer-{activation}.yaml", {
        "nestdsl": 1, "name": "pre", "model": MODEL, "memories": {"attn": {"kind": "attention"}},
        "blocks": {"b": {"layers": [ATTENTION, {"type": "mlp", "hidden": 2, "activation": activation}]}},
        "optimizer": {"type": "adamw", "lr": 0.01}, "data": DATA, "train": TRAIN})
    run = tmp / f"run-{activation}"
    train(load_spec(spec), run_dir=run)
    return run


def _hope_attention(tmp: Path, run: Path, *, lr: float = 1e-12, stages: str = "first",
                    activation: str = "gelu", gated: bool = False) -> Path:
    form = {"activation": activation, "gated": gated}
    return _write(tmp / "hope-attention.yaml", {
        "nestdsl": 1, "name": "stacked", "model": MODEL,
        "levels": {"fast": {"every": "8 tokens"}, "slow": {"every": "2 steps"}},
        "memories": {"attn": {"kind": "attention"}},
        "cms": {"c": {"mode": "chain", "stages": [
            {"level": "fast", "hidden": 2, **form, "signal": "task", "lr": lr},
            {"level": "slow", "hidden": 4, **form}]}},
        "blocks": {"b": {"layers": [ATTENTION, {"type": "cms", "cms": "c"}]}},
        "optimizer": {"type": "adamw", "lr": 0.01}, "data": DATA,
        "train": {**TRAIN, "init_from": {"checkpoint": str(run), "stages": stages}}})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pretrained(tmp_path_factory.mktemp("pre"))


@pytest.mark.parametrize("activation", ["gelu", "silu"])     # silu: the shipped SwiGLU MLP
def test_eta_to_zero_gives_the_pretrained_model_s_logits(pretrained: Path, tmp_path: Path,
                                                          activation: str) -> None:
    if activation == "silu":
        pretrained = _pretrained(tmp_path, activation="silu")
    spec = load_spec(_hope_attention(tmp_path, pretrained, activation=activation,
                                     gated=activation == "silu"))
    torch.manual_seed(0)
    model = nestdsl.compile(spec, compile=False).model
    report = init_from_checkpoint(model, spec, spec.train.init_from)
    assert report.stacked and not report.unused, report
    assert all(".stages.1." in n for n in report.fresh), report.fresh     # W_in (W_gate), the pre-norm
    pre = load_model(load_spec(pretrained.parent / f"transformer-{activation}.yaml"), pretrained, "cpu")
    tokens = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), pre(tokens), atol=1e-5, rtol=0)
        # the training loss runs the in-context writes (the task sweep): at eta 1e-12 they are nil
        targets = torch.roll(tokens, -1, 1)
        mask = torch.ones_like(tokens, dtype=torch.bool)
    assert model.uses_task_sweep
    loss = model.train().loss(tokens, targets, mask)
    ref = pre.loss(tokens, targets, mask)
    assert abs(float(loss) - float(ref)) < 1e-5


def test_a_larger_step_moves_away_from_it(pretrained: Path, tmp_path: Path) -> None:
    spec = load_spec(_hope_attention(tmp_path, pretrained, lr=1.0))
    model = nestdsl.compile(spec, compile=False).model
    init_from_checkpoint(model, spec, spec.train.init_from)
    pre = load_model(load_spec(pretrained.parent / "transformer-gelu.yaml"), pretrained, "cpu")
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(2))
    targets, mask = torch.roll(tokens, -1, 1), torch.ones_like(tokens, dtype=torch.bool)
    assert abs(float(model.loss(tokens, targets, mask)) - float(pre.loss(tokens, targets, mask))) > 1e-4


def test_every_stage_from_the_mlp(pretrained: Path, tmp_path: Path) -> None:
    spec = load_spec(_hope_attention(tmp_path, pretrained, stages="all"))
    model = nestdsl.compile(spec, compile=False).model
    with pytest.raises(InitError, match="shape.*hidden: 2"):        # the slow stage is wider
        init_from_checkpoint(model, spec, spec.train.init_from)


def test_a_stage_of_another_form_is_refused_with_the_fix(tmp_path: Path) -> None:
    run = _pretrained(tmp_path, activation="silu")                # SwiGLU into W_out σ(W_in x)
    spec = load_spec(_hope_attention(tmp_path, run, activation="silu"))
    model = nestdsl.compile(spec, compile=False).model
    with pytest.raises(InitError, match="is gated.*give the stage `gated: true`"):
        init_from_checkpoint(model, spec, spec.train.init_from)
    spec = load_spec(_hope_attention(tmp_path, run, activation="gelu", gated=True))
    model = nestdsl.compile(spec, compile=False).model
    with pytest.raises(InitError, match="uses silu.*`activation: silu`"):
        init_from_checkpoint(model, spec, spec.train.init_from)


def test_a_gated_stage_is_the_transformer_s_swiglu() -> None:
    from nestdsl.lower.cms import CMSStageModule, gated_mlp_forward

    stage = CMSStageModule(8, 2, "silu", norm=False, local=False, gated=True)
    w_in, w_gate, w_out = stage.weights
    x = torch.randn(2, 5, 8)
    ref = torch.nn.functional.silu(x @ w_in.T) * (x @ w_gate.T) @ w_out.T
    torch.testing.assert_close(gated_mlp_forward(tuple(stage.weights), x, activation="silu"), ref)


def test_a_gated_local_stage_is_a_spec_error(tmp_path: Path) -> None:
    from nestdsl.diagnostics import SpecError

    doc = yaml.safe_load(_hope_attention(tmp_path, tmp_path, gated=True).read_text())
    doc["cms"]["c"]["stages"][0]["signal"] = "local"
    del doc["train"]["init_from"]
    with pytest.raises(SpecError, match="gated stage cannot use `signal: local`"):
        load_spec(_write(tmp_path / "bad.yaml", doc))


def test_train_starts_from_the_checkpoint(pretrained: Path, tmp_path: Path) -> None:
    spec = _hope_attention(tmp_path, pretrained)
    r = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "run"), "--steps", "1"])
    assert r.exit_code == 0, r.output
    assert "initialised from" in r.output and "CMS stage weights from pre-trained MLPs" in r.output


def _llama(tmp: Path, **overrides: object) -> Path:
    transformers = pytest.importorskip("transformers")
    fields = {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": True, "max_position_embeddings": 128}
    cfg = transformers.LlamaConfig(**{**fields, **overrides})
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():                     # non-trivial norms: a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp / "llama")
    return tmp / "llama"


def _llama_spec(tmp: Path, folder: Path, *, cms: bool) -> Path:
    second = {"type": "cms", "cms": "c"} if cms else {"type": "mlp", "hidden": 2}
    doc = {"nestdsl": 1, "name": "from-llama", "model": MODEL,
           "memories": {"attn": {"kind": "attention"}},
           "blocks": {"b": {"layers": [ATTENTION, second]}},
           "optimizer": {"type": "adamw", "lr": 0.01}, "data": DATA,
           "train": {**TRAIN, "init_from": {"checkpoint": str(folder)}}}
    if cms:
        doc["levels"] = {"fast": {"every": "8 tokens"}, "slow": {"every": "2 steps"}}
        doc["cms"] = {"c": {"stages": [{"level": "fast", "hidden": 2, "gated": True, "lr": 1e-12},
                                       {"level": "slow", "hidden": 4, "gated": True}]}}
    return _write(tmp / f"from-llama-{cms}.yaml", doc)


@pytest.mark.parametrize("cms", [False, True])
def test_a_local_llama_folder_gives_its_logits(tmp_path: Path, cms: bool) -> None:
    """A Hugging Face Llama checkpoint saved on disk (no download): a nestdsl Transformer with
    its weights, or a Hope-Attention model whose CMS starts from its MLPs, computes its logits."""
    folder = _llama(tmp_path)
    transformers = pytest.importorskip("transformers")
    spec = load_spec(_llama_spec(tmp_path, folder, cms=cms))
    model = nestdsl.compile(spec, compile=False).model
    report = init_from_checkpoint(model, spec, spec.train.init_from)
    assert not report.unused and (bool(report.stacked) == cms), report
    ref = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), ref(tokens).logits, atol=1e-5, rtol=0)


def test_a_llama_folder_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    folder = _llama(tmp_path, num_key_value_heads=1)
    spec = load_spec(_llama_spec(tmp_path, folder, cms=False))
    model = nestdsl.compile(spec, compile=False).model
    with pytest.raises(InitError, match="num_key_value_heads = 1, this spec needs 2"):
        init_from_checkpoint(model, spec, spec.train.init_from)
