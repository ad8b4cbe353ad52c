"""Human-readable update equations of a memory, for the plan and `nestdsl compile --explain`.

design.md §3.1: one family θ_t = α_t P_t(θ_{t−1}) + S_t, S_t = β_t S_{t−1} − η_t ∇ℓ(θ_{c(t)}; k_t, v_t).
What the family reduces to for a given (kind, objective, rule, gates, C) is printed in one line so
nobody has to derive it (e.g. linear + dot + dgd is the gated delta rule).
"""

from __future__ import annotations

from nestdsl.spec import ir


def _anchor(C: int, sym: str) -> str:
    """θ_{c(t)}: the state the gradient is taken at (θ_{t−1} when C = 1)."""
    return f"{sym}_{{t−1}}" if C == 1 else f"{sym}_{{c(t)}}"


def instance_name(mem: ir.Memory, C: int) -> str | None:
    """The well-known model this memory reduces to, if any."""
    rule = mem.rule or ir.Rule()
    ret, mom = rule.retention is not None, rule.momentum is not None
    obj = mem.objective
    if mem.kind == "linear":
        if obj == "dot" and rule.kind == "gd" and not mom:
            return "gated linear attention (Mamba2-like)" if ret else "linear attention"
        if obj == "dot" and rule.kind == "dgd":
            return "gated delta rule" if ret else "delta rule (via DGD)"
        if obj == "l2" and rule.kind == "gd" and not mom:
            if C > 1:
                return "TTT-Linear (mini-batch GD)"
            return "gated delta rule (Gated DeltaNet)" if ret else "delta rule (DeltaNet)"
        if obj == "l2" and rule.kind == "dgd":
            return "DGD with L2: erase term twice (Hope Eq. 88)"
    if mem.kind == "mlp":
        if mom or ret:
            return "Titans LMM (surprise momentum + forgetting)"
        return "TTT-MLP (mini-batch GD)" if C > 1 else "online GD on an MLP memory"
    return None


def update_equation(mem: ir.Memory, C: int) -> str:
    """One line: the state update of this memory, specialised to its objective/rule/gates."""
    if mem.kind == "attention":
        w = f", window {mem.window}" if mem.window else ""
        return f"o_t = softmax(q_t K_{{≤t}}ᵀ/√d) V_{{≤t}}{w} (non-parametric: KV cache)"
    rule = mem.rule or ir.Rule()
    eta = "η_t" if isinstance(rule.lr, ir.LearnedGate) else f"{float(rule.lr):g}"
    alpha = "" if rule.retention is None else ("α_t·" if isinstance(rule.retention, ir.LearnedGate)
                                               else f"{float(rule.retention):g}·")
    beta = None if rule.momentum is None else ("β_t" if isinstance(rule.momentum, ir.LearnedGate)
                                               else f"{float(rule.momentum):g}")
    if mem.kind == "linear":
        a = _anchor(C, "M")
        if mem.objective == "dot":
            grad = "−v_t k_tᵀ"
            step = f"+ {eta}·v_t k_tᵀ"
        elif mem.objective == "l2":
            grad = f"({a} k_t − v_t) k_tᵀ"
            step = f"− {eta}·({a} k_t − v_t) k_tᵀ"
        else:
            grad = f"∇ℓ_{mem.objective}({a} k_t, v_t) k_tᵀ"
            step = f"− {eta}·{grad}"
        prev = "M_{t−1}(I − η'_t k_t k_tᵀ)" if rule.kind == "dgd" else "M_{t−1}"
        if beta is None:
            eq = f"M_t = {alpha}{prev} {step}"
        else:
            eq = f"S_t = {beta}·S_{{t−1}} − {eta}·{grad};  M_t = {alpha}{prev} + S_t"
    else:
        a = _anchor(C, "θ")
        obj = {"l2": f"½‖M({a}; k_t) − v_t‖²", "dot": f"−⟨M({a}; k_t), v_t⟩"}.get(
            str(mem.objective), f"ℓ_{mem.objective}(M({a}; k_t), v_t)")
        prev = "P(θ_{t−1}) [W₀ ↦ W₀(I − η'_t k_t k_tᵀ)]" if rule.kind == "dgd" else "θ_{t−1}"
        if beta is None:
            eq = f"θ_t = {alpha}{prev} − {eta}·∇_θ {obj}"
        else:
            eq = f"S_t = {beta}·S_{{t−1}} − {eta}·∇_θ {obj};  θ_t = {alpha}{prev} + S_t"
    name = instance_name(mem, C)
    return eq + (f"   [{name}]" if name else "")


def read_equation(mem: ir.Memory) -> str:
    sym = "M" if mem.kind == "linear" else "θ"
    f = {"after": f"{sym}_t", "before": f"{sym}_{{t−1}}", "chunk": f"{sym}_{{c(t)}}"}[mem.read]
    return f"o_t = {f} q_t" if mem.kind == "linear" else f"o_t = M({f}; q_t)"


def step_listing(mem: ir.Memory, C: int, *, conv: int, qk_norm: bool, output_gate: bool,
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
    if mem.kind == "linear" and C == 1:
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
