"""``memory_scan``: the one functional entry point for every parametric associative memory.

Semantics (docs/design.md §3.1), for token t = 1..T, chunk size C, c(t) = C⌊(t−1)/C⌋:

    g_t = ∇_θ ℓ(θ_{c(t)}; k_t, v_t)
    S_t = β_t S_{t−1} − η_t g_t                  (no momentum: S_t = −η_t g_t)
    θ_t = θ_{t−1}(α_t I − ε_t k_t k_tᵀ) + S_t    on W_0, the key-side weight; α_t θ_{t−1} + S_t
                                                  on the others. ε_t = 0 for gd; for dgd the
                                                  erase rate: η_t ("eta", NL Eq. 88),
                                                  η_t/(1 + η_t‖k_t‖²) ("normalized", Eq. 57),
                                                  α_t η_t ("retained", Gated DeltaNet)
    o_t = M(θ_t; q_t)  [read="after"] | M(θ_{t−1}; q_t) [before] | M(θ_{c(t)}; q_t) [chunk]

What DGD does per objective (documented for users, docs/design.md §3.1):
  * dot, ε = αη: θ_t = α_t θ_{t−1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ — Gated DeltaNet;
  * l2, ε = η:  θ_t = θ_{t−1}(α_t I − η_t k_t k_tᵀ) − η_t (θ_{c(t)} k_t − v_t) k_tᵀ — the erase
    term appears twice, exactly as Hope's Eq. 88 is written.

M may carry an inner norm and residual, M(x) = x + LN(MLP(x)) (``MLPMemory(norm=True)``, also
at depth 1 for TTT-Linear); its gain and bias are outer parameters passed as ``norm``.

Gradients flow into q, k, v, the gate tensors and the initial state through every write; inner
gradients are closed-form, so the fast path compiles with inductor (docs/design.md §3.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast, overload

import torch
from torch import Tensor

from nestdsl.errors import ArgumentError, ShapeError
from nestdsl.vocabulary import ERASE_RATES, READ_MODES, RULES, EraseRate, ReadMode, RuleKind

from .kernels import MemoryCall, ScanInputs, choose, compiled_step
from .mlp import MLPMemory, NormParams
from .objectives import Objective, get_objective
from .state import MemoryState

__all__ = ["memory_scan", "compiled_step"]


@overload
def _gate(x: Tensor | float, name: str, B: int, H: int, T: int, dtype: torch.dtype,
          device: torch.device) -> Tensor: ...
@overload
def _gate(x: Tensor | float | None, name: str, B: int, H: int, T: int, dtype: torch.dtype,
          device: torch.device) -> Tensor | None: ...
def _gate(x: Tensor | float | None, name: str, B: int, H: int, T: int, dtype: torch.dtype,
          device: torch.device) -> Tensor | None:
    """η, α or β as a (B, H, T) tensor (a float is broadcast; a tensor must broadcast)."""
    if x is None:
        return None
    if isinstance(x, Tensor):
        try:
            return x.to(dtype).expand(B, H, T)
        except RuntimeError:
            raise ShapeError(f"{name} must be a float or a tensor broadcastable to "
                             f"(B, H, T) = {(B, H, T)}; got shape {tuple(x.shape)}") from None
    return torch.full((B, H, T), float(x), dtype=dtype, device=device)


def _expand_weights(ws: tuple[Tensor, ...], shapes: list[tuple[int, int]], B: int, H: int,
                    dtype: torch.dtype, what: str) -> tuple[Tensor, ...]:
    if len(ws) != len(shapes):
        raise ShapeError(f"{what}: expected {len(shapes)} tensors, got {len(ws)}")
    out = []
    for i, (w, shp) in enumerate(zip(ws, shapes, strict=True)):
        if tuple(w.shape[-2:]) != shp or w.dim() not in (3, 4) or w.shape[-3] != H or (
                w.dim() == 4 and w.shape[0] != B):
            raise ShapeError(f"{what}[{i}]: expected shape (H, out, in) = {(H, *shp)} or "
                             f"(B, H, out, in) = {(B, H, *shp)}; got {tuple(w.shape)}")
        # materialised, not a stride-0 view: every later chunk's state is a dense (B, H, …)
        # tensor, and a compiled chunk step would recompile for the first chunk's layout
        out.append(w.to(dtype).expand(B, H, *shp).contiguous())
    return tuple(out)


def _match_later_states(weights: tuple[Tensor, ...], moms: tuple[Tensor, ...] | None,
                        inputs: tuple[Tensor | None, ...]
                        ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None]:
    """Initial states that require grad exactly when the states after a chunk will.

    Every later state is a function of q, k, v and the gates; if those require grad so do the
    states. Initial zeros (or a detached state) that do not would make the compiled chunk step
    recompile on its second call for a mere requires_grad mismatch.
    """
    needs = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    if not needs:
        return weights, moms

    def fix(ts: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(t if t.requires_grad else t.detach().requires_grad_() for t in ts)

    return fix(weights), None if moms is None else fix(moms)


def _layer_inputs(spec: MLPMemory) -> Callable:
    """Each weight's input a_i of an MLP memory, written out plainly for the oracle."""
    act = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
           "relu": torch.relu, "tanh": torch.tanh}[spec.activation]

    def inputs(ws, x):
        out = [x]
        for w in ws[:-1]:
            out.append(act(out[-1] @ w.mT))
        return out

    return inputs


