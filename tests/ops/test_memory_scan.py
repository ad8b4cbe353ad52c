"""memory_scan: chunked fast forms vs the token-by-token oracle (outputs, states, gradients)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from nestdsl.ops import MemoryState, MLPMemory, memory_scan
from nestdsl.ops.objectives import soft_clipped_l2

B, H, T, D = 2, 2, 37, 6
ATOL = RTOL = 1e-5

MEMORIES = {
    "linear": "linear",
    "mlp2": MLPMemory(depth=2, hidden=8, activation="silu"),
    "mlp3res": MLPMemory(depth=3, hidden=8, activation="gelu", residual=True),
    "mlp2res_tanh": MLPMemory(depth=2, hidden=5, activation="tanh", residual=True),
    # x + LN(MLP(x)) (titans-pytorch / TTT-MLP) and x + LN(W x) (TTT-Linear)
    "mlp2norm": MLPMemory(depth=2, hidden=8, activation="gelu", residual=True, norm=True),
    "linnorm": MLPMemory(depth=1, residual=True, norm=True),
}
OBJECTIVES = {"dot": "dot", "l2": "l2", "huber": "huber", "l2clip": soft_clipped_l2(0.5)}


def make_case(mem_name: str, gates: str, use_mom: bool, use_ret: bool, seed: int = 0,
              dtype: torch.dtype = torch.float32):
    """Leaf inputs for one configuration (all requiring grad) and the memory_scan kwargs."""
    g = torch.Generator().manual_seed(seed)
    mem = MEMORIES[mem_name]
    q = torch.randn(B, H, T, D, generator=g, dtype=dtype)
    # L2-normalised keys, as in every preset (keeps the delta rule contractive).
    k = torch.nn.functional.normalize(torch.randn(B, H, T, D, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(B, H, T, D, generator=g, dtype=dtype)
    scale = 1.0 if mem == "linear" else 0.2     # MLP inner steps must stay small to not diverge
    leaves = {"q": q, "k": k, "v": v}
    if gates == "token":
        leaves["lr"] = scale * (0.1 + 0.5 * torch.rand(B, H, T, generator=g, dtype=dtype))
        if use_ret:
            leaves["retention"] = 0.8 + 0.2 * torch.rand(B, H, T, generator=g, dtype=dtype)
        if use_mom:
            leaves["momentum"] = 0.3 + 0.5 * torch.rand(B, H, T, generator=g, dtype=dtype)
    kw = {"memory": mem}
    if gates == "const":
        kw["lr"] = 0.4 * scale
        kw["retention"] = 0.9 if use_ret else None
        kw["momentum"] = 0.6 if use_mom else None
    if mem == "linear":
        leaves["M0"] = 0.3 * torch.randn(B, H, D, D, generator=g, dtype=dtype)
        ws = ("M0",)
    else:
        for i, w in enumerate(mem.init_weights(H, D, D, generator=g, dtype=dtype)):
            leaves[f"W{i}"] = w                                # per head: (H, out, in)
        ws = tuple(f"W{i}" for i in range(mem.depth))
        if mem.norm:   # the inner norm's outer-learned gain and bias, per head
            leaves["gain"] = 1 + 0.3 * torch.randn(H, D, generator=g, dtype=dtype)
            leaves["bias"] = 0.3 * torch.randn(H, D, generator=g, dtype=dtype)
    if use_mom:
        for name in ws:
            shape = leaves[name].shape
            leaves["S_" + name] = 0.1 * torch.randn(shape, generator=g, dtype=dtype)
    for t in leaves.values():
        t.requires_grad_(True)
    return leaves, kw, ws


def run(leaves, kw, ws, impl, **over):
    args = dict(kw, **over)
    for name in ("lr", "retention", "momentum"):
        if name in leaves:
            args[name] = leaves[name]
    if "gain" in leaves:
        args["norm"] = (leaves["gain"], leaves["bias"])
    moms = tuple(leaves["S_" + n] for n in ws) if "S_" + ws[0] in leaves else None
    state = MemoryState(tuple(leaves[n] for n in ws), moms)
    return memory_scan(leaves["q"], leaves["k"], leaves["v"], state=state, kernel=impl, **args)


def outputs_and_grads(leaves, kw, ws, impl, **over):
    o, st = run(leaves, kw, ws, impl, **over)
    g = torch.Generator().manual_seed(123)
    outs = [o, *st.weights] + (list(st.momentum) if st.momentum is not None else [])
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in outs)
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return outs, dict(zip(names, grads, strict=True))


def check(mem_name, objective, rule, C, read, use_mom, use_ret, gates, erase="eta"):
    # The inner LayerNorm's backward divides by σ(z): fp32 rounding grows past 1e-5 relative on
    # some cases, while float64 agrees to 1e-13 — compare those in float64.
    norm = isinstance(MEMORIES[mem_name], MLPMemory) and MEMORIES[mem_name].norm
    leaves, kw, ws = make_case(mem_name, gates, use_mom, use_ret,
                               dtype=torch.float64 if norm else torch.float32)
    kw.update(objective=OBJECTIVES[objective], rule=rule, chunk_size=C, read=read, erase=erase)
    ref_out, ref_g = outputs_and_grads(leaves, kw, ws, "reference")
    fast_out, fast_g = outputs_and_grads(leaves, kw, ws, "chunked")
    assert len(ref_out) == len(fast_out)
    for i, (a, b) in enumerate(zip(ref_out, fast_out, strict=True)):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=RTOL, msg=lambda m, i=i: f"out {i}: {m}")
    for n in leaves:
        a, b = ref_g[n], fast_g[n]
        assert (a is None) == (b is None), n
        if a is not None:
            # gradients are sums over T tokens: scale the absolute tolerance by their size
            tol = ATOL * max(1.0, a.abs().max().item())
            torch.testing.assert_close(b, a, atol=tol, rtol=RTOL, msg=lambda m, n=n: f"d{n}: {m}")


AXES = {
    "mem": list(MEMORIES),
    "objective": list(OBJECTIVES),
    "rule": ["gd", "dgd"],
    "C": [1, 3, 16],
    "read": ["after", "before", "chunk"],
    "mom": [False, True],
    "ret": [False, True],
    "gates": ["token", "const"],
    "erase": ["eta", "normalized", "retained"],
}


def pairwise(axes: dict[str, list]) -> list[tuple]:
    """A small set of configurations covering every pair of values of every two axes (greedy)."""
    names = list(axes)
    pairs_left = {
        (i, a, j, b)
        for i, j in itertools.combinations(range(len(names)), 2)
        for a in range(len(axes[names[i]])) for b in range(len(axes[names[j]]))
    }
    cands = list(itertools.product(*(range(len(axes[n])) for n in names)))
    chosen = []
    while pairs_left:
        def gain(c):
            return sum((i, c[i], j, c[j]) in pairs_left
                       for i, j in itertools.combinations(range(len(names)), 2))
        best = max(cands, key=gain)
        chosen.append(best)
        for i, j in itertools.combinations(range(len(names)), 2):
            pairs_left.discard((i, best[i], j, best[j]))
    return [tuple(axes[n][c[k]] for k, n in enumerate(names)) for c in chosen]


PAIRWISE = pairwise(AXES)

# Full product on the axes that interact most (rule × momentum × retention × chunk size × read)
# for the linear memory with dot and l2, and for the 2-layer MLP with l2.
FULL = [
    (mem, obj, rule, C, read, mom, ret, "token", "eta")
    for mem, obj in [("linear", "dot"), ("linear", "l2"), ("mlp2", "l2")]
    for rule, C, read, mom, ret in itertools.product(
        AXES["rule"], AXES["C"], AXES["read"], AXES["mom"], AXES["ret"])
]
# Every erase rate with every memory function (DGD, momentum and retention on).
ERASE = [(mem, "l2", "dgd", C, "after", True, True, "token", erase)
         for mem in MEMORIES for erase in AXES["erase"] for C in (1, 16)]


def _id(c):
    return "-".join(str(x) for x in c)


@pytest.mark.parametrize("case", PAIRWISE, ids=_id)
def test_pairwise_chunked_matches_reference(case):
    check(*case)


@pytest.mark.slow      # the exhaustive product; the fast lane keeps the pairwise cover
@pytest.mark.parametrize("case", [c for c in FULL if c not in PAIRWISE], ids=_id)
def test_full_chunked_matches_reference(case):
    check(*case)


@pytest.mark.parametrize("case", [c for c in ERASE if c not in PAIRWISE + FULL], ids=_id)
def test_erase_rates_and_inner_norm_match_reference(case):
    check(*case)


@pytest.mark.parametrize("mem_name,C,G", [("linear", 2, 1), ("linear", 3, 2), ("mlp2", 3, 2),
                                          ("mlp2norm", 3, 3), ("mlp2res_tanh", 1, 4)])
def test_checkpointed_scan_matches_reference(mem_name, C, G, monkeypatch):
    """checkpoint_every = G (state kept every G chunks, groups recomputed in backward) computes
    the reference's outputs, states and gradients, and the plain fast path's to rounding."""
    norm = isinstance(MEMORIES[mem_name], MLPMemory) and MEMORIES[mem_name].norm
    leaves, kw, ws = make_case(mem_name, "token", True, True,
                               dtype=torch.float64 if norm else torch.float32)
    kw.update(objective="l2", rule="dgd", chunk_size=C, read="after")
    ref_out, ref_g = outputs_and_grads(leaves, kw, ws, "reference")
    plain_out, plain_g = outputs_and_grads(leaves, kw, ws, "chunked")
    groups = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda fn, *a, **k: groups.append(a[1:]) or real(fn, *a, **k))
    ck_out, ck_g = outputs_and_grads(leaves, kw, ws, "chunked", checkpoint_every=G)
    assert len(groups) == math.ceil(math.ceil(T / C) / G)     # every group ran checkpointed
    for a, b, c in zip(ref_out, plain_out, ck_out, strict=True):
        torch.testing.assert_close(c, a, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(c, b, atol=1e-6, rtol=1e-6)
    for n in leaves:
        a, b, c = ref_g[n], plain_g[n], ck_g[n]
        assert (a is None) == (c is None), n
        if a is not None:
            tol = ATOL * max(1.0, a.abs().max().item())
            torch.testing.assert_close(c, a, atol=tol, rtol=RTOL, msg=lambda m, n=n: f"d{n}: {m}")
            torch.testing.assert_close(c, b, atol=1e-6 * max(1.0, b.abs().max().item()), rtol=1e-6)


def test_checkpoint_every_is_validated():
    leaves, kw, ws = make_case("linear", "const", False, False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        run(leaves, kw, ws, "chunked", checkpoint_every=0)


@pytest.mark.parametrize("momentum", [True, False])
@pytest.mark.parametrize("T", [48, 53])
def test_block_decays_equal_per_block_decays(momentum, T):
    """All blocks' decay coefficients from one batched call are each block's own `decays`
    (values and gradients); a shorter last block is left to its step (None)."""
    from nestdsl.ops.blockform import block_decays, decays

    torch.manual_seed(0)
    a = torch.rand(3, 2, T, dtype=torch.float64, requires_grad=True)
    b = torch.rand(3, 2, T, dtype=torch.float64, requires_grad=True) if momentum else None
    size = 16
    batched = block_decays(a, b, size)
    assert len(batched) == math.ceil(T / size) and (batched[-1] is None) == (T % size != 0)
    weights = None
    for i, dec in enumerate(batched):
        if dec is None:
            continue
        sl = slice(i * size, (i + 1) * size)
        ref = decays(a[..., sl], None if b is None else b[..., sl])
        for f, r in zip(dec, ref, strict=True):
            assert (f is None) == (r is None)
            if f is not None:   # the same products, batched: equal to the last ulp or two
                torch.testing.assert_close(f, r, atol=0, rtol=1e-14)
        if weights is None:
            weights = [None if f is None else torch.randn_like(f) for f in dec]

    def total(decs):
        return sum((f * w).sum() for d in decs if d is not None
                   for f, w in zip(d, weights, strict=True) if f is not None)

    ins = [a] + ([b] if b is not None else [])
    g = torch.autograd.grad(total(batched), ins)
    per_block = [decays(a[..., i * size:(i + 1) * size],
                        None if b is None else b[..., i * size:(i + 1) * size])
                 for i in range(T // size)]
    g_ref = torch.autograd.grad(total(per_block), ins)
    for x, y in zip(g, g_ref, strict=True):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


def _assert_same_outputs_and_grads(ref_out, ref_g, fast_out, fast_g, *, tol: float) -> None:
    """Outputs/states and every leaf's gradient equal to `tol`, relative to each tensor's scale."""
    for i, (a, b) in enumerate(zip(ref_out, fast_out, strict=True)):
        torch.testing.assert_close(b, a, atol=tol * max(1.0, a.abs().max().item()), rtol=tol,
                                   msg=lambda m, i=i: f"out {i}: {m}")
    for n, a in ref_g.items():
        b = fast_g[n]
        assert (a is None) == (b is None), n
        if a is not None:
            torch.testing.assert_close(b, a, atol=tol * max(1.0, a.abs().max().item()), rtol=tol,
                                       msg=lambda m, n=n: f"d{n}: {m}")


# The per-layer normalised step (rule.normalized_lr): each MLP weight steps with
# η / (ε + ‖its layer's input‖²). Every MLP memory, gd and DGD, constant and per-token gates.
NORMALIZED = [(mem, "l2", rule, C, read, True, True, gates)
              for mem in [m for m in MEMORIES if m != "linear"]
              for rule in ("gd", "dgd") for C, read in ((1, "after"), (16, "after"), (3, "chunk"))
              for gates in ("token", "const")]


@pytest.mark.parametrize("case", NORMALIZED, ids=_id)
def test_normalized_lr_chunked_matches_reference(case):
    mem_name, objective, rule, C, read, use_mom, use_ret, gates = case
    leaves, kw, ws = make_case(mem_name, gates, use_mom, use_ret, dtype=torch.float64)
    kw.update(objective=objective, rule=rule, chunk_size=C, read=read, normalized_lr=True)
    ref_out, ref_g = outputs_and_grads(leaves, kw, ws, "reference")
    fast_out, fast_g = outputs_and_grads(leaves, kw, ws, "chunked")
    plain_out, _ = outputs_and_grads(leaves, kw, ws, "reference", normalized_lr=False)
    assert not torch.allclose(plain_out[0], ref_out[0])       # the field changes the recurrence
    # float64: the two forms sum the same terms in another order (1e-9 on the 3-layer MLP)
    _assert_same_outputs_and_grads(ref_out, ref_g, fast_out, fast_g, tol=1e-8)


def test_normalized_lr_step_is_the_fraction_of_the_error_corrected():
    """One token, a linear-in-W layer: with η/‖a‖² a gd step on ½‖W a − v‖² moves W a by
    η(v − W a) exactly (Eq. 57's NLMS): η = 1 solves the token."""
    mem = MLPMemory(depth=1, hidden=4, residual=False)
    g = torch.Generator().manual_seed(0)
    (w,) = mem.init_weights(1, 4, 4, generator=g, dtype=torch.float64)
    k = 3.0 * torch.randn(1, 1, 1, 4, generator=g, dtype=torch.float64)
    v = torch.randn(1, 1, 1, 4, generator=g, dtype=torch.float64)
    for eta in (0.3, 1.0):
        _, st = memory_scan(k, k, v, memory=mem, objective="l2", lr=eta, chunk_size=1,
                            state=MemoryState((w.unsqueeze(0),), None), kernel="reference",
                            normalized_lr=True)
        before, after = k[0, 0] @ w[0].mT, k[0, 0] @ st.weights[0][0, 0].mT
        torch.testing.assert_close(after - before, eta * (v[0, 0] - before), rtol=1e-5, atol=1e-9)


# Fast-weight norm control (memory.renorm): after every chunk each weight's rows are rescaled
# to θ_0's row norms. The oracle rescales to θ_0's norms; the chunked form to the chunk-start
# norms — equal by induction, which is what this holds.
RENORMED = [(mem, rule, C, read, gates)
            for mem in ("mlp2", "mlp3res", "mlp2norm", "linnorm")
            for rule in ("gd", "dgd") for C, read in ((1, "after"), (5, "after"), (4, "before"),
                                                        (3, "chunk"))
            for gates in ("token", "const")]


@pytest.mark.parametrize("case", RENORMED, ids=_id)
def test_renorm_chunked_matches_reference(case):
    mem_name, rule, C, read, gates = case
    leaves, kw, ws = make_case(mem_name, gates, True, True, dtype=torch.float64)
    renormed = dataclasses.replace(MEMORIES[mem_name], renorm=True)
    kw.update(objective="l2", rule=rule, chunk_size=C, read=read, memory=renormed)
    ref_out, ref_g = outputs_and_grads(leaves, kw, ws, "reference")
    fast_out, fast_g = outputs_and_grads(leaves, kw, ws, "chunked")
    plain_out, _ = outputs_and_grads(leaves, kw, ws, "reference", memory=MEMORIES[mem_name])
    assert not torch.allclose(plain_out[1], ref_out[1])       # the field changes the state
    _assert_same_outputs_and_grads(ref_out, ref_g, fast_out, fast_g, tol=1e-9)


def test_renorm_keeps_every_row_at_its_initial_norm():
    """Whatever the writes do, the final weights' rows have θ_0's norms (to rounding)."""
    leaves, kw, ws = make_case("mlp2", "token", True, True, dtype=torch.float64)
    leaves["lr"] = leaves["lr"].detach() * 10          # big writes: rows would grow without it
    kw.update(objective="l2", rule="gd", chunk_size=4, read="after",
              memory=dataclasses.replace(MEMORIES["mlp2"], renorm=True))
    _, st = run(leaves, kw, ws, "chunked")
    _, free = run(leaves, kw, ws, "chunked", memory=MEMORIES["mlp2"])
    for name, w, w_free in zip(ws, st.weights, free.weights, strict=True):
        n0 = leaves[name].detach().norm(dim=-1).expand(B, *leaves[name].shape[:-1])
        torch.testing.assert_close(w.detach().norm(dim=-1), n0, rtol=1e-12, atol=0)
        assert not torch.allclose(w_free.detach().norm(dim=-1), n0, rtol=1e-3)
