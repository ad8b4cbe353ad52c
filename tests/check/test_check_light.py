"""`nestdsl check` stays light: no torch import, and well under a second per preset."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOPE = ROOT / "specs" / "hope.yaml"

pytestmark = pytest.mark.skipif(not HOPE.exists(), reason="specs/hope.yaml not there yet")


def test_check_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from nestdsl.cli import main\n"
        "try:\n"
        f"    main(['check', {str(HOPE)!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('torch', 'numpy', 'networkx', 'matplotlib') if m in sys.modules]\n"
        "assert 'torch' not in sys.modules, heavy\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_one_preset_is_fast() -> None:
    # Whole command, interpreter start-up and imports included (~0.4 s on an idle 2-core
    # machine); the bound is loose because CI machines are shared.
    best = min(_timed_check() for _ in range(3))
    assert best < 2.5, f"nestdsl check took {best:.2f}s"


def test_checking_each_preset_is_fast() -> None:
    # The front end itself, imports excluded: parse + validate + semantic checks.
    from nestdsl.pipeline import load_spec

    load_spec(HOPE)  # warm imports
    for path in sorted((ROOT / "specs").rglob("*.yaml")):
        t0 = time.perf_counter()
        load_spec(path)
        assert time.perf_counter() - t0 < 0.25, path


def _timed_check() -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "nestdsl.cli", "check", str(HOPE)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return time.perf_counter() - t0