def memory_scan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    memory: str | MLPMemory = "linear",
    objective: str | Objective = "l2",
    rule: RuleKind = "gd",
    lr: Tensor | float = 1.0,
    retention: Tensor | float | None = None,
    momentum: Tensor | float | None = None,
    chunk_size: int = 16,
    read: ReadMode = "after",
    state: MemoryState | None = None,
    kernel: str = "auto",
    compile: bool = False,
    erase: EraseRate = "eta",
    norm: NormParams = None,
    checkpoint_every: int | None = None,
    normalized_lr: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Run an associative memory over a sequence (see the module docstring for the equations).

    Args:
        q, k: (B, H, T, Dk) queries and keys; v: (B, H, T, Dv) values (targets).
        memory: ``"linear"`` (M ∈ R^{Dv×Dk}, M(k) = M k) or an ``MLPMemory``.
        objective: a registered objective name (``"dot"``, ``"l2"``, ``"huber"``, …) or instance.
        rule: ``"gd"`` or ``"dgd"``.
        lr: η, a float or (B, H, T). retention: α, float / (B, H, T) / None (α = 1).
        momentum: β, float / (B, H, T) / None (no momentum state).
        chunk_size: C, *semantic*: gradients are taken at the chunk-start state.
        read: ``"after"`` (θ_t), ``"before"`` (θ_{t−1}) or ``"chunk"`` (θ_{c(t)}).
        state: the initial ``MemoryState``; None gives zeros for a linear memory (an MLP memory
            needs its initial weights, (H, out, in) or (B, H, out, in)). Momentum buffers
            default to zeros.
        kernel: the implementation (``ops.kernels.KERNELS``): ``"auto"`` (the first automatic
            one that accepts — ``"compiled"`` with ``compile=True``, else ``"chunked"``; on CUDA
            ``"triton"`` / ``"fla"`` where they apply), ``"reference"`` (token loop, the
            oracle), ``"chunked"``, ``"compiled"``, ``"triton"`` (depth-2 MLP memories; on CPU
            under ``TRITON_INTERPRET=1``), ``"fla"`` (a linear memory equal to one of
            flash-linear-attention's kernels). A kernel that cannot run the call raises
            ``KernelRefused`` (a ValueError) naming why.
        compile: the compile switch: lets ``"auto"`` choose the ``torch.compile``'d chunk step.
        erase: DGD's erase rate ε: ``"eta"`` | ``"normalized"`` | ``"retained"`` (gd: unused).
        norm: (gain, bias), each (H, Dv), of an ``MLPMemory(norm=True)``'s inner LayerNorm
            (None: gain 1, bias 0).
        checkpoint_every: G — fast path under autograd: save the state only every G chunks
            (blocks) and recompute inside a group in backward; same values and gradients, far
            fewer saved bytes (None: save every chunk's intermediates).
        normalized_lr: MLP memories only — the per-layer normalised step (NL Eq. 57 applied to
            each weight with its own input): W_i steps with η_t / (ε + ‖a_{i,t}‖²).
    Returns:
        (o (B, H, T, Dv) in q's dtype, final ``MemoryState`` in float32 — or float64 for
        float64 inputs). Passing the state back continues the sequence exactly, provided the
        split point is a multiple of ``chunk_size`` (checked: ``ValueError`` otherwise).
    """
    _check_arguments(q, k, v, memory=memory, rule=rule, erase=erase, read=read,
                     chunk_size=chunk_size, norm=norm, state=state, momentum=momentum,
                     normalized_lr=normalized_lr, checkpoint_every=checkpoint_every)
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    obj = get_objective(objective)

    cd = torch.promote_types(q.dtype, torch.float32)   # states are computed in ≥ float32
    dev = q.device
    lr_t = _gate(lr, "lr", B, H, T, cd, dev)
    ret_t = _gate(retention, "retention", B, H, T, cd, dev)
    mom_t = _gate(momentum, "momentum", B, H, T, cd, dev)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)

    weights, moms = _initial_state(memory, state, mom_t is not None, B, H, Dk, Dv, cd, dev)

    call = MemoryCall(
        memory=memory, objective=obj, rule=rule, erase=erase, read=read, chunk_size=chunk_size,
        retention=ret_t is not None, momentum=mom_t is not None, d_key=Dk, d_value=Dv,
        device=dev, dtype=q.dtype, compile=compile, training=torch.is_grad_enabled(), T=T,
        normalized_lr=normalized_lr)
    chosen = choose(call, kernel)
    if chosen.name == "compiled":
        weights, moms = _match_later_states(weights, moms, (qc, kc, vc, lr_t, ret_t, mom_t))
    inputs = ScanInputs(
        q=q, k=k, v=v, qc=qc, kc=kc, vc=vc, lr=lr_t, retention=ret_t, momentum=mom_t,
        state=MemoryState(weights, moms), memory=memory, objective=obj, rule=rule, read=read,
        chunk_size=chunk_size, erase=erase,
        norm=None if norm is None else (norm[0].to(cd), norm[1].to(cd)),
        checkpoint_every=checkpoint_every, normalized_lr=normalized_lr,
        layer_inputs=_layer_inputs(cast(MLPMemory, memory)) if normalized_lr else None)
    o, new_state = chosen.scan(x=inputs)

    offset = T % chunk_size if chunk_size > 1 else 0
    return o.to(q.dtype), MemoryState(new_state.weights, new_state.momentum, offset)


def _check_arguments(q: Tensor, k: Tensor, v: Tensor, *, memory: str | MLPMemory, rule: str,
                     erase: str, read: str, chunk_size: int, norm: NormParams,
                     state: MemoryState | None, momentum: Tensor | float | None,
                     normalized_lr: bool, checkpoint_every: int | None) -> None:
    """`memory_scan`'s argument errors, each naming the argument: a `ShapeError` for tensors
    that do not fit, an `ArgumentError` for other values (both are ValueErrors)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ShapeError("q, k, v must have shape (B, H, T, D); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    if q.shape != k.shape or v.shape[:3] != (B, H, T):
        raise ShapeError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)} must be equal "
                         f"and v {tuple(v.shape)} must share (B, H, T)")
    if rule not in RULES:
        raise ArgumentError(f"rule must be one of {RULES}; got {rule!r}")
    if erase not in ERASE_RATES:
        raise ArgumentError(f"erase must be one of {ERASE_RATES}; got {erase!r}")
    if read not in READ_MODES:
        raise ArgumentError(f"read must be one of {READ_MODES}; got {read!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ArgumentError(f"chunk_size must be a positive int; got {chunk_size!r}")
    if not (memory == "linear" or isinstance(memory, MLPMemory)):
        raise ArgumentError(f"memory must be 'linear' or an MLPMemory; got {memory!r}")
    if norm is not None and not (isinstance(memory, MLPMemory) and memory.norm):
        raise ArgumentError("norm parameters given for a memory without an inner norm")
    if isinstance(memory, MLPMemory) and memory.residual and Dk != Dv:
        raise ShapeError(f"a residual MLP memory needs Dk == Dv; got Dk={Dk}, Dv={Dv}")
    if state is not None and state.offset != 0 and chunk_size > 1:
        raise ArgumentError(
            f"cannot continue from this state: the previous call ended {state.offset} tokens "
            f"into a chunk of size {chunk_size}. Split streams at multiples of chunk_size "
            "(a model's forward_incremental continues anywhere, e.g. token by token).")
    if state is not None and momentum is None and state.momentum is not None:
        raise ArgumentError("state carries momentum buffers but momentum=None")
    if normalized_lr and not isinstance(memory, MLPMemory):
        raise ArgumentError("normalized_lr applies to MLP memories (a linear memory's normalised "
                            "step is the dgd erase 'normalized' or unit-norm keys)")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ArgumentError(f"checkpoint_every must be a positive int or None; got {checkpoint_every!r}")


def _initial_state(memory: str | MLPMemory, state: MemoryState | None, has_momentum: bool,
                   B: int, H: int, Dk: int, Dv: int, cd: torch.dtype,
                   dev: torch.device) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None]:
    """θ_0 (zeros for a linear memory without a state) and the momentum buffers (zeros
    without them), broadcast to (B, H, …) in the compute dtype."""
    if memory == "linear":
        shapes = [(Dv, Dk)]
        if state is None:
            weights: tuple[Tensor, ...] = (torch.zeros(B, H, Dv, Dk, dtype=cd, device=dev),)
        else:
            weights = _expand_weights(tuple(state.weights), shapes, B, H, cd, "state.weights")
    else:
        shapes = cast(MLPMemory, memory).weight_shapes(Dk, Dv)   # validated above
        if state is None:
            raise ArgumentError("an MLP memory needs its initial weights: "
                                "state=MemoryState(weights=(W_0, …), momentum=None)")
        weights = _expand_weights(tuple(state.weights), shapes, B, H, cd, "state.weights")
    moms = None
    if has_momentum:
        if state is None or state.momentum is None:
            moms = tuple(torch.zeros_like(w) for w in weights)
        else:
            moms = _expand_weights(tuple(state.momentum), shapes, B, H, cd, "state.momentum")
    return weights, moms
