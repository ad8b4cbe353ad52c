"""`optimizer: NAME` names a shipped optimizer spec (nestdsl/optim/specs/), from any folder and
from an installed wheel; a path still works, relative to the spec's folder first; an unknown
name is a positioned error listing the shipped names."""

from __future__ import annotations

import shutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from nestdsl.diagnostics import SpecError
from nestdsl.pipeline import load_spec
from nestdsl.spec.shipped import OPTIMIZER_DIR, optimizer_names, shipped_optimizer

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["adamw", "delta-momentum", "dmgd", "m3", "muon", "sgd-momentum"]

MINI = """\
nestdsl: 1
name: mini
model: {{width: 32, depth: 1, heads: 2, pattern: [b]}}
blocks:
  b: {{layers: [{{type: mlp}}]}}
optimizer: {optimizer}
data: {{task: copy}}
train: {{steps: 10}}
"""


def _mini(folder: Path, optimizer: str, suffix: str = ".yaml") -> Path:
    path = folder / f"mini{suffix}"
    if suffix == ".nest":
        path.write_text("nestdsl 1\nspec mini\nmodel { width 32  depth 1  heads 2  pattern [b] }\n"
                        f"block b {{ mlp }}\noptimizer \"{optimizer}\"\ndata copy\ntrain {{ steps 10 }}\n")
    else:
        path.write_text(MINI.format(optimizer=optimizer))
    return path


def test_the_shipped_names() -> None:
    assert list(optimizer_names()) == SHIPPED
    for name in SHIPPED:
        assert shipped_optimizer(name) == OPTIMIZER_DIR / f"{name}.yaml"
    assert shipped_optimizer("nope") is None


@pytest.mark.parametrize("suffix", [".yaml", ".nest"])
@pytest.mark.parametrize("name", SHIPPED)
def test_a_name_resolves_from_any_folder(name: str, suffix: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nowhere near specs/ or the package
    spec = load_spec(_mini(tmp_path, name, suffix))
    assert spec.outer_optimizer == load_spec(OPTIMIZER_DIR / f"{name}.yaml").outer_optimizer
    assert Path(spec.optimizer_file or "") == OPTIMIZER_DIR / f"{name}.yaml"


def test_a_preset_copied_elsewhere_still_loads(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "hope.yaml"
    copy.parent.mkdir()
    shutil.copy(ROOT / "specs" / "hope.yaml", copy)
    assert load_spec(copy).outer_optimizer == load_spec(ROOT / "specs" / "hope.yaml").outer_optimizer


def test_a_path_is_relative_to_the_spec_folder_first(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "opt.yaml").write_text(
        "nestdsl: 1\nname: opt\noptimizer: {type: momentum, lr: 0.1}\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_spec(_mini(tmp_path, "my/opt.yaml")).outer_optimizer.type == "momentum"
    # a file beside the spec wins over a shipped spec of the same name
    (tmp_path / "adamw").write_text("nestdsl: 1\nname: mine\noptimizer: {type: sgd, lr: 0.1}\n")
    assert load_spec(_mini(tmp_path, "adamw")).outer_optimizer.type == "sgd"


def test_an_unknown_name_is_a_positioned_error_with_the_names(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        load_spec(_mini(tmp_path, "adamx"))
    (d,) = e.value.diagnostics
    assert (d.span.line, d.span.col) == (6, 12)  # the `optimizer:` value
    assert d.message == "unknown optimizer 'adamx': not a shipped optimizer spec nor a file"
    assert d.hint is not None and d.hint.startswith("did you mean 'adamw'?")
    assert all(f"'{n}'" in d.hint for n in SHIPPED)


def test_an_old_preset_path_suggests_the_name(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        load_spec(_mini(tmp_path, "optim/muon.yaml"))
    (d,) = e.value.diagnostics
    assert d.message == "optimizer spec 'optim/muon.yaml' not found"
    assert d.hint is not None and d.hint.startswith("did you mean 'muon'")


def test_the_optimizer_specs_are_package_data() -> None:
    # `pip install .` (not editable) ships them: pyproject's package-data covers every file.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["nestdsl"]
    package = ROOT / "nestdsl"
    files = [p.relative_to(package).as_posix() for p in OPTIMIZER_DIR.iterdir() if p.is_file()]
    assert files and all(any(fnmatch(f, pat) for pat in patterns) for f in files), (files, patterns)
    assert OPTIMIZER_DIR.is_relative_to(package)


def test_names_are_what_the_presets_use() -> None:
    for path in sorted((ROOT / "specs").rglob("*.yaml")):
        opt = yaml.safe_load(path.read_text()).get("optimizer")
        assert not isinstance(opt, str) or opt in SHIPPED, f"{path.name}: optimizer: {opt}"


@pytest.mark.parametrize("suffix", [".yaml", ".nest"])
def test_set_changes_one_field_of_a_named_optimizer(suffix: str, tmp_path: Path) -> None:
    """`--set optimizer.lr=0.01` on `optimizer: adamw` keeps AdamW's other fields and equals
    writing the optimizer out with that lr."""
    path = _mini(tmp_path, "adamw", suffix)
    changed = load_spec(path, overrides=["optimizer.lr=0.01"])
    shipped = load_spec(OPTIMIZER_DIR / "adamw.yaml").optimizer
    assert changed.outer_optimizer == shipped.model_copy(update={"lr": 0.01})
    written = tmp_path / "written.yaml"
    section = yaml.safe_dump({"optimizer": {**shipped.model_dump(mode="json", exclude_unset=True),
                                            "lr": 0.01}})
    written.write_text(MINI.format(optimizer="{}").replace("optimizer: {}\n", section))
    assert load_spec(written).outer_optimizer == changed.outer_optimizer


def test_set_on_a_named_optimizer_checks_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(_mini(tmp_path, "adamw"), overrides=["optimizer.lrr=0.01"])
    (diag,) = err.value.diagnostics
    assert "unknown field 'lrr'" in diag.message and "'lr'" in (diag.hint or "")
    assert diag.span.file == "--set optimizer.lrr=0.01"
