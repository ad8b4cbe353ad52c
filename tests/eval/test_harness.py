"""lm-evaluation-harness on a nestdsl run (`runtime/harness.py`, `nestdsl lm-eval`): the numbers
lm_eval gets equal an independent forward (model(tokens) → log_softmax → gather) and `nestdsl
eval --per-document`; greedy generation equals `runtime.generate` at temperature 0; a local
lm_eval task (multiple choice + rolling log-likelihood) reports what our own scores imply.

One tiny run (a chunked delta-rule memory block and a global attention block on a byte
corpus) is trained once for the module; nothing is downloaded."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.runtime import harness

runner = CliRunner()
NL = 10          # the prefix of every request for a byte run: the newline byte

SPEC = """\
nestdsl: 1
name: harness-tiny
model: {vocab: 256, width: 32, depth: 2, heads: 2, pattern: [mem_block, attn_block]}
levels: {c: {every: 4 tokens}}
memories:
  delta: {kind: linear, objective: l2, rule: {kind: gd, lr: {learned: sigmoid}}, level: c}
  attn: {kind: attention}
blocks:
  mem_block:
    layers: [{type: memory, memory: delta}, {type: mlp, hidden: 2}]
  attn_block:
    layers: [{type: memory, memory: attn, conv: 0, qk_norm: false, output_gate: false},
             {type: mlp, hidden: 2}]
optimizer: {type: adamw, lr: 0.03}
data: {task: text, path: corpus.txt, seq_len: 32, batch: 4}
train: {steps: 60, log_every: 20, ckpt_every: 60, compile: false}
"""
WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in trees".split()
DOCS = ["the cat sat on a mat", "birds sang in the park",
        "the dog ran to the park while birds sang in the trees and the cat sat on the mat",
        "a"]
MC = [("the cat sat on a", ["mat", "xqz", "park"], 0), ("the dog ran to the", ["park", "zzv", "q"], 0),
      ("birds sang in", ["trees", "kkk", "the"], 0), ("the cat", ["sat", "jjj", "vvv"], 1),
      ("a dog and the", ["cat", "mmm", "xxx"], 2), ("while birds", ["sang", "ppp", "qqq"], 0)]


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained run folder (60 steps, about 4 s) with its corpus beside the spec."""
    root = tmp_path_factory.mktemp("harness")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(300)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    (root / "spec.yaml").write_text(SPEC)
    r = cli("train", root / "spec.yaml", "--out", root / "run", "-q")
    assert r.exit_code == 0, r.output
    return root / "run"


@pytest.fixture(scope="module")
def model(run):
    from nestdsl.runtime.evaluate import load_model
    from nestdsl.runtime.run_spec import from_checkpoint

    return load_model(from_checkpoint(run).spec, run, "cpu")


@pytest.fixture(scope="module")
def lm(run):
    pytest.importorskip("lm_eval")
    return harness.register()(ckpt=str(run), device="cpu", batch_size=3)


