"""Start a model from a trained checkpoint, its CMS levels from the checkpoint's MLPs (NL paper
arXiv §7.3, "ad-hoc level stacking": MLP^(f)_0 = MLP^pre-trained, then update with Eq. 71; with
the in-context step sizes eta -> 0 the model is the pre-trained one).

`train.init_from: {checkpoint: runs/transformer}` builds the spec's model, then

* copies every tensor whose name and shape match (embeddings, attention, norms, the head, and
  any layer the two specs share), and
* for each CMS layer, takes the MLP at the same block and slot of the checkpoint: with
  `stages: first` (default) the first stage becomes that MLP (W_in <- w1, W_out <- w2) and every
  later stage starts as the identity (W_out = 0, so a chain's residual stage adds nothing);
  with `stages: all` every stage starts as a copy of it (a richer start, no longer exact).

A chain whose first stage is the pre-trained MLP and whose other stages are identities computes
exactly the pre-trained block; its in-context stages then change it only through their writes,
so at eta -> 0 the logits are the pre-trained model's (a test holds them to 1e-5). The stage must
have the MLP's form: its `hidden` and `activation`, and `gated: true` for a gated (SwiGLU) MLP —
the shipped Transformer's — or false for W_out sigma(W_in x).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nestdsl.spec import ir

__all__ = ["InitError", "InitReport", "init_from_checkpoint"]


class InitError(ValueError):
    """The checkpoint cannot initialise this model (says which tensor or layer and why)."""

    user_error = True


@dataclass
class InitReport:
    checkpoint: str
    copied: list[str] = field(default_factory=list)        # same name and shape
    stacked: list[str] = field(default_factory=list)       # CMS stages from a pre-trained MLP
    fresh: list[str] = field(default_factory=list)         # kept at their initialisation
    unused: list[str] = field(default_factory=list)        # checkpoint tensors nothing took

    def summary(self) -> str:
        return (f"initialised from {self.checkpoint}: {len(self.copied)} tensors copied, "
                f"{len(self.stacked)} CMS stage weights from pre-trained MLPs, {len(self.fresh)} "
                f"fresh, {len(self.unused)} checkpoint tensors unused")


_CMS_WEIGHT = re.compile(r"^(blocks\.\d+\.slots\.\d+\.layer)\.stages\.(\d+)\.weights\.([012])$")


@dataclass(frozen=True)
class SourceMLP:
    """A pre-trained MLP's form: what a CMS stage must match to hold it exactly."""

    activation: str
    hidden: int          # multiple of the width


def _source_mlps(spec: ir.Spec) -> dict[str, SourceMLP]:
    """The checkpoint spec's MLP layers by module path (`blocks.{i}.slots.{j}.layer`)."""
    assert spec.model is not None
    out = {}
    for i in range(spec.model.depth):
        block = spec.blocks[spec.model.pattern[i % len(spec.model.pattern)]]
        for j, layer in enumerate(block.layers):
            if isinstance(layer, ir.MLPLayer):
                out[f"blocks.{i}.slots.{j}.layer"] = SourceMLP(layer.activation, layer.hidden)
    return out


def _stage_of(spec: ir.Spec, path: str, stage: int) -> ir.CMSStage:
    assert spec.model is not None
    i, j = (int(x) for x in re.findall(r"\d+", path)[:2])
    layer = spec.blocks[spec.model.pattern[i % len(spec.model.pattern)]].layers[j]
    assert isinstance(layer, ir.CMSLayer)
    return spec.cms[layer.cms].stages[stage]


