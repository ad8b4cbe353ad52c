"""A nestdsl memory inside a plain PyTorch model, used as a streaming layer.

`nestdsl.ops.memory_scan` is the functional core of every memory layer the compiler emits: give
it q, k, v (B, H, T, d) and the update rule, get the outputs and the memory state. Here it is a
DeltaNet-style layer (dot objective + DGD = the delta rule, NL paper Eq. 57) in a two-layer
byte model trained on a copy task, and the trained model is then run as a stream: feeding the
sequence in two segments, passing the state along, gives the same outputs as one call.

    python examples/memory_layer_in_pytorch.py [--steps 150]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestdsl.ops import MemoryState, memory_scan


class DeltaMemoryLayer(nn.Module):
    """y = W_o · memory_scan(q, k, v) with a learned per-token write strength β_t."""

    def __init__(self, width: int, heads: int, chunk_size: int = 8) -> None:
        super().__init__()
        self.heads, self.chunk_size = heads, chunk_size
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.beta = nn.Linear(width, heads)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: Tensor, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        q, k = F.normalize(F.silu(q), dim=-1), F.normalize(F.silu(k), dim=-1)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)                      # (B, H, T)
        o, state = memory_scan(q, k, v, memory="linear", objective="dot", rule="dgd", lr=beta,
                               chunk_size=self.chunk_size, read="after", state=state)
        return self.out(o.transpose(1, 2).reshape(B, T, D)), state


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 64, width: int = 64, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(DeltaMemoryLayer(width, heads) for _ in range(depth))
        self.mlps = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width),
                                                nn.GELU(), nn.Linear(4 * width, width))
                                  for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: Tensor, states: list | None = None) -> tuple[Tensor, list]:
        x, new = self.embed(tokens), []
        for i, (layer, mlp, norm) in enumerate(zip(self.layers, self.mlps, self.norms, strict=True)):
            y, st = layer(norm(x), None if states is None else states[i])
            x = x + y
            x = x + mlp(x)
            new.append(st)
        return self.head(x), new


def copy_batch(gen: torch.Generator, batch: int = 16, length: int = 8, vocab: int = 64) -> Tensor:
    """`x1..xL SEP x1..xL`: the second half is predictable only by recalling the first."""
    src = torch.randint(2, vocab, (batch, length), generator=gen)
    return torch.cat([src, torch.ones(batch, 1, dtype=torch.long), src], dim=1)


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, gen = TinyLM(), torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    L = 8
    losses = []
    for _ in range(args.steps):
        seq = copy_batch(gen, length=L)
        logits, _ = model(seq[:, :-1])
        loss = F.cross_entropy(logits[:, L:].reshape(-1, logits.shape[-1]), seq[:, L + 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    # streaming: two segments of 8 tokens (one chunk each), the state carried = one call
    seq = copy_batch(torch.Generator().manual_seed(1), length=L)[:, :-1]
    with torch.no_grad():
        whole, _ = model(seq)
        first, states = model(seq[:, :8])
        rest, _ = model(seq[:, 8:], states)
    streamed = torch.cat([first, rest], dim=1)
    result = {"first_loss": losses[0], "final_loss": sum(losses[-10:]) / 10,
              "stream_max_abs_diff": (streamed - whole).abs().max().item()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
