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
from typing import Any

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


def _source_mlps(spec: ir.Spec) -> dict[str, ir.MLPLayer]:
    """The checkpoint spec's MLP layers by module path (`blocks.{i}.slots.{j}.layer`)."""
    assert spec.model is not None
    out = {}
    for i in range(spec.model.depth):
        block = spec.blocks[spec.model.pattern[i % len(spec.model.pattern)]]
        for j, layer in enumerate(block.layers):
            if isinstance(layer, ir.MLPLayer):
                out[f"blocks.{i}.slots.{j}.layer"] = layer
    return out


def _stage_of(spec: ir.Spec, path: str, stage: int) -> ir.CMSStage:
    assert spec.model is not None
    i, j = (int(x) for x in re.findall(r"\d+", path)[:2])
    layer = spec.blocks[spec.model.pattern[i % len(spec.model.pattern)]].layers[j]
    assert isinstance(layer, ir.CMSLayer)
    return spec.cms[layer.cms].stages[stage]


def _stacked_weight(name: str, spec: ir.Spec, source: ir.Spec, tensors: dict[str, torch.Tensor],
                    shape: torch.Size, stages: str) -> torch.Tensor | None:
    """The initial value of CMS stage weight `name`, from the pre-trained MLP at its place."""
    m = _CMS_WEIGHT.match(name)
    if m is None:
        return None
    path, stage, which = m.group(1), int(m.group(2)), int(m.group(3))
    mlp = _source_mlps(source).get(path)
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
    folder = checkpoint_folder(path)
    source = from_checkpoint(folder).spec
    tensors = {k: v for k, v in ck.load_checkpoint(folder).model_state.items()}
    report = InitReport(str(folder))
    state = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    taken: set[str] = set()
    for name, value in state.items():
        stacked = _stacked_weight(name, spec, source, tensors, value.shape, init.stages)
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


def describe(report: InitReport, limit: int = 6) -> Any:
    fresh = ", ".join(report.fresh[:limit]) + (" ..." if len(report.fresh) > limit else "")
    return report.summary() + (f" (fresh: {fresh})" if report.fresh else "")