def _stacked_weight(name: str, spec: ir.Spec, mlps: dict[str, SourceMLP], tensors: dict[str, torch.Tensor],
                    shape: torch.Size, stages: str) -> torch.Tensor | None:
    """The initial value of CMS stage weight `name`, from the pre-trained MLP at its place."""
    m = _CMS_WEIGHT.match(name)
    if m is None:
        return None
    path, stage, which = m.group(1), int(m.group(2)), int(m.group(3))
    mlp = mlps.get(path)
    if mlp is None:
        raise InitError(f"{name}: the checkpoint has no MLP at {path} to start this CMS stage from "
                        "(the two specs' blocks must line up: same depth, the MLP in the CMS's slot)")
    target = _stage_of(spec, path, stage)
    gated = f"{path}.w3.weight" in tensors          # SwiGLU: w2 (silu(w1 x) ⊙ w3 x)
    if stage == 0 or stages == "all":
        if gated != target.gated:
            raise InitError(f"{path}: the pre-trained MLP is {'' if gated else 'not '}gated "
                            f"({'SwiGLU' if gated else 'W_out σ(W_in x)'}) and cms stage {stage + 1} is "
                            f"{'' if target.gated else 'not'}: give the stage `gated: {str(gated).lower()}`")
        if target.activation != mlp.activation:
            raise InitError(f"{name}: the pre-trained MLP uses {mlp.activation}, the CMS stage "
                            f"{target.activation}; give the stage `activation: {mlp.activation}`")
    out_index = 2 if target.gated else 1
    if stage > 0 and stages == "first":
        if which == out_index:
            return torch.zeros(shape)            # an identity stage: the chain adds nothing
        return None                              # W_in (and W_gate) keep their init (they still learn)
    source_name = {0: "w1", out_index: "w2"}.get(which, "w3")
    weight = tensors[f"{path}.{source_name}.weight"]
    if weight.shape != shape:
        raise InitError(f"{name}: shape {tuple(shape)} but the pre-trained MLP's is "
                        f"{tuple(weight.shape)}; give the stage `hidden: {mlp.hidden}`")
    return weight


def init_from_checkpoint(model: torch.nn.Module, spec: ir.Spec, init: ir.InitFrom) -> InitReport:
    """Load `init.checkpoint` into `model` (built from `spec`) as the module docstring says."""
    from nestdsl.runtime import checkpoint as ck
    from nestdsl.runtime.run_spec import checkpoint_folder, from_checkpoint

    path = Path(init.checkpoint).expanduser()
    if not path.is_absolute() and spec.source_file and not path.exists():
        path = Path(spec.source_file).parent / path
    if (path / "config.json").is_file():            # a Hugging Face Llama-style folder
        folder = path
        tensors, mlps = llama_tensors(path, spec)
    else:
        folder = checkpoint_folder(path)
        mlps = _source_mlps(from_checkpoint(folder).spec)
        tensors = dict(ck.load_checkpoint(folder).model_state)
    report = InitReport(str(folder))
    state = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    taken: set[str] = set()
    for name, value in state.items():
        stacked = _stacked_weight(name, spec, mlps, tensors, value.shape, init.stages)
        if stacked is not None:
            new[name] = stacked
            report.stacked.append(name)
        elif name in tensors:
            if tensors[name].shape != value.shape:
                raise InitError(f"{name}: shape {tuple(value.shape)} here, {tuple(tensors[name].shape)} "
                                f"in {folder} (the two specs must agree on width, heads and vocab)")
            new[name] = tensors[name]
            taken.add(name)
            report.copied.append(name)
        else:
            report.fresh.append(name)
    for name in report.stacked:
        m = _CMS_WEIGHT.match(name)
        assert m is not None
        taken.update({f"{m.group(1)}.w1.weight", f"{m.group(1)}.w2.weight", f"{m.group(1)}.w3.weight"})
    report.unused = sorted(set(tensors) - taken)
    with torch.no_grad():
        for name, value in new.items():
            state[name].copy_(value.to(dtype=state[name].dtype, device=state[name].device))
    return report


# ---------------------------------------------------------------------------------------------
# A Hugging Face Llama-style folder (config.json + *.safetensors; read without transformers)


