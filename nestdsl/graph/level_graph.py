"""The level graph of a spec (docs/design.md §2, §3.2-§3.4) as a networkx MultiDiGraph.

Node model (attribute `kind`; every node has `label` and `level`, the name of the level that
owns it, except level nodes themselves):

    level:<name>        kind=level     a clock: period, class (in-context / persistent / outer /
                                       between), frequency (firings per token), rank (0 = fastest)
    memory:<name>       kind=memory    an associative memory's map (the computation): memory kind,
                                       objective, rule, read mode, writes grad/stop, `update` (one
                                       line derived from objective + rule), `read_text`
    memory:<p>.<role>   kind=memory    one of a self-modifying layer's projection memories (k, v,
                                       eta, alpha, q): same spec memory, one state per role
    state:<name>        kind=state     that memory's state theta (per batch element and head; for
                                       attention the key/value cache)
    proj:<memory>       kind=projection  static (outer-level) projections feeding a memory
    mlp:<block>.<i>     kind=mlp       a Transformer MLP (a CMS with one level of one step)
    cms:<cms>.<i>       kind=cms_stage one CMS stage; in-context stages also get state:<cms>.<i>
    cms:<cms>.agg       kind=combine   the learned weighted sum of an `independent` CMS
    mix:<block>.<i>     kind=combine   the learned gate of a Titans MAG layer
    param:embeddings    kind=param     embeddings/head (outer level)
    optimizer           kind=optimizer the outer optimizer (applies every outer update)
    optmem:<name>       kind=opt_memory one of the optimizer's own memories (momentum, ...),
                                       owned by level `opt.<name>`

Memories are one node per *spec* memory, not per layer instance: every instance across the depth
has the same levels and edges, so per-instance nodes would multiply the picture by `depth`
(24 at paper scale) without adding information. `instances` lists where each is used.

Edge model (attributes `kind` in {reads, generates, writes, meta, optimizes}, `grad` in
{grad, stop}, `label`):

    proj:M --generates(grad)--> memory:M          q, k, v (+ learned gates) from the input
    memory:P.k --generates(grad)--> memory:M      self-modifying: k, v, eta, alpha are memories
    memory:M --writes(grad|stop)--> state:M       the inner update (per `writes`)
    state:M --reads(grad)--> memory:M             the read, with its mode (after/before/chunk)
    level:step --meta(grad)--> state:M            theta_0 learned by backprop (§3.2)
    cms stage --writes(stop)--> its state         task-signal in-context levels are first order
    level:slower --meta(grad)--> state:cms.i      knowledge transfer through initialisation
    layer output --reads(grad)--> next layer      wiring inside a block
    optimizer --optimizes(stop)--> parameters     outer updates are never differentiated
    optmem:a --writes(stop)--> optmem:b / optimizer   the optimizer's internal nesting

Pure Python + networkx: no torch (the `graph` command must stay torch-free).
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from nestdsl.graph.schedule import Level, Schedule, optimizer_levels, schedule
from nestdsl.spec import ir
from nestdsl.spec.resolve import DGD_ERASE, resolve
from nestdsl.vocabulary import READ_MEANING, READ_MODES, READ_STATE

__all__ = ["build_graph", "instance_name", "read_text", "update_equation"]

READ_TEXT = {mode: f"o_t = M_{READ_STATE[mode]}(q_t)  ({READ_MEANING[mode]})" for mode in READ_MODES}


# ---------------------------------------------------------------------------------------------
# One-line update equations (docs/design.md §3.1)


def _gate(g: ir.Gate | None, sym: str, *, one_is_empty: bool = True) -> str:
    """A gate as it appears in an equation: '' for the constant 1, '0.9' for constants,
    'eta_t' for data-dependent gates."""
    if g is None:
        return ""
    if isinstance(g, ir.LearnedGate):
        return f"{sym}_t"
    if one_is_empty and float(g) == 1.0:
        return ""
    return f"{float(g):g}"


def _times(coef: str, expr: str) -> str:
    return f"{coef}·{expr}" if coef else expr


def _memory_function(mem: ir.ParametricMemory, M: str, x: str) -> str:
    """f_θ(x) as text: the weights' map, then the inner norm and residual (docs/design.md §3.1)."""
    f = f"{M} {x}" if isinstance(mem, ir.LinearMemory) else f"MLP_{M}({x})"
    if mem.norm:
        f = f"LN({f})"
    if mem.residual:
        f = f"{x} + {f}"
    return f