def oracle(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Sum of log p(continuation | context) and greedy, from one plain forward."""
    tokens = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = model(tokens[:, :-1]).float().log_softmax(-1)[0]
    target = tokens[0, 1:]
    scored = torch.zeros(len(target), dtype=torch.bool)
    scored[len(context) - 1:] = True
    lp = logp.gather(-1, target[:, None])[:, 0]
    greedy = (logp.argmax(-1) == target) | ~scored
    return float(lp[scored].double().sum()), bool(greedy.all())


def ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def close(a: float, b: float, rel: float = 1e-5) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


def requests(kind: str, args: list[tuple]) -> list[Any]:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def greedy_ids(model, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


# -- the scoring functions (no lm_eval) --------------------------------------------------------


def test_score_pairs_equals_a_plain_forward_batched_and_streamed(model):
    pairs = [([NL, *ids("the cat")], ids(" sat on a mat")), ([NL], ids(DOCS[2])),
             ([NL, *ids("a")], ids(" dog")), ([NL], []), ([NL], ids("x"))]
    want = [oracle(model, list(c), list(t)) if t else (0.0, True) for c, t in pairs]
    for kw in ({}, {"batch_size": 2}, {"batch_size": 5, "segment": 7}, {"segment": 1}):
        got = harness.score_pairs(model, pairs, **kw)
        for (g, gg), (w, wg) in zip(got, want, strict=True):
            assert close(g, w) and gg == wg, (kw, got, want)
    with pytest.raises(ValueError, match="prefix"):
        harness.score_pairs(model, [([], [1, 2])])


def test_codec_and_prefix_of_a_byte_run(run):
    from nestdsl.runtime.run_spec import from_checkpoint

    codec = harness.run_codec(from_checkpoint(run).spec, run)
    assert codec.encode("é\\x01") == [0xC3, 0xA9, 92, 120, 48, 49]    # literal: no \xNN escape
    assert harness.prefix_token(codec) == NL and harness.prefix_token(codec, 3) == 3

    class Task:                     # a data task with its own tokenizer and end-of-text token
        eot_token_id = 7

        def encode(self, text):
            return [ord(c) % 50 for c in text]

        def decode(self, ids):
            return "".join(chr(97 + i % 26) for i in ids)

    wrapped = harness.ObjectCodec(Task())
    assert harness.prefix_token(wrapped) == 7 and wrapped.decode([0, 1]) == "ab"


def test_codec_of_a_bpe_run_is_its_saved_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    from nestdsl.pipeline import load_spec
    from nestdsl.runtime.tasks.text import TextTask

    rng = random.Random(1)
    (tmp_path / "corpus.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(3000)))
    spec = tmp_path / "bpe.yaml"
    spec.write_text(SPEC.replace("vocab: 256", "vocab: 300").replace(
        "path: corpus.txt,", "path: corpus.txt, tokenizer: bpe, vocab_size: 300,"))
    run = tmp_path / "run"
    task = TextTask(tmp_path / "corpus.txt", tokenizer="bpe", vocab_size=300, cache_dir=run)
    (tmp_path / "corpus.txt").unlink()      # the saved tokenizer is enough: no corpus needed
    codec = harness.run_codec(load_spec(spec), run)
    text = "the cat sat on the mat"
    assert isinstance(codec, harness.ObjectCodec) and codec.encode(text) == task.encode(text)
    assert codec.decode(codec.encode(text)) == text and len(codec.encode(text)) < len(text)
    assert harness.prefix_token(codec) == task.encode("\n")[-1]


# -- lm_eval's requests --------------------------------------------------------------------------


def test_loglikelihood_equals_the_oracle_and_the_difference_of_rolling_sums(lm, model):
    cont_greedy = greedy_ids(model, [NL, *ids("the cat")], 3)
    assert max(cont_greedy) < 128                      # ASCII: a string encodes back to the ids
    greedy_text = bytes(cont_greedy).decode()
    pairs = [("the cat", " sat on a mat"), ("", "the dog"), ("the cat", greedy_text),
             ("birds ", "sang"), ("a", "\u00e9t\u00e9")]
    got = lm.loglikelihood(requests("loglikelihood", pairs))
    for (ctx, cont), (ll, greedy) in zip(pairs, got, strict=True):
        if ctx.endswith(" "):           # lm_eval's convention: the space moves to the continuation
            ctx, cont = ctx[:-1], " " + cont
        want, want_greedy = oracle(model, [NL, *ids(ctx)], ids(cont))
        assert close(ll, want) and greedy == want_greedy, (ctx, cont, ll, want)
    assert got[2][1] is True and got[0][1] is False
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling",
                                                [("the cat sat on a mat",), ("the cat",)]))
    assert close(got[0][0], rolling[0] - rolling[1])


def test_rolling_equals_nestdsl_eval_per_document(lm, model, run, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = tmp_path / "per-doc.jsonl"
    r = cli("eval", "--ckpt", run, "--task", "text", "--path", docs, "--per-document", out)
    assert r.exit_code == 0, r.output
    assert "each document in one pass" in r.output and f"wrote {out}" in r.output.replace("\n", "")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["tokens"] for row in rows] == [len(ids(d)) for d in DOCS]
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in DOCS]))
    rel = [abs(g - row["loglikelihood"]) / abs(row["loglikelihood"]) for g, row in zip(got, rows, strict=True)]
    assert max(rel) < 1e-5, rel
    for d, g in zip(DOCS, got, strict=True):
        assert close(g, oracle(model, [NL], ids(d))[0])
    # a .txt file: one document per non-empty line; a folder: one per .txt file
    (tmp_path / "lines.txt").write_text("\n".join(DOCS[:2]) + "\n\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, d in enumerate(DOCS[:2]):
        (folder / f"{i}.txt").write_text(d)
    for path in (tmp_path / "lines.txt", folder):
        r = cli("eval", "--ckpt", run, "--task", "text", "--path", path, "--per-document", out)
        assert r.exit_code == 0, r.output
        lls = [json.loads(line)["loglikelihood"] for line in out.read_text().splitlines()]
        assert len(lls) == 2 and all(close(a, b) for a, b in zip(lls, got[:2], strict=True))
    r = cli("eval", "--ckpt", run, "--task", "niah", "--per-document", out)
    assert r.exit_code == 2 and "needs --task text" in r.output


def test_rolling_windows_with_max_length(run, model):
    pytest.importorskip("lm_eval")
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    lm8 = harness.register()(ckpt=str(run), spec=str(run.parent / "spec.yaml"), device="cpu",
                             max_length=8)
    doc = DOCS[2]
    want = sum(oracle(model, list(c), list(t))[0] for c, t in map(
        make_disjoint_window, get_rolling_token_windows(ids(doc), NL, 8, 1)))
    got = lm8.loglikelihood_rolling(requests("loglikelihood_rolling", [(doc,)]))[0]
    assert close(got, want)
    full = oracle(model, [NL], ids(doc))[0]
    assert not close(got, full)            # windows of 8 tokens see less than the whole document


def test_generate_until_is_greedy_generation_and_stops(lm, model):
    from nestdsl.runtime.generate import Sampling, generate

    prompt = "the dog ran"
    free = list(generate(model, [NL, *ids(prompt)], Sampling(max_tokens=24, temperature=0)))
    text = bytes(free).decode("utf-8", errors="replace")
    stop = text[2:4]                                  # a string the greedy text reaches
    cut = text.find(stop)
    assert 0 < cut < len(text), text                  # (the run learned more than spaces)
    got = lm.generate_until(requests("generate_until", [
        (prompt, {"until": [], "max_gen_toks": 24}),
        (prompt, {"until": [stop], "max_gen_toks": 24}),
        (prompt, {"until": "zzzz", "max_gen_toks": 3, "do_sample": False}),
    ]))
    assert got == [text, text[:cut], bytes(free[:3]).decode("utf-8", errors="replace")]


# -- lm_eval end to end on a local task -------------------------------------------------------


def write_tasks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "mc.jsonl", "w") as f:
        for q, c, a in MC:
            f.write(json.dumps({"question": q, "choices": c, "answer": a}) + "\n")
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (folder / "nest_mc.yaml").write_text(f"""\
task: nest_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (folder / "nest_ppl.yaml").write_text(f"""\
task: nest_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'docs.jsonl'}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
""")
    return folder


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for k, v in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"),
                 ("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets")),
                 ("HF_HOME", str(tmp_path / "hf-home"))):
        monkeypatch.setenv(k, v)


def test_simple_evaluate_on_a_local_task(lm, run, tmp_path, offline):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = write_tasks(tmp_path / "tasks")
    res = lm_eval.simple_evaluate(
        model="nestdsl", model_args=f"ckpt={run},device=cpu,batch_size=4",
        tasks=["nest_mc", "nest_ppl"], task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        bootstrap_iters=0, log_samples=False)
    assert res is not None
    results = res["results"]
    # accuracy from our own log-likelihoods: the argmax choice (" " + choice after the question)
    right = []
    for q, choices, answer in MC:
        lls = [ll for ll, _ in lm.loglikelihood(requests("loglikelihood",
                                                         [(q, " " + c) for c in choices]))]
        right.append(max(range(len(choices)), key=lls.__getitem__) == answer)
    assert results["nest_mc"]["acc,none"] == pytest.approx(sum(right) / len(right))
    # bits per byte from `loglikelihood_rolling` (what `nestdsl eval --per-document` reports)
    lls = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in DOCS]))
    bpb = -sum(lls) / math.log(2) / sum(len(ids(d)) for d in DOCS)
    assert results["nest_ppl"]["bits_per_byte,none"] == pytest.approx(bpb, rel=1e-6)



def test_cli_nestdsl_lm_eval(run, tmp_path, offline, monkeypatch):
    """The real lm_eval command line through `nestdsl lm-eval`, in this process; lm_eval's own
    task index is switched off (indexing its thousands of built-in tasks is 20 s of a run)."""
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
    tasks = write_tasks(tmp_path / "tasks")

    class LocalTasksOnly(lm_eval_tasks.TaskManager):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval_tasks, "TaskManager", LocalTasksOnly)
    monkeypatch.chdir(tmp_path)
    r = cli("lm-eval", "--model", "nestdsl", "--model_args", f"ckpt={run},device=cpu",
            "--tasks", "nest_mc", "--include_path", str(tasks))
    assert r.exit_code == 0, r.output[-3000:]
    assert "nest_mc" in r.output and "acc" in r.output, r.output


def test_missing_lm_eval_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"pip install 'nestdsl\[eval\]'"):
        harness._lm_class.__wrapped__()
    monkeypatch.setattr(harness, "register", harness._lm_class.__wrapped__)
    r = cli("lm-eval", "--model", "nestdsl")
    assert r.exit_code == 2, r.output
    assert r.output.strip() == "error: lm-eval is not installed: pip install 'nestdsl[eval]'"


def test_the_entry_point_names_the_class():
    """lm-eval releases with plugin discovery load `[project.entry-points."lm_eval.models"]`
    as a lazy placeholder; it must resolve to the registered class (0.4.13 ignores it)."""
    pytest.importorskip("lm_eval")
    import importlib.metadata as md
    import tomllib

    from lm_eval.api.model import LM
    from lm_eval.api.registry import Registry, get_model, model_registry

    root = Path(__file__).resolve().parents[2]
    value = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"][
        "lm_eval.models"]["nestdsl"]
    cls = harness.register()
    assert get_model("nestdsl") is cls and "hf" in model_registry     # the built-ins stay
    fresh: Registry = Registry("model", base_cls=LM)
    fresh.register("nestdsl", target=md.EntryPoint(name="nestdsl", value=value,
                                                   group="lm_eval.models"))
    assert fresh.get("nestdsl") is cls
