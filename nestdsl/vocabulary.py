"""The words a spec and every stage below it share, each defined once (no torch import).

The spec's IR types its fields with these, the ops validate against them, the Triton kernel
derives its integer codes from their order, the level graph and `--explain` render them from
the tables here. A closed `Literal` rather than an `enum.Enum`: the values are the spec's own
spelling (YAML, `.nest`, JSON schema, checkpoints all carry the plain string), and the type
checker still rejects a misspelt one.

The update family they parameterise (docs/design.md §3.1), for token t in chunk c(t):

    S_t = β_t S_{t−1} − η_t ∇ℓ(θ_{c(t)}; k_t, v_t)
    θ_t = θ_{t−1}(α_t I − ε_t k_t k_tᵀ) + S_t        (ε_t = 0 for gd)
    o_t = M(θ_read; q_t)
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ERASE_MEANING",
    "ERASE_RATES",
    "KERNEL_NAMES",
    "MEMORY_KINDS",
    "PARAMETRIC_KINDS",
    "PROJECTION_READ",
    "READ_MEANING",
    "READ_MODES",
    "READ_STATE",
    "RULES",
    "EraseRate",
    "KernelName",
    "MemoryKind",
    "ReadMode",
    "RuleKind",
]

#: Which state a memory reads q_t from.
ReadMode = Literal["after", "before", "chunk"]
READ_MODES: tuple[ReadMode, ...] = get_args(ReadMode)
#: The state's subscript in an equation: θ_t, θ_{t−1}, θ_{c(t)}.
READ_STATE: dict[ReadMode, str] = {"after": "t", "before": "{t−1}", "chunk": "{c(t)}"}
READ_MEANING: dict[ReadMode, str] = {
    "after": "read after write",
    "before": "read before write",
    "chunk": "read chunk-start state",
}
#: Hope's projection memories (M_k, M_v, M_η, M_α) read the chunk-start state: k_t is generated
#: from M_k, so reading θ_t would need k_t to produce k_t (NL Eq. 90).
PROJECTION_READ: ReadMode = "chunk"

#: The inner optimizer: plain gradient descent, or Delta Gradient Descent (NL Eq. 88).
RuleKind = Literal["gd", "dgd"]
RULES: tuple[RuleKind, ...] = get_args(RuleKind)

#: DGD's erase rate ε_t in θ_{t−1}(α_t I − ε_t k_t k_tᵀ).
EraseRate = Literal["eta", "normalized", "retained"]
ERASE_RATES: tuple[EraseRate, ...] = get_args(EraseRate)
ERASE_MEANING: dict[EraseRate, str] = {
    "eta": "ε = η (NL Eq. 88)",
    "normalized": "ε = η/(1 + η‖k‖²) (NL Eq. 57)",
    "retained": "ε = αη (Gated DeltaNet)",
}

#: What a memory is: a matrix, an MLP (both parametric: written by the update family) or
#: softmax attention over a window (a KV cache, not written by gradients).
MemoryKind = Literal["linear", "mlp", "attention"]
MEMORY_KINDS: tuple[MemoryKind, ...] = get_args(MemoryKind)
PARAMETRIC_KINDS: tuple[MemoryKind, ...] = ("linear", "mlp")

#: The implementations of a parametric memory's scan, in order of preference
#: (`nestdsl.ops.kernels` registers one entry per name).
KernelName = Literal["triton", "fla", "compiled", "chunked", "reference"]
KERNEL_NAMES: tuple[KernelName, ...] = get_args(KernelName)