def instance_name(mem: ir.Memory, chunk: int) -> str:
    """The published recurrence this memory computes, if it is one (printed beside the update)."""
    if not isinstance(mem, ir.ParametricMemory):
        return ""
    linear = isinstance(mem, ir.LinearMemory)
    rule = mem.rule or ir.Rule()
    ret, mom, obj = rule.retention is not None, rule.momentum is not None, mem.objective or "l2"
    erase = rule.erase or DGD_ERASE
    if linear and not mem.norm and not mom and rule.clip is None:
        if obj == "dot" and rule.kind == "gd":
            return "gated linear attention (Mamba2-like)" if ret else "linear attention"
        if obj == "dot" and rule.kind == "dgd":
            # M(αI − εkkᵀ) + ηvkᵀ is (Gated) DeltaNet when ε = αη (= η without retention)
            if erase == "retained" or (erase == "eta" and not ret):
                return "Gated DeltaNet" if ret else "DeltaNet"
        if obj == "l2" and rule.kind == "gd" and chunk == 1:
            return "delta rule with decay after the erase" if ret else "DeltaNet"
        if obj == "l2" and rule.kind == "gd":
            return "mini-batch GD on a linear memory (TTT-Linear without its inner norm)"
    if linear and mem.norm and mem.residual and obj == "l2" and rule.kind == "gd" \
            and not mom and not ret:
        return "TTT-Linear"
    if isinstance(mem, ir.MLPMemory) and obj == "l2":
        if rule.kind == "dgd":
            return f"DGD, Hope Eq. {'57' if erase == 'normalized' else '88'}" + (
                "" if erase != "retained" else " with retention before the erase")
        if mom and ret:
            return "Titans LMM (Eqs. 13-14)"
        if not mom and not ret and mem.norm and mem.residual:
            return "TTT-MLP"
    return ""


def update_equation(mem: ir.Memory, chunk: int = 1, *, target: str = "v") -> str:
    """One line of what a memory's rule does (docs/design.md §3.1), derived from its spec:

        S ← β S − η ∇ℓ(θ_c; k, v);   θ ← θ(α I − ε k kᵀ) + S

    specialised to its objective, memory function (inner norm, residual), erase rate ε and
    gates; `chunk` is C (the gradient is taken at the chunk-start state θ_c when C > 1) and
    `target` the value regressed onto ('v̂' for Hope's self-generated targets). The one renderer
    of the update: `graph`, `compile --explain` and the plan all print it.
    """
    if isinstance(mem, ir.AttentionMemory):
        w = f"keep the last {mem.window}" if mem.window else "keep all"
        return f"cache ← cache ∪ {{(k_t, v_t)}} ({w}); o_t = softmax(q_t Kᵀ) V"
    assert isinstance(mem, ir.ParametricMemory)
    rule = mem.rule or ir.Rule()
    eta = _gate(rule.lr, "η")
    if rule.lr_per_dim:
        eta = f"{eta or '1'}/d"
    if rule.normalized_lr:   # per weight: η/‖a_i‖², a_i that layer's input (checker: not a bare matrix)
        eta = f"{eta or '1'}/‖a‖²"
    alpha = _gate(rule.retention, "α")
    beta = _gate(rule.momentum, "β") if rule.momentum is not None else None
    assert isinstance(mem, ir.ParametricMemory)
    linear = isinstance(mem, ir.LinearMemory)
    M = "M" if linear else "θ"
    Mc = M if chunk == 1 else f"{M}_c"     # the state the gradient is taken at
    obj, v = mem.objective or "l2", target
    plain = linear and not mem.norm and rule.clip is None

    f = _memory_function(mem, Mc, "k")
    if obj == "dot":
        step = f"+ {_times(eta, f'{v} kᵀ')}" if plain else f"+ {_times(eta, f'∇{M}⟨{f}, {v}⟩')}"
    elif obj == "l2" and rule.clip is not None:
        c = f"{rule.clip:g}"
        step = f"− {_times(eta, f'∇{M} {c}²·log cosh(‖{f} − {v}‖/{c})')}"
    elif obj == "l2":
        step = f"− {_times(eta, f'({Mc} k − {v}) kᵀ')}" if plain else f"− {_times(eta, f'∇{M} ½‖{f} − {v}‖²')}"
    else:
        step = f"− {_times(eta, f'∇{M} {obj}({f}, {v})')}"

    if rule.kind == "dgd":
        e = eta or "1"
        eps = {"eta": e, "normalized": f"{e}/(1 + {e}‖k‖²)",
               "retained": _times(alpha, e)}[rule.erase or DGD_ERASE]
        core = f"({alpha + ' ' if alpha else ''}I − {eps} k kᵀ)"
        kept = f"{M}{core}" if linear else f"θ [W_in ← W_in{core}, others {_times(alpha, 'W')}]"
    else:
        kept = _times(alpha, M)

    if beta is not None:
        text = f"S ← {_times(beta, 'S')} {step}; {M} ← {kept} + S"
    else:
        text = f"{M} ← {kept} {step}"
    name = instance_name(mem, chunk)
    if mem.norm and mem.norm_gain != 1.0:
        name = ", ".join(x for x in (name, f"LN gain₀ = {mem.norm_gain:g}") if x)
    chunk_note = f"; {Mc} = state at chunk start (C = {chunk})" if chunk > 1 else ""
    renorm = isinstance(mem, ir.MLPMemory) and mem.renorm
    renorm_note = "; rows rescaled to their θ₀ norms after each chunk" if renorm else ""
    return text + (f"  ({name})" if name else "") + chunk_note + renorm_note


