"""Training on token shards through `nestdsl train` (a tiny spec, a few steps): it runs, a resume
after a crash ends with the parameters of an uninterrupted run, `nestdsl eval` scores the val
split; and the text task with a local tokenizer.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from shard_helpers import DOCS, spec_text, train_tokenizer, write_txt_folder
from typer.testing import CliRunner

import nestdsl.runtime.checkpoint as ck
from nestdsl.cli import app
from nestdsl.data.prepare import prepare
from nestdsl.runtime.tasks import DataError, make_task
from nestdsl.spec import ir

runner = CliRunner()


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def params(run: Path) -> dict[str, torch.Tensor]:
    latest = ck.find_latest(run)
    assert latest is not None
    return load_file(str(latest / "model.safetensors"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    src = write_txt_folder(tmp / "corpus", DOCS * 4)
    prepare(src, tmp / "shards", shard_tokens=400, val_fraction=0.125)
    return tmp / "shards"


class _Crash(BaseException):
    pass


def test_train_resume_and_eval_on_shards(tmp_path, shards, monkeypatch):
    # the spec names the folder relative to its own folder, and runs from elsewhere
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "shards").symlink_to(shards)
    spec = tmp_path / "specs" / "s.yaml"
    spec.write_text(spec_text("{task: shards, path: shards, seq_len: 16, batch: 2}", steps=6))
    monkeypatch.chdir(tmp_path)
    r = cli("train", spec, "--out", tmp_path / "A", "-q", "--no-compile")
    assert r.exit_code == 0, r.output

    real = ck.save_checkpoint

    def crash_after_step_2(run_dir: Any, step: int, **kw: Any) -> Any:
        out = real(run_dir, step, **kw)
        if step == 2:
            raise _Crash
        return out

    monkeypatch.setattr(ck, "save_checkpoint", crash_after_step_2)
    with pytest.raises(_Crash):
        cli("train", spec, "--out", tmp_path / "B", "-q", "--no-compile")
    monkeypatch.setattr(ck, "save_checkpoint", real)
    assert ck.find_latest(tmp_path / "B").name == "step_000002"
    r = cli("train", spec, "--out", tmp_path / "B", "-q", "--no-compile", "--resume")
    assert r.exit_code == 0, r.output
    a, b = params(tmp_path / "A"), params(tmp_path / "B")
    assert ck.find_latest(tmp_path / "B").name == "step_000006" and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_set_data_to_shards_on_a_copy_spec(tmp_path, shards):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(spec_text("{task: copy, length: 4, seq_len: 16, batch: 2}", steps=4))
    r = cli("train", spec, "--set", f"data={{task: shards, path: '{shards}', seq_len: 16, batch: 2}}",
            "--out", tmp_path / "run", "-q", "--no-compile")
    assert r.exit_code == 0, r.output
    assert ck.find_latest(tmp_path / "run").name == "step_000004"
    r = cli("eval", "--ckpt", tmp_path / "run", "--batches", 2)    # the val split of the shards
    assert r.exit_code == 0, r.output
    assert "text · tiny" in r.output and "bits_per_byte" in r.output   # shards are text
    r = cli("train", spec, "--set", f"data={{task: shards, path: '{tmp_path / 'none'}'}}",
            "--out", tmp_path / "run2", "-q", "--no-compile")
    assert r.exit_code == 2 and "shards folder not found" in r.output and "Traceback" not in r.output


def test_text_task_with_a_tokenizer_json(tmp_path, monkeypatch):
    tok_path = train_tokenizer(tmp_path / "spec" / "tok.json")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(DOCS * 3), encoding="utf-8")
    node = ir.TextData(task="text", path=str(corpus), tokenizer=str(tok_path), seq_len=16, batch=2)
    task = make_task(node)
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(tok_path))
    want = np.asarray(tok.encode("".join(DOCS * 3), add_special_tokens=False).ids)
    assert task.vocab_size == 300 and task.num_tokens == len(want)
    assert np.array_equal(np.concatenate([task._splits["train"], task._splits["val"]]), want)
    assert task.decode(task.encode("naïve café")) == "naïve café"
    assert task.bytes_per_token == pytest.approx(corpus.stat().st_size / len(want))

    # a relative tokenizer path is found next to the spec, as the data path is
    spec = tmp_path / "spec" / "t.yaml"
    spec.write_text(spec_text(f"{{task: text, path: '{corpus}', tokenizer: tok.json, seq_len: 16, "
                              f"batch: 2}}", steps=2).replace("vocab: 256", "vocab: 300"))
    monkeypatch.chdir(tmp_path)
    r = cli("train", spec, "--out", tmp_path / "run", "-q", "--no-compile")
    assert r.exit_code == 0, r.output

    with pytest.raises(DataError, match="tokenizer file not found"):
        make_task(node.model_copy(update={"tokenizer": str(tmp_path / "nope.json")}))
    with pytest.raises(DataError, match="vocab_size is for tokenizer: bpe"):
        make_task(node.model_copy(update={"vocab_size": 512}))


def test_tokenizer_field_validation(tmp_path):
    from nestdsl.diagnostics import SpecError
    from nestdsl.pipeline import load_spec

    def check(tokenizer: str) -> str:
        path = tmp_path / "s.yaml"
        path.write_text(spec_text(f"{{task: text, path: x.txt, tokenizer: {tokenizer}}}"))
        with pytest.raises(SpecError) as e:
            load_spec(path)
        return e.value.render()

    assert "a tokenizer file must be a tokenizer.json (a path ending in .json), got 'tok.txt'" in check("tok.txt")
    assert "invalid value 'bpee' for 'data.tokenizer'" in check("bpee")   # unchanged for words
    path = tmp_path / "ok.yaml"
    path.write_text(spec_text("{task: text, path: x.txt, tokenizer: my/tokenizer.json}"))
    assert load_spec(path).data.tokenizer == "my/tokenizer.json"