def llama_tensors(folder: Path, spec: ir.Spec) -> tuple[dict[str, torch.Tensor], dict[str, SourceMLP]]:
    """A local Llama-style checkpoint's tensors under nestdsl's names, for a spec whose blocks are
    [attention, MLP or CMS] like a Llama decoder layer; and each block's MLP form (SwiGLU).

    Exact for the architecture nestdsl's Transformer shares with Llama: RMSNorm pre-norms,
    rotate-half RoPE, fused q/k/v with one key/value head per query head, a SwiGLU MLP. Anything
    else (grouped keys/values, another RoPE base or scaling, biases, another norm eps) is refused.
    """
    import json

    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") not in ("llama", "mistral", "qwen2"):
        raise InitError(f"{folder}: model_type {config.get('model_type')!r}; a Llama-style folder "
                        "(model_type llama) or a nestdsl run folder is expected")
    assert spec.model is not None
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    rope = config.get("rope_parameters") or {}      # transformers >= 5; older: rope_theta, rope_scaling
    checks = [
        ("hidden_size", config["hidden_size"], spec.model.width),
        ("num_hidden_layers", config["num_hidden_layers"], spec.model.depth),
        ("num_attention_heads", heads, spec.model.heads),
        ("num_key_value_heads", kv, heads),
        ("vocab_size", config["vocab_size"], spec.model.vocab),
        ("rope_theta", float(config.get("rope_theta", rope.get("rope_theta", 10000.0))), 10000.0),
        ("rope type", rope.get("rope_type", "default"), "default"),
        ("head_dim", config.get("head_dim", config["hidden_size"] // heads), config["hidden_size"] // heads),
        ("hidden_act", config.get("hidden_act", "silu"), "silu"),
        ("rms_norm_eps", float(config.get("rms_norm_eps", 1e-6)), 1e-6),
        ("tie_word_embeddings", bool(config.get("tie_word_embeddings", False)), spec.model.tie_embeddings),
        ("attention_bias", bool(config.get("attention_bias", False)), False),
        ("mlp_bias", bool(config.get("mlp_bias", False)), False),
        ("rope_scaling", config.get("rope_scaling"), None),
    ]
    for key, theirs, ours in checks:
        if theirs != ours:
            raise InitError(f"{folder}/config.json: {key} = {theirs!r}, this spec needs {ours!r}")
    raw: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        raw.update(load_file(str(f)))
    if not raw:
        raise InitError(f"{folder}: no *.safetensors files")
    raw = {k.removeprefix("model."): v for k, v in raw.items()}
    ratio, rest = divmod(int(config["intermediate_size"]), int(config["hidden_size"]))
    out = {"embed.weight": raw["embed_tokens.weight"], "norm_f.weight": raw["norm.weight"]}
    if "lm_head.weight" in raw and not spec.model.tie_embeddings:
        out["head.weight"] = raw["lm_head.weight"]
    mlps = {}
    for i in range(spec.model.depth):
        a, m, layer = f"blocks.{i}.slots.0", f"blocks.{i}.slots.1", f"layers.{i}"
        out[f"{a}.layer.qkv.weight"] = torch.cat([raw[f"{layer}.self_attn.{x}_proj.weight"] for x in "qkv"])
        out[f"{a}.layer.o_proj.weight"] = raw[f"{layer}.self_attn.o_proj.weight"]
        out[f"{a}.norm.weight"] = raw[f"{layer}.input_layernorm.weight"]
        out[f"{m}.norm.weight"] = raw[f"{layer}.post_attention_layernorm.weight"]
        for ours, theirs in (("w1", "gate"), ("w3", "up"), ("w2", "down")):
            out[f"{m}.layer.{ours}.weight"] = raw[f"{layer}.mlp.{theirs}_proj.weight"]
        if not rest:
            mlps[f"{m}.layer"] = SourceMLP("silu", ratio)
    return out, mlps


def describe(report: InitReport, limit: int = 6) -> str:
    fresh = ", ".join(report.fresh[:limit]) + (" ..." if len(report.fresh) > limit else "")
    return report.summary() + (f" (fresh: {fresh})" if report.fresh else "")
