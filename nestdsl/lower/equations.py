"""Human-readable equations of a memory layer, for the plan and `nestdsl compile --explain`.

The update itself is rendered by one function, `nestdsl.graph.update_equation` (docs/design.md §3.1:
S_t = β_t S_{t−1} − η_t ∇ℓ(θ_{c(t)}; k_t, v_t), θ_t = θ_{t−1}(α_t I − ε_t k_t k_tᵀ) + S_t, and
the published recurrence it reduces to); this module adds the read and the per-chunk listing.
"""

from __future__ import annotations

from nestdsl.graph.level_graph import update_equation
from nestdsl.spec import ir
from nestdsl.vocabulary import READ_STATE

__all__ = ["read_equation", "step_listing", "update_equation"]


def read_equation(mem: ir.ParametricMemory) -> str:
    linear = isinstance(mem, ir.LinearMemory)
    f = f"{'M' if linear else 'θ'}_{READ_STATE[mem.read]}"
    return f"o_t = {f} q_t" if linear else f"o_t = M({f}; q_t)"


def step_listing(mem: ir.ParametricMemory, C: int, *, conv: int, qk_norm: bool, output_gate: bool,
                 writes: str, block: int) -> list[str]:
    """Pseudo-code of what the lowered memory layer computes per chunk (for --explain)."""
    rule = mem.rule or ir.Rule()
    lines = ["# per layer call, x: (B, T, D)",
             "q, k, v = split_heads(x W_qkv)" + (f"; depthwise causal conv (width {conv})" if conv else ""),
             "q, k, v = silu(q), silu(k), silu(v)"]
    if qk_norm:
        lines.append("q, k = q/‖q‖₂, k/‖k‖₂")
    for role in ("lr", "retention", "momentum"):
        g = getattr(rule, role)
        if isinstance(g, ir.LearnedGate):
            sym = {"lr": "η", "retention": "α", "momentum": "β"}[role]
            lines.append(f"{sym}_t = {g.scale:g}·{g.learned}(x_t w_{sym} + b_{sym})   # per head")
    if writes == "stop":
        lines.append("k, v, η, α, β = stopgrad(k, v, η, α, β)   # writes: stop (reads stay differentiable)")
    if isinstance(mem, ir.LinearMemory) and C == 1:
        lines += [f"for each block of {block} tokens (exact C = 1 recurrence, blockwise):",
                  "    Y = (I − A)⁻¹ h          # UT/WY triangular solve couples the tokens (delta rule)",
                  "    o = dual-form read (masked L×L products); M ← end-of-block state"]
    else:
        lines += [f"for each chunk of C = {C} tokens:",
                  "    g_t = ∇ℓ(θ_{c(t)}; k_t, v_t) for all t in the chunk   # closed form, parallel",
                  "    S, θ: momentum/retention recurrences unrolled with segment products"]
        if rule.kind == "dgd":
            lines.append("    DGD erase on W₀: one unit-triangular solve per chunk (UT transform)")
        lines.append("    o_t = dual-form read (" + mem.read + ")")
    lines.append("    " + update_equation(mem, C))
    lines.append("    " + read_equation(mem))
    if output_gate:
        lines.append("y = (RMSNorm_head(o) ⊙ sigmoid(x W_g)) W_o")
    else:
        lines.append("y = o W_o")
    return lines
