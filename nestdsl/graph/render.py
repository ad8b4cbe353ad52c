"""Renderers of the level graph: text (rich tree + firing timeline), mermaid, dot, json, png.

Every format shows every level with its period and class (fastest first), every edge with its
kind and grad/stop, and every memory's read mode; `nestdsl graph` calls `render_graph`.
The png is drawn by matplotlib with a networkx layout (no graphviz binary needed); matplotlib is
imported only there, so the other formats stay light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, cast

import networkx as nx
from rich.console import Console, Group
from rich.text import Text
from rich.tree import Tree

from nestdsl.graph.level_graph import build_graph, levels_in_order
from nestdsl.graph.schedule import Schedule, schedule
from nestdsl.spec import ir

__all__ = ["FORMATS", "render_graph", "to_dot", "to_json", "to_mermaid", "to_png", "to_text"]

FORMATS = ("text", "mermaid", "dot", "json", "png", "svg")

EDGE_COLORS = {
    "reads": "#4c72b0",
    "generates": "#55a868",
    "writes": "#c44e52",
    "meta": "#8172b2",
    "optimizes": "#dd8452",
}
EDGE_ORDER = ("generates", "writes", "reads", "meta", "optimizes")
KIND_TITLES = {
    "memory": "memory", "state": "state", "projection": "projection", "mlp": "mlp",
    "cms_stage": "cms stage", "combine": "combine", "param": "param", "optimizer": "optimizer",
    "opt_memory": "optimizer memory",
}


def _level_header(d: dict[str, Any]) -> str:
    return f"{d['name']} · every {d['period_text']} · {d['cls']}"


def _owned(g: nx.MultiDiGraph[str], lid: str) -> list[str]:
    # Computations first, then their states, so the tree reads top-down.
    order = {"memory": 0, "cms_stage": 1, "opt_memory": 2, "mlp": 3, "projection": 4,
             "combine": 5, "param": 6, "optimizer": 7, "state": 8}
    return sorted(g.nodes[lid]["owns"], key=lambda n: (order.get(g.nodes[n]["kind"], 9), n))


def _node_line(d: dict[str, Any]) -> str:
    kind = d["kind"]
    title = KIND_TITLES.get(kind, kind)
    if kind == "memory":
        extra = f" ({d['mem_kind']}" + (f", {d['objective']}, {d['rule']}" if d["objective"] else "") + ")"
        return (f"{title} {d['label']}{extra} · read: {d['read']} — {d['read_text']}"
                f" · writes: {d['writes']}")
    if kind == "cms_stage":
        sig = f"signal {d['signal']}, " if d["signal"] != "outer" else ""
        return (f"{title} {d['label']} ({sig}{d['cls']}) · read: {d['read']} — {d['read_text']}"
                f" · writes: {d['writes']}")
    if kind == "state":
        return f"{title} {d['label']}: {d.get('what', '')}"
    if kind == "opt_memory":
        return f"{title} {d['label']} ({d['memory']}, {d['objective']}) · state {d['state']}"
    return f"{title} {d['label']}"


def _edge_rows(g: nx.MultiDiGraph[str]) -> list[tuple[str, str, str, str, str]]:
    """(kind, grad, source, target, label) for every edge, in a stable order."""
    rows = [(d["kind"], d["grad"], u, v, d.get("label", "")) for u, v, d in g.edges(data=True)]
    return sorted(rows, key=lambda r: (EDGE_ORDER.index(r[0]), r[2], r[3]))


# ---------------------------------------------------------------------------------------------
# text


def to_text(spec: ir.Spec, g: nx.MultiDiGraph[str], sched: Schedule) -> Group:
    """A rich renderable: the level tree (fastest first), the edges, the firing timeline."""
    shape = ""
    if sched.seq_len:
        shape = f" (seq_len {sched.seq_len}"
        shape += f", batch {sched.batch} → {sched.tokens_per_step} tokens/step)" if sched.batch else ")"
    tree = Tree(Text(f"{spec.name} — levels, fastest first{shape}", style="bold"))
    for lid in levels_in_order(g):
        d = g.nodes[lid]
        head = Text(f"level {_level_header(d)}", style="bold cyan")
        head.append(f" · fires {d['fires']}", style="dim")
        branch = tree.add(head)
        if d.get("doc") and d.get("owner") != "optimizer":  # optimizer docs repeat the update
            branch.add(Text(d["doc"], style="dim italic"))
        for n in _owned(g, lid):
            nd = g.nodes[n]
            line = Text(_node_line(nd))
            if nd.get("instances"):
                line.append(f"  [in {', '.join(nd['instances'])}]", style="dim")
            sub = branch.add(line)
            if nd.get("update"):
                sub.add(Text(f"update: {nd['update']}", style="green"))
    edges = Tree(Text("edges (kind · grad/stop)", style="bold"))
    for kind, grad, u, v, label in _edge_rows(g):
        t = Text(f"{kind} · {grad}: ", style=("bold" if grad == "grad" else "dim"))
        t.append(f"{u} → {v}")
        if label:
            t.append(f"  ({label})", style="dim")
        edges.add(t)
    parts: list[Any] = [tree, edges, _timeline_text(sched)]
    src = g.graph.get("optimizer_levels_source")
    if src == "fallback":
        parts.append(Text("(optimizer levels: generic fallback; nestdsl.optim.levels unavailable)",
                          style="dim"))
    return Group(*parts)


def _timeline_text(sched: Schedule) -> Text:
    tok_head, tok_rows, step_head, step_rows = sched.timeline()
    w = max((len(n) for n, _ in tok_rows + step_rows), default=4)
    out = Text()
    out.append("firing timeline (| = fires)\n", style="bold")
    if tok_head:
        out.append(f"  {tok_head}\n", style="dim")
        for name, row in tok_rows:
            out.append(f"  {name:<{w}}  {row}\n")
    if step_head:
        out.append(f"  {step_head}\n", style="dim")
        for name, row in step_rows:
            out.append(f"  {name:<{w}}  {row}\n")
    return out


# ---------------------------------------------------------------------------------------------
# mermaid


def _mid(n: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in n)


def _mlabel(s: str) -> str:
    # Mermaid labels are HTML-ish inside quotes: escape what would end or open markup.
    return s.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _short_label(d: dict[str, Any]) -> list[str]:
    kind = d["kind"]
    lines = [f"{KIND_TITLES.get(kind, kind)} {d['label']}"]
    if kind == "level":
        lines = [f"level {d['name']}", f"every {d['period_text']}", d["cls"]]
    elif kind in ("memory", "cms_stage"):
        lines.append(f"read: {d['read']} · writes: {d['writes']}")
        lines.append(d["update"])
    elif kind == "opt_memory":
        lines.append(d["update"])
    return lines


def to_mermaid(g: nx.MultiDiGraph[str]) -> str:
    out = ["flowchart LR", f"  %% {g.graph.get('name', '')}: level graph, levels fastest first"]
    for i, lid in enumerate(levels_in_order(g)):
        d = g.nodes[lid]
        out.append(f'  subgraph L{i}["{_mlabel(_level_header(d))}"]')
        label = "<br/>".join(_mlabel(x) for x in _short_label(d))
        out.append(f'    {_mid(lid)}(["{label}"])')
        for n in _owned(g, lid):
            label = "<br/>".join(_mlabel(x) for x in _short_label(g.nodes[n]))
            out.append(f'    {_mid(n)}["{label}"]')
        out.append("  end")
    for kind, grad, u, v, label in _edge_rows(g):
        arrow = "-->" if grad == "grad" else "-.->"
        text = f"{kind} · {grad}" + (f" · {label}" if label else "")
        out.append(f'  {_mid(u)} {arrow}|"{_mlabel(text)}"| {_mid(v)}')
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# dot (Graphviz source; no binary needed to produce it)


def _dq(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(g: nx.MultiDiGraph[str]) -> str:
    out = [f"digraph {_dq(g.graph.get('name', 'spec'))} {{", "  rankdir=LR;",
           '  node [shape=box, fontsize=10, fontname="Helvetica"];',
           '  edge [fontsize=9, fontname="Helvetica"];']
    for i, lid in enumerate(levels_in_order(g)):
        d = g.nodes[lid]
        out.append(f"  subgraph cluster_{i} {{")
        out.append(f"    label={_dq(_level_header(d))};")
        out.append(f"    {_dq(lid)} [shape=ellipse, label={_dq(chr(10).join(_short_label(d)))}];")
        for n in _owned(g, lid):
            out.append(f"    {_dq(n)} [label={_dq(chr(10).join(_short_label(g.nodes[n])))}];")
        out.append("  }")
    for kind, grad, u, v, label in _edge_rows(g):
        text = f"{kind} ({grad})" + (f"\n{label}" if label else "")
        style = "solid" if grad == "grad" else "dashed"
        out.append(f"  {_dq(u)} -> {_dq(v)} [label={_dq(text)}, style={style}, "
                   f"color={_dq(EDGE_COLORS[kind])}];")
    out.append("}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# json (networkx node-link layout, stable order)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and v != v:  # NaN never appears, but keep the output valid JSON
        return None
    return v


def to_json(g: nx.MultiDiGraph[str], sched: Schedule) -> str:
    """Node-link data (`nx.node_link_graph(data, edges="edges")` reads it back) + the schedule."""
    rank = {n: g.nodes[n]["rank"] for n in levels_in_order(g)}
    by_level = {d["name"]: rank[n] for n, d in g.nodes(data=True) if d["kind"] == "level"}

    def nkey(n: str) -> tuple[int, int, str]:
        d = g.nodes[n]
        if d["kind"] == "level":
            return (d["rank"], 0, n)
        return (by_level.get(d.get("level"), len(by_level)), 1, n)

    nodes = [{"id": n, **{k: _jsonable(v) for k, v in sorted(g.nodes[n].items())}}
             for n in sorted(g.nodes, key=nkey)]
    edges = [
        {"source": u, "target": v, "key": k, **{a: b for a, b in sorted(d.items())}}
        for u, v, k, d in sorted(g.edges(keys=True, data=True), key=lambda e: (e[0], e[1], e[2]))
    ]
    data = {"directed": True, "multigraph": True, "graph": dict(sorted(g.graph.items())),
            "nodes": nodes, "edges": edges, "schedule": sched.as_dict()}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# png (matplotlib + networkx layout)


def _box_text(g: nx.MultiDiGraph[str], n: str, states: dict[str, list[str]]) -> str:
    """A node's label in the picture: name, what it is, and the state it writes (folded in)."""
    d = g.nodes[n]
    kind = d["kind"]
    if kind == "memory":
        what = d["mem_kind"] + (f" · {d['objective']} · {d['rule']}" if d["objective"] else "")
        text = f"{d['label']}\n{what}\nread: {d['read']}"
    elif kind == "cms_stage":
        text = f"{d['label']}\nread: {d['read']}"
    else:
        text = d["label"]
    for s in states.get(n, []):
        grad = {e["grad"] for _, v, e in g.out_edges(n, data=True) if v == s and e["kind"] == "writes"}
        text += f"\n⟲ writes its state ({'/'.join(sorted(grad)) or 'grad'})"
    return text


