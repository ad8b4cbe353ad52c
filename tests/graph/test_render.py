"""Renderers: every format on every preset names every level; hope shows periods, edge kinds,
grad/stop and read modes; png is a real PNG; the CLI's `graph` command exits 0 per format."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from nestdsl.graph import build_graph, schedule
from nestdsl.graph.render import render_graph
from nestdsl.spec import ir
from nestdsl.spec.shipped import OPTIMIZER_DIR

Loader = Callable[[str | Path], ir.Spec]
SPECS = Path(__file__).resolve().parents[2] / "specs"
# model presets, and the optimizer specs shipped in the package (`optimizer: adamw`)
PRESETS = sorted(SPECS.rglob("*.yaml")) + sorted(OPTIMIZER_DIR.glob("*.yaml"))


def _id(p: Path) -> str:
    return str(p.relative_to(SPECS)) if p.is_relative_to(SPECS) else f"optim/{p.name}"
TEXT_FORMATS = ("text", "mermaid", "dot", "json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _render(spec: ir.Spec, fmt: str, **kw: object) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=200, soft_wrap=True, color_system=None)
    render_graph(spec, fmt, console=console, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def _level_names(spec: ir.Spec) -> list[str]:
    return [lv.name for lv in schedule(spec).levels]


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@pytest.mark.parametrize("path", PRESETS, ids=_id)
def test_every_format_names_every_level(path: Path, fmt: str, load_preset: Loader) -> None:
    spec = load_preset(path)
    out = _render(spec, fmt)
    for name in _level_names(spec):
        assert name in out, f"{fmt} output of {path.name} lacks level {name}"


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_hope_shows_periods_edges_and_read_modes(hope: ir.Spec, fmt: str) -> None:
    out = _render(hope, fmt)
    for period in ("16 tokens", "64 tokens", "4 steps", "1 step"):
        assert period in out, period
    for kind in ("reads", "generates", "writes", "meta", "optimizes"):
        assert kind in out, kind
    assert "grad" in out and "stop" in out
    # each memory's read mode, as the spec sets it: titans reads after its write, the
    # projections read their chunk-start state
    if fmt == "json":
        reads = {n["id"]: n["read"] for n in json.loads(out)["nodes"] if n["kind"] == "memory"}
        assert reads["memory:titans"] == "after"
        assert {reads[f"memory:projection.{r}"] for r in ("k", "v", "eta", "alpha")} == {"chunk"}
    else:
        lines = out.splitlines()
        for name, read in (("memory titans", "after"), ("memory projection.k", "chunk")):
            line = next(ln for ln in lines if name in ln and "read:" in ln)
            assert f"read: {read}" in line, line


def test_text_has_tree_and_timeline(hope: ir.Spec) -> None:
    out = _render(hope, "text")
    lines = out.splitlines()
    # Levels appear fastest first in the tree.
    idx = {n: next(i for i, ln in enumerate(lines) if f"level {n} ·" in ln)
           for n in ("chunk", "cms_mid", "step", "cms_slow")}
    assert idx["chunk"] < idx["cms_mid"] < idx["step"] < idx["cms_slow"]
    assert "firing timeline" in out
    row = next(ln for ln in lines if ln.strip().startswith("cms_slow") and "|" in ln)
    assert row.split()[-1] == "...|...|"
    assert "Hope Eq. 88" in out


def test_json_is_node_link_and_stable(hope: ir.Spec) -> None:
    a, b = _render(hope, "json"), _render(hope, "json")
    assert a == b
    data = json.loads(a)
    g = nx.node_link_graph(data, edges="edges")
    ref = build_graph(hope)
    assert set(g.nodes) == set(ref.nodes)
    assert g.number_of_edges() == ref.number_of_edges()
    assert data["schedule"]["tokens_per_step"] == 1024
    assert [n["id"] for n in data["nodes"]][0] == "level:chunk"  # fastest level first


def test_output_file_and_seq_len(hope: ir.Spec, tmp_path: Path) -> None:
    target = tmp_path / "g.mmd"
    _render(hope, "mermaid", output=target)
    assert target.read_text().startswith("flowchart LR")
    out = _render(hope, "text", seq_len=256)
    assert "tokens 16, 32, 48, …, 256" in out


@pytest.mark.parametrize("rel", ["hope.yaml", "samba.yaml", OPTIMIZER_DIR / "m3.yaml"])
def test_png_is_a_png(rel: str | Path, tmp_path: Path, load_preset: Loader) -> None:
    target = tmp_path / "out.png"
    out = _render(load_preset(rel), "png", output=target)
    assert str(target) in out
    assert target.read_bytes()[:8] == PNG_MAGIC


def test_png_default_path(hope: ir.Spec, tmp_path: Path) -> None:
    target = tmp_path / "default.png"
    _render(hope, "png", default_png=target)
    assert target.read_bytes()[:8] == PNG_MAGIC


def test_unknown_format(hope: ir.Spec) -> None:
    with pytest.raises(ValueError):
        render_graph(hope, "pdf")


def test_picture_has_a_band_per_level_and_svg_too(hope: ir.Spec, tmp_path: Path) -> None:
    """Levels as bands (fastest on top), readable at 100%: the picture is taller than wide
    enough to stack the bands, and the SVG names every level and memory in text."""
    png = Path(render_graph(hope, "png", output=tmp_path / "g.png"))
    import matplotlib.image as mpimg

    h, w = mpimg.imread(png).shape[:2]
    assert w <= 1600 and h >= 200 * 4            # 7 level bands of readable height, not a strip
    svg = Path(render_graph(hope, "svg", output=tmp_path / "g.svg")).read_text()
    for name in ("chunk", "cms_fast", "cms_mid", "cms_slow", "titans", "projection.k"):
        assert name in svg, name


@pytest.mark.parametrize("fmt", [*TEXT_FORMATS, "png"])
def test_cli_graph(fmt: str, tmp_path: Path) -> None:
    from nestdsl.cli import app

    args = ["graph", str(SPECS / "hope.yaml"), "--format", fmt]
    if fmt == "png":
        args += ["--output", str(tmp_path / "hope.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    if fmt == "png":
        assert (tmp_path / "hope.png").read_bytes()[:8] == PNG_MAGIC
    else:
        for name in ("chunk", "cms_fast", "cms_mid", "cms_slow", "step"):
            assert name in result.output
