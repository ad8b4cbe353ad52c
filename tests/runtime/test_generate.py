"""Generation: the incremental forward (any split, one token at a time) equals the whole-sequence
forward for every architecture; sampling keeps to temperature / top-k / top-p; `nestdsl
generate` prints a continuation of a prompt from a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import cli

import nestdsl
from nestdsl.runtime.generate import ByteCodec, Sampling, generate, sample_next

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURES = ["hope", "hope-attention", "titans-lmm", "titans-mal", "titans-mag", "ttt-mlp",
                 "transformer", "samba", "gated-deltanet", "deltanet"]


def preset_model(name: str) -> Any:
    torch.manual_seed(0)
    model = nestdsl.compile(ROOT / "specs" / f"{name}.yaml", compile=False).model.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # zero-initialised gates and norms get values: every path matters
        for pname, p in model.named_parameters():
            if "gates" in pname or "norm" in pname:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_token_by_token_equals_the_full_forward(name):
    model = preset_model(name)
    tokens = torch.randint(0, model.vocab, (2, 41), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        state, steps = None, []
        for t in range(tokens.shape[1]):
            out, state = model.forward_incremental(tokens[:, t:t + 1], state)
            steps.append(out)
        # and uneven segments that straddle chunk boundaries (chunk 16 in these presets)
        state, parts = None, []
        for a, b in ((0, 7), (7, 23), (23, 24), (24, 41)):
            out, state = model.forward_incremental(tokens[:, a:b], state)
            parts.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_incremental_state_is_bounded_by_the_chunk():
    model = preset_model("titans-lmm")
    state = None
    with torch.no_grad():
        for t in range(40):
            _, state = model.forward_incremental(torch.tensor([[t % 256]]), state)
    pending = [s[1].shape[1] for block in state for s in block if isinstance(s, tuple)]
    assert pending and all(n == 40 % 16 for n in pending)   # the inputs since the last boundary


def test_greedy_generation_equals_argmax_of_the_full_forward():
    model = preset_model("hope")
    prompt = list(range(60, 79))
    got = list(generate(model, prompt, Sampling(max_tokens=12, temperature=0)))
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):     # the slow, obvious way: the whole sequence again per token
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[len(prompt):]


def test_sampling_rules():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits[:1], Sampling(temperature=0), g).tolist() == [4]
    top2 = sample_next(logits, Sampling(temperature=1.0, top_k=2), g)
    assert set(top2.tolist()) == {0, 4}
    # probabilities 0.63, 0.23, …: top_p 0.7 keeps the two likeliest
    nucleus = sample_next(logits, Sampling(temperature=1.0, top_p=0.7), g)
    assert set(nucleus.tolist()) == {0, 4}
    free = sample_next(logits, Sampling(temperature=1.0), g)
    assert set(free.tolist()) == {0, 1, 2, 3, 4}
    share = (free == 4).float().mean().item()
    assert abs(share - logits[0].softmax(-1)[4].item()) < 0.03
    again = [sample_next(logits[:8], Sampling(temperature=1.0), torch.Generator().manual_seed(5))
             for _ in range(2)]
    assert torch.equal(*again)


def test_byte_codec_escapes():
    codec = ByteCodec()
    assert codec.encode("ab\\x01é") == [97, 98, 1, 0xC3, 0xA9]
    assert codec.decode([97, 1, 0, 0xC3, 0xA9, 10]) == "a\\x01\\x00é\n"


COPY = """\
nestdsl: 1
name: copy-tiny
model: {vocab: 256, width: 32, depth: 1, heads: 2, pattern: [block]}
memories:
  mem: {kind: mlp, objective: l2, level: c, rule: {kind: gd, lr: {learned: sigmoid, scale: 0.1}, clip: 1.0}}
levels: {c: {every: 4 tokens}}
blocks:
  block:
    layers: [{type: memory, memory: mem}, {type: mlp, hidden: 2}]
optimizer: {type: adamw, lr: 0.003}
data: {task: copy, length: 4, seq_len: 16, batch: 2}
train: {steps: 2, log_every: 1, ckpt_every: 2, compile: false}
"""


def test_cli_generate(tmp_path):
    spec = tmp_path / "copy.yaml"
    spec.write_text(COPY)
    run = tmp_path / "run"
    assert cli("train", spec, "--out", run, "-q").exit_code == 0
    r = cli("generate", "--ckpt", run, "--prompt", "abcd\\x01", "--max-tokens", "6",
            "--temperature", "0")
    assert r.exit_code == 0, r.output
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("abcd\\x01") and len(line) > len("abcd\\x01")
    ids = cli("generate", spec, "--ckpt", run, "--prompt-ids", "97,98,1", "--max-tokens", "3",
              "--ids", "--seed", "3")
    assert ids.exit_code == 0, ids.output
    head, tail = ids.stdout.strip().splitlines()[-1].split("|")
    assert head.strip() == "97,98,1" and len(tail.split()) == 3
    for args, fragment in (([], "exactly one of"), (["--prompt", "a", "--prompt-ids", "1"], "exactly one of"),
                           (["--prompt-ids", "1,x"], "comma-separated"),
                           (["--prompt-ids", "300"], "vocab is 256"),
                           (["--prompt", "a", "--top-p", "0"], "--top-p")):
        r = cli("generate", "--ckpt", run, *args)
        assert r.exit_code == 2 and fragment in r.output, (args, r.output)
        assert "Traceback" not in r.output and "internal error" not in r.output