def _flow_rank(g: nx.MultiDiGraph[str], nodes: list[str]) -> dict[str, int]:
    """Column of each node: its depth in the data flow (generates / reads between computations),
    so a chain such as projections → titans → CMS stages runs left to right."""
    flow: nx.DiGraph[str] = nx.DiGraph()
    flow.add_nodes_from(nodes)
    for u, v, d in g.edges(data=True):
        if u in flow and v in flow and d["kind"] in ("generates", "reads"):
            flow.add_edge(u, v)
    rank: dict[str, int] = {}
    order = list(nx.topological_sort(flow)) if nx.is_directed_acyclic_graph(flow) else sorted(nodes)
    for n in order:
        preds = [rank[p] + 1 for p in flow.predecessors(n) if p in rank]
        rank[n] = max(preds, default=0)
    return rank


def _fold_states(g: nx.MultiDiGraph[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """States are drawn inside the box of the memory that writes them: (memory -> its states,
    state -> its memory)."""
    states: dict[str, list[str]] = {}
    folded: dict[str, str] = {}
    for n, d in g.nodes(data=True):
        if d["kind"] == "state":
            owners = [u for u, _, e in g.in_edges(n, data=True) if e["kind"] == "writes"]
            if owners:
                states.setdefault(owners[0], []).append(n)
                folded[n] = owners[0]
    return states, folded


def to_png(g: nx.MultiDiGraph[str], path: Path) -> Path:
    """Draw the levels as horizontal bands, fastest on top (the paper's nested-levels view); each
    memory, CMS stage and parameter group sits in its level's band, columns follow the data
    flow, a memory's own state is folded into its box. Solid arrows carry gradients, dashed ones
    do not. PNG or SVG, by the file's suffix."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    levels = levels_in_order(g)
    states, folded = _fold_states(g)
    shown = [n for n in g.nodes if g.nodes[n]["kind"] != "level" and n not in folded]
    rank = _flow_rank(g, shown)
    ncols = max(rank.values(), default=0) + 1

    col_w, box_w, box_h, row_h, label_w = 2.7, 2.3, 0.62, 0.85, 2.3
    bands: list[tuple[str, float, float]] = []           # (level id, top y, bottom y)
    pos: dict[str, tuple[float, float]] = {}
    y = 0.0
    for lid in levels:
        members = [n for n in _owned(g, lid) if n in rank]
        per_col: dict[int, list[str]] = {}
        for n in members:
            per_col.setdefault(rank[n], []).append(n)
        rows = max((len(v) for v in per_col.values()), default=0)
        height = 0.5 + row_h * max(rows, 1) + 0.15
        for c, ns in per_col.items():
            for i, n in enumerate(ns):
                pos[n] = (label_w + c * col_w + col_w / 2, y - 0.35 - row_h * (i + 0.5))
        bands.append((lid, y, y - height))
        y -= height + 0.12
    width = label_w + ncols * col_w + 0.2
    fig, ax = plt.subplots(figsize=(width, -y + 0.9))
    palette = {"in-context": "#e8f1fb", "outer": "#fbefe4", "persistent": "#eef7ea"}
    for lid, top, bottom in bands:
        d = g.nodes[lid]
        ax.add_patch(FancyBboxPatch((0.05, bottom), width - 0.1, top - bottom,
                                    boxstyle="round,pad=0,rounding_size=0.12", lw=0.8,
                                    ec="#9aa7b4", fc=palette.get(d["cls"], "#f2f2f2"), zorder=0))
        ax.text(0.3, (top + bottom) / 2, f"{d['name']}\nevery {d['period_text']}\n{d['cls']}",
                fontsize=9, va="center", ha="left", weight="bold", color="#2b3a4a")
    for n, (cx, cy) in pos.items():
        ax.add_patch(FancyBboxPatch((cx - box_w / 2, cy - box_h / 2), box_w, box_h,
                                    boxstyle="round,pad=0.02,rounding_size=0.08", lw=0.8,
                                    ec="#6b7785", fc="white", zorder=2))
        ax.text(cx, cy, _box_text(g, n, states), fontsize=7.5, ha="center", va="center", zorder=3)

    def anchor(n: str) -> tuple[float, float] | None:
        return pos.get(folded.get(n, n))

    drawn: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for u, v, d in g.edges(data=True):
        if d["kind"] == "writes" and v in folded:
            continue                                   # folded into the writer's box
        if g.nodes[v]["kind"] == "state" and d["kind"] == "reads":
            continue
        if g.nodes[u]["kind"] == "state" and d["kind"] == "reads":
            continue                                   # a memory reading its own state
        drawn.setdefault((u, v), []).append(d)
    meta_bands: set[str | None] = set()  # a node's `level` may be None
    for (u, v), ds in drawn.items():
        kind, grad = ds[0]["kind"], ds[0]["grad"]
        if g.nodes[u]["kind"] == "level":            # meta: the outer level learns θ₀
            meta_bands.add(g.nodes[folded.get(v, v)].get("level"))
            continue
        a, b = anchor(u), anchor(v)
        if a is None or b is None or a == b:
            continue
        same_row = abs(a[1] - b[1]) < 1e-6
        start = (a[0] + (box_w / 2 if b[0] > a[0] else -box_w / 2 if b[0] < a[0] else 0),
                 a[1] - (0 if b[0] != a[0] else box_h / 2))
        end = (b[0] - (box_w / 2 if b[0] > a[0] else -box_w / 2 if b[0] < a[0] else 0),
               b[1] + (0 if b[0] != a[0] else box_h / 2))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, lw=1.0,
                                     color=EDGE_COLORS[kind], zorder=1,
                                     linestyle="solid" if grad == "grad" else (0, (4, 2)),
                                     connectionstyle=f"arc3,rad={0.0 if same_row else 0.08}"))
        label = ", ".join(dict.fromkeys(str(x.get("label", "")) for x in ds if x.get("label")))
        if label and len(label) <= 24:
            # near the tail, so a label never lands on the box the arrow points at
            ax.text(start[0] + 0.3 * (end[0] - start[0]), start[1] + 0.3 * (end[1] - start[1]) + 0.06,
                    label, fontsize=6.5,
                    ha="center", va="bottom", color=EDGE_COLORS[kind], zorder=4,
                    bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.5})
    # meta edges: the outer level learns the initial states θ₀ of in-context levels; one arrow per
    # band along the left margin, from the outer band to each band it meta-learns
    outer = next((b for b in bands if g.nodes[b[0]]["cls"] == "outer"), None)
    targets = [b for b in bands if g.nodes[b[0]]["name"] in meta_bands]
    if outer is not None and targets:
        x0 = 0.16
        for _lid, top, bottom in targets:
            ax.add_patch(FancyArrowPatch((x0, (outer[1] + outer[2]) / 2), (x0, (top + bottom) / 2),
                                         arrowstyle="-|>", mutation_scale=9, lw=1.0, zorder=1,
                                         color=EDGE_COLORS["meta"]))
        ax.text(x0 - 0.04, (outer[1] + outer[2]) / 2, "meta: learns θ₀", rotation=90, fontsize=7,
                ha="right", va="bottom", color=EDGE_COLORS["meta"])
    handles = [Line2D([0], [0], color=c, label=k) for k, c in EDGE_COLORS.items()]
    handles += [Line2D([0], [0], color="black", label="gradient flows"),
                Line2D([0], [0], color="black", linestyle="--", label="no gradient")]
    ax.legend(handles=handles, loc="upper right", fontsize=7.5, ncol=len(handles),
              bbox_to_anchor=(1.0, 1.0 + 0.5 / (-y + 0.9)), frameon=False)
    ax.set_title(f"{g.graph.get('name', '')}: levels, fastest on top", fontsize=10, loc="left")
    ax.set_xlim(0, width)
    ax.set_ylim(y, 0.1)
    ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none"}):     # SVG text stays text (editable)
        fig.savefig(path, format="svg" if path.suffix == ".svg" else "png", dpi=110,
                    bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# entry point


def render_graph(
    spec: ir.Spec,
    fmt: str,
    *,
    output: Path | str | None = None,
    seq_len: int | None = None,
    console: Console | None = None,
    default_png: Path | str | None = None,
) -> str | None:
    """Render the level graph of `spec` in `fmt` (text | mermaid | dot | json | png | svg).

    Text formats go to `output` if given, else to `console`; a picture goes to `output`, else
    `default_png` (with the format's suffix), else `<spec name>.png|svg`, and its path is printed. Returns the text (or the png
    path as a string).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    console = console or Console(soft_wrap=True)
    sched = schedule(spec, seq_len=seq_len)
    g = build_graph(spec, sched=sched)
    out_path = Path(output) if output is not None else None

    if fmt in ("png", "svg"):
        path = out_path or (Path(default_png) if default_png else Path(f"{spec.name}.png"))
        path = path.with_suffix(f".{fmt}") if out_path is None else path
        to_png(g, path)
        console.print(f"wrote {path}", markup=False, highlight=False)
        return str(path)

    if fmt == "text":
        renderable = to_text(spec, g, sched)
        # Render once to plain text so `output` files carry no ANSI codes.
        plain = Console(width=140, record=True, file=cast(IO[str], _Null()))  # rich only writes, flushes
        plain.print(renderable, soft_wrap=False)
        text = plain.export_text()
        if out_path is None:
            if console.is_terminal:
                console.print(renderable, soft_wrap=False)  # colours; wraps at the terminal
            else:
                # A piped console is only 80 columns wide (and rich will not print wider than
                # the console): emit the 140-column plain rendering so nothing is wrapped away.
                console.out(text, highlight=False, end="")
    else:
        text = {"mermaid": lambda: to_mermaid(g), "dot": lambda: to_dot(g),
                "json": lambda: to_json(g, sched)}[fmt]()
        if out_path is None:
            console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True, end="")
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text, encoding="utf-8")
        console.print(f"wrote {out_path}", markup=False, highlight=False)
    return text


class _Null:
    """A write-only sink for the recording console."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass
