"""Defaults whose meaning depends on the spec, resolved once (docs/design.md §3.1).

`resolve(spec)` returns a copy of a checked spec in which every memory field that the compiler
and the level-graph renderer read has its value: no `None` left for them to interpret. It is the
one place such a default is decided:

* `read` of a `self_modifying` layer's projections: chunk (the only mode they can have: k, v,
  η, α are generated from the chunk-start state, Eq. 90).
* `residual`: a memory that a `self_modifying` layer uses (as its main memory or its
  projections) is Hope's residual MLP x + W1 σ(W2 x) (NL paper Eq. 89); any other memory is a bare
  function (Titans, TTT without `norm`), unless the spec says otherwise.
* an MLP memory's `depth` 2, `hidden` 4 (× head dim), `activation` silu (Titans §3.1).
* `norm` False, `init` learned for an MLP (its weights cannot start at zero: no gradient would
  reach them) and zeros for a matrix.
* a `dgd` rule's erase rate `eta` (Eq. 88 as written); `None` for gd (it has no erase).

Two spec-level values are decided here too:

* a referenced outer optimizer (`optimizer: adamw`, or a path) is replaced by the optimizer the
  checker read from that file, so the resolved spec stands alone;
* a model spec with an outer optimizer but no `train:` section trains with the `train` defaults:
  they are filled in.

Inline levels (`level: {every: 16 tokens}`) need nothing here: validation already lifts them into
`levels:` (nestdsl/spec/validate.py). `nestdsl fmt --resolved` prints the result with every
default written out. The resolution is idempotent.
"""

from __future__ import annotations

from nestdsl.spec import ir
from nestdsl.vocabulary import PROJECTION_READ

__all__ = ["resolve", "MLP_DEPTH", "MLP_HIDDEN", "MLP_ACTIVATION", "DGD_ERASE"]

MLP_DEPTH = 2
MLP_HIDDEN = 4
MLP_ACTIVATION = "silu"
DGD_ERASE = "eta"


def _self_modifying(spec: ir.Spec) -> list[ir.SelfModifyingLayer]:
    return [layer for block in spec.blocks.values() for layer in block.layers
            if isinstance(layer, ir.SelfModifyingLayer)]


def _memory(mem: ir.Memory, hope: bool, projection: bool) -> ir.Memory:
    if not isinstance(mem, ir.ParametricMemory):
        return mem
    mlp = isinstance(mem, ir.MLPMemory)
    update: dict[str, object] = {
        "read": PROJECTION_READ if projection and "read" not in mem.model_fields_set else mem.read,
        "residual": hope if mem.residual is None else mem.residual,
        "norm": bool(mem.norm),
        "init": mem.init or ("learned" if mlp else "zeros"),
    }
    if isinstance(mem, ir.MLPMemory):
        update |= {"depth": mem.depth or MLP_DEPTH, "hidden": mem.hidden or MLP_HIDDEN,
                   "activation": mem.activation or MLP_ACTIVATION}
    rule = mem.rule or ir.Rule()
    if rule.kind == "dgd" and rule.erase is None:
        rule = rule.model_copy(update={"erase": DGD_ERASE})
    update["rule"] = rule
    return mem.model_copy(update=update)


def resolve(spec: ir.Spec) -> ir.Spec:
    """A copy of `spec` with every memory default filled in, a referenced optimizer inlined and
    the `train` defaults of a trainable spec filled in (see the module docstring)."""
    layers = _self_modifying(spec)
    hope = {name for layer in layers for name in (layer.memory, layer.projections)}
    projections = {layer.projections for layer in layers}
    memories = {name: _memory(m, name in hope, name in projections) for name, m in spec.memories.items()}
    update: dict[str, object] = {"memories": memories}
    if isinstance(spec.optimizer, str) and spec.outer_optimizer is not None:
        update["optimizer"] = spec.outer_optimizer
    if spec.train is None and spec.model is not None and spec.outer_optimizer is not None:
        update["train"] = ir.Train()   # what the runtime trains with (`spec.train or Train()`)
    out = spec.model_copy(update=update)
    # private attributes (source file, resolved optimizer and its file) are not copied by model_copy
    out._source_file = spec._source_file
    out._resolved_optimizer = spec._resolved_optimizer
    out._optimizer_file = spec._optimizer_file
    return out
