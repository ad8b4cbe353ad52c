"""`nestdsl probe`: the dynamics of every memory layer, at initialisation or after a short run.

A memory layer that will learn to retrieve is *responsive* before training: its output at a
question moves with a distant fact (the needle) a little more than with distant filler (the
haystack), and neither swamps it. Two failure modes show up in seconds, long before a loss curve
would tell:

* **dead** — the output does not move with anything distant (the memory never writes, or its
  branch is too small to matter): it cannot retrieve, however long it trains;
* **chaotic** — the output moves by ~its own size with *any* distant change: it is an
  unstructured function of everything before it, which the next layers learn to ignore
  (Hope's preset at gain 1: 1.05 with the needle, 1.20 with the haystack).

The probe feeds held-out S-NIAH-1 sequences (seq 128, byte tokens) three times — as drawn, with
the pass key's 7 digits changed, with 7 haystack letters changed next to the needle sentence —
and measures, per layer, the relative change ‖y − y'‖ / ‖y‖ of its output at the position that
predicts the first answer digit. *Isolated*: the layer gets its clean input with only the changed
tokens' positions taken from the perturbed run, so its output at the question moves only through
what its own memory carried (end to end, a deeper layer also inherits every change the layers
below it spread along the sequence: titans-lmm's layer 1 moves 0.84 end to end, 0.29 isolated). From the inner-loop telemetry (lower/telemetry.py) of the drawn
batch it adds the memory's branch share of the read, the relative write size per chunk and the
state growth along the sequence.

Verdict thresholds (`DEAD_BELOW`, `CHAOTIC_FROM`), calibrated at initialisation on the presets
that learn recall (needle / haystack, layers 0 and 1: titans-lmm 0.22 / 0.17 and 0.29 / 0.23,
deltanet 0.26 / 0.19 and 0.29 / 0.20), on a dead memory (Hope with M_mem's lr at 1e-6:
0.0003 / 0.0002) and on Hope's preset at gain 1 (1.05 / 1.20 and 1.14 / 1.17): chaotic from 0.5
(the responsive presets' largest ×1.7, Hope's smallest ÷2), dead under 0.01 (30× the dead
memory). docs/probe.md has the measurements.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nestdsl.spec import ir

__all__ = ["probe", "ProbeReport", "LayerProbe", "verdict", "perturbed_niah", "DEAD_BELOW",
           "CHAOTIC_FROM", "MEMORY_LAYERS", "SEQ_LEN"]

DEAD_BELOW = 0.01
CHAOTIC_FROM = 0.5
#: layer types whose output is (or contains) a memory read
MEMORY_LAYERS = ("memory", "self_modifying", "mal", "mag")
SEQ_LEN = 128
_TELEMETRY = ("branch_share", "write_size", "state_growth", "state_norm", "loss_before",
              "loss_after")


def verdict(needle: float, haystack: float) -> str:
    """dead / responsive / chaotic from a layer's needle and haystack sensitivity."""
    if not (needle == needle and haystack == haystack):   # NaN: the forward is not finite
        return "chaotic"
    if max(needle, haystack) >= CHAOTIC_FROM:
        return "chaotic"
    if needle < DEAD_BELOW:
        return "dead"
    return "responsive"


@dataclass
class LayerProbe:
    """One memory layer's dynamics (telemetry fields are None where the memory has none)."""

    layer: str                       # "block 0.0 self_modifying"
    needle: float                    # ‖y − y_needle‖ / ‖y‖ at the question (isolated)
    haystack: float                  # ‖y − y_haystack‖ / ‖y‖ at the question (isolated)
    verdict: str
    needle_end_to_end: float | None = None     # the same through the whole model below it
    haystack_end_to_end: float | None = None
    memory: str | None = None        # the telemetry name of its (main) memory
    branch_share: float | None = None
    write_size: float | None = None
    state_growth: float | None = None
    state_norm: float | None = None
    loss_before: float | None = None
    loss_after: float | None = None


@dataclass
class ProbeReport:
    spec: str
    steps: int
    sequences: int
    layers: list[LayerProbe] = field(default_factory=list)
    answer_tv: dict[str, float] = field(default_factory=dict)  # the answer distribution's moves

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flagged(self) -> list[LayerProbe]:
        """Layers that are not responsive."""
        return [lp for lp in self.layers if lp.verdict != "responsive"]


def perturbed_niah(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(as drawn, needle changed, haystack changed) S-NIAH-1 input batches, (n, SEQ_LEN) each.

    The needle copy changes the pass key's 7 digits (each by 1..9 mod 10); the haystack copy
    shifts 7 letters just before the needle sentence (after it when the needle opens the text).
    """
    import numpy as np

    from nestdsl.runtime.tasks.niah import NIAHTask

    task = NIAHTask(seq_len=SEQ_LEN, batch=1, seed=seed)
    rng = np.random.default_rng(seed)
    rows: list[list[list[int]]] = [[], [], []]
    for _ in range(n):
        text, value = task.sample_text(rng)
        m = re.search(r"The pass key is (\d{7})\. ", text)
        assert m is not None, "S-NIAH-1 sequences hold a 7-digit pass key"
        other = "".join(str((int(c) + 1 + int(rng.integers(9))) % 10) for c in value)
        needle = text[:m.start(1)] + other + text[m.end(1):]
        at = m.start(0) - 10 if m.start(0) >= 10 else m.end(0) + 2
        shifted = "".join(chr(ord("a") + (ord(c) + 3) % 26) for c in text[at:at + 7])
        hay = text[:at] + shifted + text[at + 7:]
        for out, t in zip(rows, (text, needle, hay), strict=True):
            out.append(list(t.encode("ascii")))
    drawn, needle_b, hay_b = (torch.tensor(r)[:, :-1] for r in rows)  # the last byte is a target
    return drawn, needle_b, hay_b


def _rel(a: Tensor, b: Tensor) -> float:
    return float(((a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)).mean())


def probe(spec: ir.Spec, *, spec_text: str | None = None, steps: int = 0, sequences: int = 32,
          seed: int = 123, source: str = "<spec>",
          progress: Callable[[str], None] | None = None) -> ProbeReport:
    """Probe every memory layer of `spec`'s model: at initialisation (seed `spec.train.seed`), or
    after `steps` training steps of `nestdsl train` on the spec's own data."""
    import nestdsl
    from nestdsl.lower import telemetry
    from nestdsl.runtime import checkpoint as ck
    from nestdsl.runtime.train import train

    assert spec.model is not None, "probe needs a model spec"
    if spec.model.vocab < 128:
        raise ValueError(f"the probe feeds byte text (S-NIAH-1): model.vocab {spec.model.vocab} "
                         "< 128; probe a spec with a byte vocabulary (256)")
    text = spec_text if spec_text is not None else spec.model_dump_json()
    train_cfg = spec.train or ir.Train()  # a model spec without `train:` probes with the defaults
    torch.manual_seed(train_cfg.seed)
    model = nestdsl.compile(spec, compile=False).model
    if steps:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            quiet = spec.model_copy(update={"train": train_cfg.model_copy(update={
                "ckpt_every": steps, "log_every": steps, "compile": False})})
            if progress:
                progress(f"training {steps} steps")
            train(quiet, spec_text=text, run_dir=run, steps=steps)
            from nestdsl.spec.identity import identity

            ck.load_checkpoint(run, model=model, identity=identity(spec))
    model.eval()
    drawn, needle, hay = perturbed_niah(sequences, seed=seed)
    at = drawn.shape[1] - 7          # the input position whose target is the first answer digit
    slots = {f"block {b}.{s} {slot.type}": (f"blocks.{b}.{s}", slot)
             for b, blk in enumerate(model.blocks) for s, slot in enumerate(blk.slots)
             if slot.type in MEMORY_LAYERS}
    inputs: dict[str, list[Tensor]] = {name: [] for name in slots}
    outputs: dict[str, list[Tensor]] = {name: [] for name in slots}

    def keep_input(name: str) -> Callable[..., None]:
        def hook(_mod: Any, args: Any) -> None:
            inputs[name].append(args[0].detach())
        return hook

    def keep_output(name: str) -> Callable[..., None]:
        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            y = out[0] if isinstance(out, tuple) else out
            outputs[name].append(y[:, at].detach().float())
        return hook

    hooks = [h for name, (_, slot) in slots.items()
             for h in (slot.register_forward_pre_hook(keep_input(name)),
                       slot.layer.register_forward_hook(keep_output(name)))]
    rec: dict[str, dict[str, Tensor]] = {}
    try:
        with torch.no_grad():
            with telemetry.recording() as rec:
                probs = [model(drawn)[:, at].float().softmax(-1)]
            probs += [model(x)[:, at].float().softmax(-1) for x in (needle, hay)]
            # Isolated: the layer's clean input with only the changed tokens' positions taken
            # from the perturbed run, so its output at the question moves only through what its
            # memory carried (deeper layers would otherwise inherit the layers below).
            for name, (_, slot) in slots.items():
                clean = inputs[name][0]
                for perturbed, tokens in zip(inputs[name][1:3], (needle, hay), strict=True):
                    changed = (tokens != drawn).unsqueeze(-1)
                    slot(torch.where(changed, perturbed, clean), None)
    finally:
        for h in hooks:
            h.remove()

    report = ProbeReport(spec=source, steps=steps, sequences=sequences)
    for name, (prefix, _) in slots.items():
        ys = outputs[name]        # drawn, needle, haystack (end to end), needle, haystack (isolated)
        n_sens, h_sens = _rel(ys[0], ys[3]), _rel(ys[0], ys[4])
        lp = LayerProbe(layer=name, needle=n_sens, haystack=h_sens, verdict=verdict(n_sens, h_sens),
                        needle_end_to_end=_rel(ys[0], ys[1]), haystack_end_to_end=_rel(ys[0], ys[2]))
        # the layer's main memory: M_mem for Hope's layer, else its one memory
        mems = [k for k in rec if k.startswith(prefix + " ")]
        main = next((k for k in mems if k.endswith(" M_mem")), mems[0] if mems else None)
        if main is not None:
            lp.memory = main
            for key in _TELEMETRY:
                if key in rec[main]:
                    setattr(lp, key, float(rec[main][key]))
        report.layers.append(lp)
    report.answer_tv = {k: float(0.5 * (probs[0] - p).abs().sum(-1).mean())
                        for k, p in (("needle", probs[1]), ("haystack", probs[2]))}
    return report
