"""Reproduction suites (nestdsl/reproduce): suite files as data, the runner, the report."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.pipeline import load_spec
from nestdsl.reproduce.job import Job, _forgetting
from nestdsl.reproduce.report import judge, render_report, report_names
from nestdsl.reproduce.runner import plan, run_suite
from nestdsl.reproduce.suite import Suite, SuiteError, load_suite, suite_names

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "examples" / "data" / "tinyshakespeare.txt"


def test_the_shipped_suites_are_the_issue_s_five() -> None:
    assert set(suite_names()) == {"lm", "ablations", "niah", "continual", "optim"}


@pytest.mark.parametrize("name", suite_names())
def test_every_run_of_every_shipped_suite_is_a_valid_spec(name: str) -> None:
    suite = load_suite(name)
    jobs = plan(suite)
    assert len(jobs) == len(suite.rows) * len(suite.seeds) * (len(suite.variants) if suite.kind == "niah" else 1)
    assert len({j.id for j in jobs}) == len(jobs)                 # one file per run
    for job in plan(suite, seeds=suite.seeds[:1]):
        if suite.kind == "optim":
            from nestdsl.optim import optimizer_spec

            optimizer_spec(job.spec)
            continue
        variant = [f"data.variant={job.variant}"] if job.variant is not None else []
        spec = load_spec(job.spec, overrides=[*job.overrides, *variant])   # the checker accepts it
        assert spec.data is not None and spec.data.task == (suite.data or {}).get("task")
        pre = job.options.get("pretrain")
        if pre:                                   # the model a row starts from checks too
            load_spec(pre["spec"], overrides=pre["overrides"])


def test_the_corpus_ships_with_the_project() -> None:
    assert CORPUS.is_file() and 1_000_000 < CORPUS.stat().st_size <= 2_000_000


def test_suite_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="unknown suite 'lmm'.*lm"):
        load_suite("lmm")
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: x\ntitle: t\npaper: p\nkind: lm\nsteps: 3\nrows: [{name: a, spec: transformer}]\n"
                   "claims: [{claim: c, better: a, than: [b]}]\n")
    with pytest.raises(SuiteError, match=r"bad.yaml.*unknown rows \['b'\]"):
        load_suite(bad)
    bad.write_text("suite: x\ntitle: t\npaper: p\nkind: lm\nsteps: 3\nrows: [{name: a, spec: x, sett: []}]\n")
    with pytest.raises(SuiteError, match=r"bad.yaml: rows.0.sett: Extra inputs"):
        load_suite(bad)


def test_forgetting_is_the_drop_from_each_task_s_best() -> None:
    acc = [[0.9, 0.1, 0.0], [0.5, 0.8, 0.1], [0.3, 0.6, 0.7]]
    f = _forgetting(acc, lower_is_better=False)
    assert f["forgetting"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    assert f["final_avg"] == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    bpb = [[2.0, 5.0], [3.0, 2.5]]                    # lower is better: worse = higher
    assert _forgetting(bpb, lower_is_better=True)["forgetting"] == pytest.approx(1.0)


def _meta(claims: list[dict[str, object]], kind: str = "lm") -> dict[str, object]:
    return {"kind": kind, "claims": claims, "rows": [{"name": n} for n in "ABC"]}


def _recs(row: str, values: list[float]) -> list[dict[str, object]]:
    return [{"row": row, "seed": s, "bits_per_byte": v} for s, v in enumerate(values)]


def test_a_verdict_needs_a_difference_beyond_the_seeds_spread() -> None:
    recs = _recs("A", [1.0, 1.1, 0.9]) + _recs("B", [2.0, 2.1, 1.9]) + _recs("C", [1.05, 0.95, 1.0])
    (win, lose, tie, both) = judge(_meta([
        {"claim": "A beats B", "better": "A", "than": ["B"]},
        {"claim": "B beats A", "better": "B", "than": ["A"]},
        {"claim": "A beats C", "better": "A", "than": ["C"]},
        {"claim": "A beats B and C", "better": "A", "than": ["B", "C"]},
    ]), recs)
    assert (win.verdict, lose.verdict, tie.verdict) == ("reproduced", "not reproduced", "inconclusive")
    assert both.verdict == "inconclusive" and "vs C: inconclusive" in both.detail
    one_seed = judge(_meta([{"claim": "c", "better": "A", "than": ["B"]}]), _recs("A", [1.0]) + _recs("B", [2.0]))
    assert one_seed[0].verdict == "inconclusive" and "fewer than 2 seeds" in one_seed[0].detail


def test_diverged_runs_count_as_missing_not_as_zero() -> None:
    recs = _recs("A", [1.0, 1.1]) + _recs("B", [2.0, 2.1]) + [{"row": "A", "seed": 2, "diverged": "nan"}]
    (v,) = judge(_meta([{"claim": "c", "better": "A", "than": ["B"]}]), recs)
    assert v.verdict == "reproduced"


def _tiny_suite(tmp_path: Path, kind: str = "lm") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "suite: tiny\ntitle: Tiny\npaper: none\nkind: lm\n"
        f"data: {{task: text, path: {CORPUS}, seq_len: 32, batch: 2}}\nsteps: 3\nseeds: [0, 1]\n"
        "eval_batches: 2\n"
        "rows:\n  - {name: Transformer, spec: transformer, set: [model.depth=1], paper: 25.21}\n"
        "  - {name: Deep, spec: transformer, set: [model.depth=2]}\n"
        "claims: [{claim: deeper is better, better: Deep, than: [Transformer]}]\n")
    return path


def test_the_runner_resumes_and_the_report_needs_only_the_records(tmp_path: Path) -> None:
    suite = load_suite(_tiny_suite(tmp_path))
    calls: list[str] = []
    crashed: list[str] = []

    def fake(job: Job) -> dict[str, object]:
        calls.append(job.id)
        if job.id == "deep-s1" and not crashed:
            crashed.append(job.id)
            return {"id": job.id, "error": "killed"}          # a crash: not stored
        return {"id": job.id, "job": asdict(job), "row": job.row, "seed": job.seed, "params": 10,
                "tokens_per_s": 1.0,
                "bits_per_byte": 3.0 - job.seed * 0.01 - (1.0 if job.row == "Deep" else 0.0),
                "perplexity": 8.0, "curve": [{"step": 1, "loss": 2.0}]}

    results = tmp_path / "results"
    run_suite(suite, results, jobs=2, runner=fake, say=lambda m: None)
    assert sorted(calls) == ["deep-s0", "deep-s1", "transformer-s0", "transformer-s1"]
    assert not (results / "tiny" / "deep-s1.json").exists()
    calls.clear()
    records = run_suite(suite, results, jobs=2, runner=fake, say=lambda m: None)
    assert calls == ["deep-s1"] and len(records) == 4               # only the missing run again
    calls.clear()
    run_suite(suite, results, jobs=2, runner=fake, say=lambda m: None, rows=["Deep"], scale=2.0)
    assert sorted(calls) == ["deep-s0", "deep-s1"]                  # another budget: run again
    (tmp_path / "tiny.yaml").unlink()                               # the report reads the records alone
    text = render_report(results, ["tiny", "lm"])
    assert "| Transformer | 10 | 2.995 ± 0.007 |" in text and "| 25.21 |" in text
    assert "| deeper is better | **reproduced** |" in text
    assert "Not run yet: `nestdsl reproduce lm`" in text


def test_reproduce_runs_a_suite_from_the_command_line(tmp_path: Path) -> None:
    path = _tiny_suite(tmp_path)
    results, report = tmp_path / "results", tmp_path / "reproduction.md"
    args = ["reproduce", str(path), "--results", str(results), "--report", str(report), "--seed", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rec = json.loads((results / "tiny" / "transformer-s0.json").read_text())
    assert rec["steps"] == 3 and 0 < rec["bits_per_byte"] < 9 and rec["params"] > 0
    assert math.isclose(rec["perplexity"], 2 ** rec["bits_per_byte"])
    assert "| Transformer |" in report.read_text()
    r = CliRunner().invoke(app, args)                               # everything done: nothing re-run
    assert "0 to run" in r.output


def test_reproduce_without_a_suite_lists_them() -> None:
    r = CliRunner().invoke(app, ["reproduce"])
    assert r.exit_code == 0 and all(n in r.output for n in suite_names())


def test_dry_run_prints_every_run(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["reproduce", "ablations", "--dry-run", "--seed", "0"])
    assert r.exit_code == 0, r.output
    assert "w-o-dgd-plain-gd-s0: 300 steps" in r.output and "memories.titans.rule.kind=gd" in r.output


def test_a_suite_is_a_typed_model() -> None:
    s = Suite.model_validate({"suite": "x", "title": "t", "paper": "p", "kind": "niah", "steps": 2,
                              "rows": [{"name": "a", "spec": "hope"}]})
    assert s.lengths == [1, 2, 4, 8] and s.seeds == [0, 1, 2]


def test_the_optim_suite_s_run_tunes_then_measures_every_noise_level() -> None:
    from nestdsl.reproduce.optim import run_optim

    suite = load_suite("optim")
    row = suite.row("Delta momentum")
    options = {"problem": suite.problem, "noise": suite.noise, "reference_noise": suite.reference_noise,
               "lr": row.lr[:2]}
    rec = run_optim(row.spec, options, steps=20, seed=0)
    assert rec["lr"] in row.lr[:2] and set(rec["at_noise"]) == {"0.0", "0.3", "1.0"}
    assert rec["final_loss"] == rec["at_noise"]["0.3"] == min(rec["lr_grid"].values())
    assert all(0 < v < 10 for v in rec["at_noise"].values())


def test_a_row_can_start_from_a_model_pre_trained_in_the_same_job(tmp_path: Path) -> None:
    """The continual suite's §7.3 row: pre-train a Transformer (gelu MLPs), then start a
    Hope-Attention model's CMS from it and train on the task sequence."""
    from nestdsl.reproduce.job import run_job

    suite = load_suite("continual")
    (job,) = plan(suite, scale=0.02, seeds=[0], rows=["Hope-Attention, CMS from the pre-trained Transformer"])
    assert job.options["pretrain"]["steps"] == 3 and job.steps == 9
    rec = run_job(job)
    assert "diverged" not in rec and len(rec["matrix"]) == 3 and len(rec["matrix"][0]) == 3
    assert 0.0 <= rec["final_avg"] <= 1.0 and rec["params"] > 0


def test_the_committed_report_is_the_generated_one() -> None:
    """docs/reproduction.md is generated from benchmarks/results/reproduce/ alone and cannot drift
    from it: regenerate with `nestdsl reproduce --report-only`."""
    results = ROOT / "benchmarks" / "results" / "reproduce"
    expected = render_report(results, report_names(results, suite_names()))
    assert (ROOT / "docs" / "reproduction.md").read_text() == expected, \
        "stale: run nestdsl reproduce --report-only"


def test_forgetting_is_not_judged_for_a_row_that_never_learned() -> None:
    learned = [[1.0, 0.0], [0.6, 0.9]]                       # forgot 0.4 of a task it knew
    never = [[0.05, 0.0], [0.05, 0.9]]                      # nothing to forget: forgetting 0
    recs = [{"row": row, "seed": s, "metric": "answer_acc", "matrix": m,
             **_forgetting(m, lower_is_better=False)}
            for s in range(3) for row, m in (("A", never), ("B", learned))]
    (v,) = judge(_meta([{"claim": "A forgets less", "better": "A", "than": ["B"]}], kind="continual"), recs)
    assert v.verdict == "inconclusive" and "A never learned the earlier tasks" in v.detail
