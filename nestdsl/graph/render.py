"""Renderers of the level graph: text (rich tree + firing timeline), mermaid, dot, json, png.

Every format shows every level with its period and class (fastest first), every edge with its
kind and grad/stop, and every memory's read mode; `nestdsl graph` calls `render_graph`.
The png is drawn by matplotlib with a networkx layout (no graphviz binary needed); matplotlib is
imported only there, so the other formats stay light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx
from rich.console import Console, Group
from rich.text import Text
from rich.tree import Tree

from nestdsl.graph.level_graph import build_graph, levels_in_order
from nestdsl.graph.schedule import Schedule, schedule
from nestdsl.spec import ir

__all__ = ["FORMATS", "render_graph", "to_dot", "to_json", "to_mermaid", "to_png", "to_text"]

FORMATS = ("text", "mermaid", "dot", "json", "png")

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


def _owned(g: nx.MultiDiGraph, lid: str) -> list[str]:
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


def _edge_rows(g: nx.MultiDiGraph) -> list[tuple[str, str, str, str, str]]:
    """(kind, grad, source, target, label) for every edge, in a stable order."""
    rows = [(d["kind"], d["grad"], u, v, d.get("label", "")) for u, v, d in g.edges(data=True)]
    return sorted(rows, key=lambda r: (EDGE_ORDER.index(r[0]), r[2], r[3]))


# ---------------------------------------------------------------------------------------------
# text


def to_text(spec: ir.Spec, g: nx.MultiDiGraph, sched: Schedule) -> Group:
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


def to_mermaid(g: nx.MultiDiGraph) -> str:
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


def to_dot(g: nx.MultiDiGraph) -> str:
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


def to_json(g: nx.MultiDiGraph, sched: Schedule) -> str:
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


def to_png(g: nx.MultiDiGraph, path: Path) -> Path:
    """Draw the graph: one column per level, fastest on the left; solid = grad, dashed = stop."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    levels = levels_in_order(g)
    col = {g.nodes[lid]["name"]: i for i, lid in enumerate(levels)}
    for _, d in g.nodes(data=True):
        d["_col"] = d["rank"] if d["kind"] == "level" else col.get(d.get("level"), len(levels))
    # networkx's multipartite layout orders the columns (one per level, fastest on the left);
    # inside a column we lay rows out ourselves so every level header sits on the top row and
    # each state sits beside the memory that writes it (the write/read pair reads horizontally).
    base = nx.multipartite_layout(g, subset_key="_col", align="vertical", scale=1.0)
    for _, d in g.nodes(data=True):
        d.pop("_col", None)
    xs = sorted({round(base[lid][0], 9) for lid in levels})
    xcol = {x: i * 1.0 for i, x in enumerate(xs)}
    pos: dict[str, tuple[float, float]] = {}
    tallest = 1
    for lid in levels:
        x = xcol[round(base[lid][0], 9)]
        pos[lid] = (x, 0.0)
        owned = _owned(g, lid)
        states = {n for n in owned if g.nodes[n]["kind"] == "state"}
        computations = [n for n in owned if n not in states]
        row = 0
        for n in computations:
            row += 1
            pos[n] = (x, -float(row))
            for s in [s for s in states if g.has_edge(s, n)]:  # s --reads--> n: n owns s
                pos[s] = (x + 0.42, -float(row))
                states.discard(s)
        for s in sorted(states):  # a state whose reader lives elsewhere: its own row
            row += 1
            pos[s] = (x + 0.42, -float(row))
        tallest = max(tallest, row + 1)

    ncols = max(1, len(levels))
    fig, ax = plt.subplots(figsize=(max(8.0, 3.6 * ncols), max(5.0, 1.1 * tallest + 1.5)))
    labels = {}
    for n, d in g.nodes(data=True):
        if d["kind"] == "level":
            labels[n] = f"{d['name']}\nevery {d['period_text']}\n{d['cls']}"
        elif d["kind"] in ("memory", "cms_stage"):
            labels[n] = f"{d['label']}\nread: {d['read']}"
        elif d["kind"] == "state":
            labels[n] = f"state\n{d['label']}"
        else:
            labels[n] = d["label"]
    level_nodes = [n for n in g.nodes if g.nodes[n]["kind"] == "level"]
    other = [n for n in g.nodes if n not in set(level_nodes)]
    nx.draw_networkx_nodes(g, pos, nodelist=level_nodes, node_color="#cfe3f7", node_shape="s",
                           node_size=2600, ax=ax)
    nx.draw_networkx_nodes(g, pos, nodelist=other, node_color="#f2f2f2", node_size=1200, ax=ax,
                           edgecolors="#999999")
    nx.draw_networkx_labels(g, pos, labels=labels, font_size=6, ax=ax)

    # Collapse parallel edges (u, v) into one drawn arrow with all their labels.
    simple: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for u, v, d in g.edges(data=True):
        simple.setdefault((u, v), []).append(d)
    for grad, style in (("grad", "solid"), ("stop", "dashed")):
        for kind, color in EDGE_COLORS.items():
            el = [e for e, ds in simple.items() if ds[0]["kind"] == kind and ds[0]["grad"] == grad]
            if el:
                nx.draw_networkx_edges(g, pos, edgelist=el, edge_color=color, style=style,
                                       arrows=True, arrowsize=10, node_size=1800, ax=ax,
                                       connectionstyle="arc3,rad=0.12")
    edge_labels = {e: "\n".join(f"{d['kind']}/{d['grad']}" for d in ds) for e, ds in simple.items()}
    nx.draw_networkx_edge_labels(nx.DiGraph(list(simple)), pos, edge_labels=edge_labels,
                                 font_size=5, ax=ax, connectionstyle="arc3,rad=0.12",
                                 bbox={"alpha": 0.6, "color": "white", "lw": 0})
    handles = [Line2D([0], [0], color=c, label=k) for k, c in EDGE_COLORS.items()]
    handles += [Line2D([0], [0], color="black", label="grad"),
                Line2D([0], [0], color="black", linestyle="--", label="stop")]
    ax.legend(handles=handles, loc="lower right", fontsize=7)
    title = " | ".join(f"{g.nodes[lid]['name']}: {g.nodes[lid]['period_text']}" for lid in levels)
    ax.set_title(f"{g.graph.get('name', '')} — levels (fastest first): {title}", fontsize=8, wrap=True)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
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
    """Render the level graph of `spec` in `fmt` (text | mermaid | dot | json | png).

    Text formats go to `output` if given, else to `console`; png goes to `output`, else
    `default_png`, else `<spec name>.png`, and its path is printed. Returns the text (or the png
    path as a string).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    console = console or Console(soft_wrap=True)
    sched = schedule(spec, seq_len=seq_len)
    g = build_graph(spec, sched=sched)
    out_path = Path(output) if output is not None else None

    if fmt == "png":
        path = out_path or (Path(default_png) if default_png else Path(f"{spec.name}.png"))
        to_png(g, path)
        console.print(f"wrote {path}", markup=False, highlight=False)
        return str(path)

    if fmt == "text":
        renderable = to_text(spec, g, sched)
        # Render once to plain text so `output` files carry no ANSI codes.
        plain = Console(width=140, record=True, file=_Null())
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