def read_text(mem: ir.Memory) -> str:
    if isinstance(mem, ir.AttentionMemory):
        return "softmax over cached k, v" + (f" (window {mem.window})" if mem.window else "")
    assert isinstance(mem, ir.ParametricMemory)
    if isinstance(mem, ir.MLPMemory) and mem.read_norm is not None:   # the read's branch rescaled outside the inner loss
        return READ_TEXT[mem.read] + f"; read q + g·RMSNorm(M(q) − q), g₀ = {mem.read_norm:g}"
    return READ_TEXT[mem.read]


# ---------------------------------------------------------------------------------------------
# Graph construction


class _Builder:
    def __init__(self, spec: ir.Spec, sched: Schedule) -> None:
        self.spec = resolve(spec)         # the defaults the compiler uses (spec/resolve.py)
        self.sched = sched
        self.g: nx.MultiDiGraph[str] = nx.MultiDiGraph()
        self.outer_params: list[tuple[str, str]] = []  # (node, parameter class) the optimizer updates

    # -- primitives ----------------------------------------------------------------------------

    def node(self, nid: str, kind: str, label: str, level: str | None, **attrs: Any) -> str:
        if nid not in self.g:
            self.g.add_node(nid, kind=kind, label=label, level=level, **attrs)
        return nid

    def edge(self, u: str, v: str, kind: str, grad: str, label: str = "", **attrs: Any) -> None:
        # Same (u, v, kind) twice (a memory used by two layers) is one edge, not two.
        if self.g.has_edge(u, v, key=kind):
            return
        self.g.add_edge(u, v, key=kind, kind=kind, grad=grad, label=label, **attrs)

    def level_of(self, name: str | None) -> str:
        return name if name is not None else "token"

    def chunk_of(self, name: str | None) -> int:
        p = self.spec.level_period(name)
        return p.every if p.unit == "tokens" else 1

    # -- levels --------------------------------------------------------------------------------

    def add_levels(self) -> None:
        for rank, lv in enumerate(self.sched.levels):
            self.node(
                f"level:{lv.name}", "level", lv.name, None,
                name=lv.name, period=lv.period, period_text=lv.period_text, every=lv.every,
                unit=lv.unit, cls=lv.kind, owner=lv.owner, frequency=lv.frequency, rank=rank,
                steps_every=lv.steps_every, tokens_every=lv.tokens_every,
                fires=self.sched.describe(lv), doc=lv.doc or "",
            )

    # -- memories ------------------------------------------------------------------------------

    def add_memory(self, name: str, *, role: str | None = None, target: str = "v",
                   instance: str) -> str:
        """A memory and its state; `role` makes a per-role copy (self-modifying projections)."""
        mem = self.spec.memories[name]
        key = f"{name}.{role}" if role else name
        nid = f"memory:{key}"
        pmem = mem if isinstance(mem, ir.ParametricMemory) else None
        cache = pmem is None    # attention: a k/v cache, no weights
        level = "token" if pmem is None else self.level_of(pmem.level)
        chunk = 1 if pmem is None else self.chunk_of(pmem.level)
        if nid in self.g:
            self.g.nodes[nid]["instances"].append(instance)
            return nid
        rule = None if pmem is None else pmem.rule
        self.node(
            nid, "memory", key, level,
            memory=name, role=role or "", mem_kind=mem.kind,
            objective="" if pmem is None else (pmem.objective or ""),
            rule=(rule.kind if rule else ""), read="after" if pmem is None else pmem.read,
            read_text=read_text(mem), writes="grad" if pmem is None else pmem.writes, chunk=chunk,
            update=update_equation(mem, chunk, target=target), instances=[instance],
        )
        sid = self.node(
            f"state:{key}", "state", key, level,
            memory=name, what=("k/v cache" if cache else "θ (per sequence, head)"),
        )
        write_label = "append k, v" if pmem is None else (
            f"{rule.kind if rule else 'gd'} on {pmem.objective or 'l2'}, every {chunk} token"
            + ("s" if chunk != 1 else "")
        )
        # Attention's cache append is differentiable like any activation; parametric writes
        # follow the spec's `writes` (docs/design.md §3.2).
        self.edge(nid, sid, "writes", self.g.nodes[nid]["writes"], write_label)
        self.edge(sid, nid, "reads", "grad", f"read: {self.g.nodes[nid]['read']}")
        if not cache:
            # theta_0 is a parameter of the outer level, learned through the reads (and through
            # the writes when they are differentiable).
            self.edge("level:step", sid, "meta", "grad", "θ₀ meta-learned")
        return nid

    def add_static_proj(self, mem_name: str, outputs: list[str], target: str) -> None:
        pid = self.node(f"proj:{mem_name}", "projection", f"W_{{{','.join(outputs)}}} → {mem_name}",
                        "step", outputs=outputs)
        self.edge(pid, target, "generates", "grad", ", ".join(outputs))
        self.outer_params.append((pid, "matrices"))

    def gate_outputs(self, mem: ir.Memory, skip: frozenset[str] = frozenset()) -> list[str]:
        out: list[str] = []
        rule = mem.rule if isinstance(mem, ir.ParametricMemory) else None
        if rule is None:
            return out
        for sym, g in (("eta", rule.lr), ("alpha", rule.retention), ("beta", rule.momentum)):
            if isinstance(g, ir.LearnedGate) and sym not in skip:
                out.append(sym)
        return out

    # -- layers --------------------------------------------------------------------------------

    def add_layer(self, bname: str, i: int, layer: Any) -> tuple[list[str], str]:
        """Add one layer; return (its input nodes, its output node) for the block wiring."""
        inst = f"{bname}.{i}"
        t = layer.type
        if t == "memory":
            m = self.add_memory(layer.memory, instance=inst)
            mem = self.spec.memories[layer.memory]
            self.add_static_proj(layer.memory, ["q", "k", "v", *self.gate_outputs(mem)], m)
            return [m], m
        if t in ("mal", "mag"):
            m = self.add_memory(layer.memory, instance=inst)
            a = self.add_memory(layer.attention, instance=inst)
            self.add_static_proj(layer.memory, ["q", "k", "v", *self.gate_outputs(self.spec.memories[layer.memory])], m)
            self.add_static_proj(layer.attention, ["q", "k", "v"], a)
            if t == "mal":
                # Memory as a layer: attention reads the memory's output.
                self.edge(m, a, "reads", "grad", "MAL: memory → SWA")
                return [m], a
            mix = self.node(f"mix:{inst}", "combine", f"MAG gate {inst}", "step")
            self.outer_params.append((mix, "vectors"))
            self.edge(m, mix, "reads", "grad", "gated")
            self.edge(a, mix, "reads", "grad", "gated")
            return [m, a], mix
        if t == "self_modifying":
            return self.add_self_modifying(layer, inst)
        if t == "cms":
            return self.add_cms(layer.cms, inst)
        if t == "mlp":
            n = self.node(f"mlp:{inst}", "mlp", f"{inst} (x{layer.hidden})", "step",
                          hidden=layer.hidden, activation=layer.activation)
            self.outer_params.append((n, "matrices"))
            return [n], n
        raise ValueError(f"unknown layer type {t!r}")  # pragma: no cover - IR is closed

    def add_self_modifying(self, layer: ir.SelfModifyingLayer, inst: str) -> tuple[list[str], str]:
        # Hope (docs/design.md §3.4): the adaptive projections are memories that generate k, v, eta,
        # alpha (and q) for the main memory; every memory regresses to a self-generated v̂.
        target = "v̂" if layer.values == "self" else "v"     # Eq. 84 vs the shared v_t (Eq. 79)
        main = self.add_memory(layer.memory, instance=inst, target=target)
        adaptive = list(layer.adaptive)
        for role in adaptive:
            p = self.add_memory(layer.projections, role=role, target=target, instance=inst)
            self.edge(p, main, "generates", "grad", role)
        static = [r for r in ("q", "k", "v", "eta", "alpha") if r not in adaptive]
        main_mem = self.spec.memories[layer.memory]
        # beta (momentum) and any gate not covered by an adaptive projection stays a static map.
        static += self.gate_outputs(main_mem, skip=frozenset({"eta", "alpha"}))
        if static:
            self.add_static_proj(layer.memory, static, main)
        return [main, *(f"memory:{layer.projections}.{r}" for r in adaptive)], main

    def add_cms(self, cname: str, inst: str) -> tuple[list[str], str]:
        cms = self.spec.cms[cname]
        stage_nodes: list[str] = []
        for j, st in enumerate(cms.stages):
            sid = f"cms:{cname}.{j}"
            if sid in self.g:
                self.g.nodes[sid]["instances"].append(inst)
                stage_nodes.append(sid)
                continue
            lv = self.sched.level(st.level)
            in_ctx = lv.tokens_every is not None
            self.node(sid, "cms_stage", f"{cname}[{j}] MLP x{st.hidden}", st.level,
                      cms=cname, index=j, hidden=st.hidden, signal=st.signal if in_ctx else "outer",
                      scope=st.scope, cls=lv.kind, mode=cms.mode, instances=[inst],
                      read=("chunk" if in_ctx else "static"),
                      read_text=("o_t = MLP_{θ_c(t)}(x_t)  (chunk-start state)" if in_ctx
                                 else "o_t = MLP_θ(x_t)  (fixed within the step)"),
                      update=self.cms_update(st, lv), writes=("stop" if st.signal == "task" else "grad")
                      if in_ctx else "stop")
            stage_nodes.append(sid)
            if in_ctx:
                state = self.node(f"state:{cname}.{j}", "state", f"{cname}[{j}]", st.level,
                                  what="θ (per sequence)" if st.scope == "sequence" else "θ (streams on)")
                # Task-signal levels write with stop-gradient (first order; docs/design.md §3.3).
                grad = "stop" if st.signal == "task" else "grad"
                sig = "∇ next-token loss over the chunk" if st.signal == "task" else "local L2"
                self.edge(sid, state, "writes", grad, f"{sig}, every {lv.period}")
                self.edge(state, sid, "reads", "grad", "read: chunk-start state")
            else:
                k = lv.steps_every
                self.outer_params.append((sid, f"matrices@{k if k is not None else '?'}"))
        # Initial states of in-context stages: nested mode learns stage j's θ₀ in the next slower
        # stage's level (arXiv Eq. 72); chain / independent learn them in the outer level (Eq. 73).
        for j in range(len(stage_nodes)):
            state = f"state:{cname}.{j}"
            if state not in self.g:
                continue
            src = "level:step"
            if cms.mode == "nested" and j + 1 < len(cms.stages):
                src = f"level:{cms.stages[j + 1].level}"
            self.edge(src, state, "meta", "grad", "θ₀ (knowledge transfer)")
        if cms.mode == "independent":
            agg = self.node(f"cms:{cname}.agg", "combine", f"{cname} weighted sum", "step")
            self.outer_params.append((agg, "vectors"))
            for sid in stage_nodes:
                self.edge(sid, agg, "reads", "grad", "learned weight")
            return stage_nodes, agg
        for a, b in zip(stage_nodes, stage_nodes[1:], strict=False):
            self.edge(a, b, "reads", "grad", "chain")
        return stage_nodes[:1], stage_nodes[-1]

    def cms_update(self, st: ir.CMSStage, lv: Level) -> str:
        if lv.tokens_every is not None:
            sig = "ℓ_task" if st.signal == "task" else "½‖MLP(x) − y‖²"
            return f"θ ← θ − {st.lr:g}·Σ_chunk ∇θ {sig}  (every {lv.period}, in-context)"
        k = lv.steps_every
        every = f"every {k} step{'s' if k != 1 else ''}" if k is not None else f"every {lv.period}"
        return f"θ ← outer optimizer(Σ grads of the last {k or '?'} steps)  ({every}, persistent)"

    # -- optimizer ---------------------------------------------------------------------------------

    def add_optimizer(self) -> None:
        opt = self.spec.outer_optimizer
        if opt is None:
            return
        levels, source = optimizer_levels(opt)
        self.g.graph["optimizer_levels_source"] = source
        groups = ", ".join(f"{g.params}→{g.type or opt.type}" for g in opt.groups)
        self.node("optimizer", "optimizer", opt.type + (f" ({groups})" if groups else ""), "step", type=opt.type,
                  lr=opt.lr, groups=groups)
        names = {d["name"] for d in levels}
        for d in levels:
            nid = f"optmem:{d['name']}"
            self.node(nid, "opt_memory", d["name"], f"opt.{d['name']}",
                      objective=str(d.get("objective", "")), memory=str(d.get("memory", "")),
                      state=str(d.get("state", "")), update=str(d.get("doc", "")),
                      params=str(d.get("params", "all")))
        for d in levels:
            nid = f"optmem:{d['name']}"
            prefix = d["name"].rsplit(".", 1)[0] + "." if "." in d["name"] else ""
            for r in d.get("reads", []) or []:
                src = prefix + r if prefix + r in names else r
                if src in names:
                    self.edge(f"optmem:{src}", nid, "reads", "stop", "")
                else:
                    self.edge("optimizer", nid, "reads", "stop", str(r))
            w = str(d.get("writes", "params"))
            tgt = prefix + w if prefix + w in names else w
            if tgt in names:
                self.edge(nid, f"optmem:{tgt}", "writes", "stop", "")
            else:
                self.edge(nid, "optimizer", "writes", "stop", "update")
        if self.spec.model is None:
            p = self.node("param:all", "param", "parameters (any model)", "step")
            self.outer_params.append((p, "all"))
        for nid, cls in self.outer_params:
            every = cls.split("@", 1)[1] if "@" in cls else "1"
            label = "every step" if every == "1" else f"every {every} steps (accumulated)"
            # The outer update is applied, never back-propagated through.
            self.edge("optimizer", nid, "optimizes", "stop", label)

    # -- whole spec ------------------------------------------------------------------------------

    def build(self) -> nx.MultiDiGraph[str]:
        spec = self.spec
        self.g.graph.update(name=spec.name, seq_len=self.sched.seq_len, batch=self.sched.batch,
                            tokens_per_step=self.sched.tokens_per_step)
        self.add_levels()
        if spec.model is not None:
            emb = self.node("param:embeddings", "param", "embeddings / head", "step")
            self.outer_params.append((emb, "embeddings"))
            used = set(spec.model.pattern)
            for bname, block in spec.blocks.items():
                if bname not in used:
                    continue
                prev_out: str | None = None
                for i, layer in enumerate(block.layers):
                    ins, out = self.add_layer(bname, i, layer)
                    if prev_out is not None:
                        for n in ins:
                            self.edge(prev_out, n, "reads", "grad", "layer input")
                    prev_out = out
        self.add_optimizer()
        # Drop level nodes nothing uses? No: every declared level is shown, even an unused one,
        # so the graph matches the spec; `owns` is recorded for renderers.
        for lid in self.level_nodes():
            name = self.g.nodes[lid]["name"]
            self.g.nodes[lid]["owns"] = sorted(
                n for n, d in self.g.nodes(data=True) if d.get("level") == name
            )
        return self.g

    def level_nodes(self) -> list[str]:
        return sorted((n for n, d in self.g.nodes(data=True) if d["kind"] == "level"),
                      key=lambda n: self.g.nodes[n]["rank"])


def build_graph(
    spec: ir.Spec, seq_len: int | None = None, batch: int | None = None,
    sched: Schedule | None = None,
) -> nx.MultiDiGraph[str]:
    """The level graph of `spec` (see the module doc for the node and edge model).

    `seq_len`/`batch` (default: the spec's `data`) decide which token periods are in-context and
    which are persistent. Level nodes carry `rank` (0 = fastest).
    """
    sched = sched or schedule(spec, seq_len=seq_len, batch=batch)
    return _Builder(spec, sched).build()


def levels_in_order(g: nx.MultiDiGraph[str]) -> list[str]:
    """Level node ids, fastest first."""
    return sorted((n for n, d in g.nodes(data=True) if d["kind"] == "level"),
                  key=lambda n: g.nodes[n]["rank"])
