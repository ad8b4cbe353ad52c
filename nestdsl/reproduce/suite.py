"""A reproduction suite, as data: which runs reproduce one of the paper's claims, and how to score them.

A suite file (`examples/reproduce/<suite>.yaml`) names a scoring `kind`, the task every run
trains on, the budget, the seeds, and its rows — each a spec (a preset name or a path) with
`--set` overrides and the paper's published figure for that row — and the claims the rows test
("Hope beats Transformer++": `better: Hope, than: [Transformer++]`). An ablation is a row with
overrides on the same spec, never a copied spec file.

    kind        scored by (nestdsl/reproduce/job.py)            lower is better
    lm          validation bits per byte, perplexity            yes
    niah        answer accuracy at 1x, 2x, 4x, 8x the length    no
    continual   accuracy on every task after each switch        (forgetting: yes)
    optim       final loss of a regression under noisy grads    yes

Nothing here imports torch: `nestdsl reproduce --list` and the report stay light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["Claim", "Row", "Suite", "SuiteError", "load_suite", "suite_names"]

Kind = Literal["lm", "niah", "continual", "optim"]

#: Where the shipped suites live (the repository's examples/reproduce).
SUITE_DIR = Path(__file__).resolve().parents[2] / "examples" / "reproduce"


class SuiteError(ValueError):
    """A suite file that cannot be read: says which file and which field."""

    user_error = True   # the command line prints it as one line and exits 2


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pretrain(_Model):
    """A model trained before the row (same seed), whose checkpoint the row starts from."""

    spec: str = Field(description="a preset name or a path relative to the suite file")
    set: list[str] = Field(default_factory=list)
    steps: int = Field(ge=1)
    data: dict[str, Any] | None = Field(
        default=None, description="its task (default: a continual suite's first task)")


class Row(_Model):
    """One configuration: a spec plus overrides, trained once per seed."""

    name: str = Field(min_length=1, description="the row's label in the tables and the claims")
    spec: str = Field(description="a preset name (specs/<name>.yaml) or a path relative to the suite file")
    set: list[str] = Field(default_factory=list, description="`--set key=value` overrides, after the suite's")
    paper: float | list[float | None] | None = Field(
        default=None, description="the paper's figure(s) for this row (one per column of the kind; "
        "null where the paper has none)")
    lr: list[float] = Field(default_factory=list, description="optim: the learning rates to tune over")
    pretrain: Pretrain | None = Field(
        default=None, description="train this first (per seed) and start the row from it "
        "(`train.init_from`: its CMS levels from the pre-trained MLPs, NL §7.3)")
    note: str | None = None


class Claim(_Model):
    """A direction the paper reports: row `better` scores better than every row in `than`."""

    claim: str
    better: str
    than: list[str] = Field(min_length=1)
    metric: str | None = Field(default=None, description="the record field compared (default: the kind's)")


class Suite(_Model):
    suite: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    title: str
    paper: str = Field(description="where the published figures come from (table, scale, metric)")
    kind: Kind
    data: dict[str, Any] | None = Field(default=None, description="the task every row trains on (`data:`)")
    steps: int = Field(ge=1, description="optimizer steps per run at --scale 1")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    set: list[str] = Field(default_factory=list, description="overrides applied to every row")
    lengths: list[int] = Field(default_factory=lambda: [1, 2, 4, 8],
                               description="niah: evaluation lengths, multiples of the training length")
    variants: list[int] = Field(default_factory=lambda: [1], description="niah: S-NIAH variants (1, 2, 3)")
    eval_batches: int = Field(default=8, ge=1)
    problem: dict[str, int] | None = Field(default=None, description="optim: the regression's sizes")
    noise: list[float] = Field(default_factory=lambda: [0.0], description="optim: gradient-noise levels")
    reference_noise: float = Field(default=0.0, description="optim: the noise level lrs are tuned at")
    rows: list[Row] = Field(min_length=1)
    claims: list[Claim] = Field(default_factory=list)
    notes: str | None = None
    file: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _claims_name_rows(self) -> Suite:
        names = [r.name for r in self.rows]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"row names must be unique: {dup}")
        for c in self.claims:
            unknown = [n for n in [c.better, *c.than] if n not in names]
            if unknown:
                raise ValueError(f"claim '{c.claim}' names unknown rows {unknown}; rows: {names}")
        return self

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def spec_path(self, row: Row) -> str:
        """The row's spec file: a path relative to the suite file, else a preset name
        (`specs/<name>.yaml`; for an optim suite, a shipped optimizer spec name)."""
        if row.spec.endswith((".yaml", ".yml", ".nest")):
            base = Path(self.file).parent if self.file else Path(".")
            return str((base / row.spec).resolve())
        if self.kind == "optim":
            return row.spec
        return str(Path(__file__).resolve().parents[2] / "specs" / f"{row.spec}.yaml")

    def pretrain_of(self, row: Row) -> dict[str, Any] | None:
        """What a job needs to pre-train the row's starting checkpoint (or None)."""
        if row.pretrain is None:
            return None
        p = row.pretrain
        data = p.data
        if data is None and self.data is not None and self.data.get("task") == "continual":
            data = {**self.data["tasks"][0], "seq_len": self.data["seq_len"], "batch": self.data["batch"]}
        spec = self.spec_path(Row(name="pretrain", spec=p.spec))
        return {"spec": spec, "steps": p.steps,
                "overrides": [*([self.data_override(data)] if data else []), *p.set]}

    def data_override(self, data: dict[str, Any] | None = None) -> str | None:
        """The suite's task (or `data`) as one `data=...` override, relative text paths made
        absolute."""
        data = dict(data if data is not None else self.data or {})
        if not data:
            return None
        base = Path(self.file).parent if self.file else Path(".")
        for d in [data, *data.get("tasks", [])]:
            if d.get("task") == "text" and not Path(str(d["path"])).is_absolute():
                d["path"] = str((base / str(d["path"])).resolve())
        return "data=" + yaml.safe_dump(data, default_flow_style=True, width=10_000).strip()


def suite_names(folder: Path = SUITE_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name (`lm`) or a suite file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SuiteError(f"unknown suite '{name_or_path}'; shipped suites: {', '.join(suite_names())}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SuiteError(f"{path}: cannot read the suite: {e}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite is a mapping (suite:, title:, kind:, rows: ...)")
    try:
        return Suite.model_validate({**raw, "file": str(path)})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "<suite>"
        raise SuiteError(f"{path}: {where}: {first['msg']}") from None
