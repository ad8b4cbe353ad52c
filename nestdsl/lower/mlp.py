"""The `mlp` layer: a Transformer MLP (= a CMS with one persistent level of period one step).

    silu:  y = (silu(x W_1) ⊙ x W_3) W_2        (SwiGLU, hidden = hidden × width)
    other: y = act(x W_1) W_2
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nestdsl.lower.common import BuildContext, Compiled, compile_status, count_params
from nestdsl.lower.layer import PlanRow
from nestdsl.lower.registry import register_layer
from nestdsl.ops.mlp import _act
from nestdsl.spec import ir


class MLPBlock(nn.Module):
    def __init__(self, ctx: BuildContext, node: ir.MLPLayer, name: str) -> None:
        super().__init__()
        D, Hd = ctx.width, node.hidden * ctx.width
        self.name, self.activation = name, node.activation
        self.w1 = nn.Linear(D, Hd, bias=False)
        self.w3 = nn.Linear(D, Hd, bias=False) if node.activation == "silu" else None
        self.w2 = nn.Linear(Hd, D, bias=False)
        self._cfg = ctx.compile
        self.run = Compiled(self._run, f"{name}.mlp", ctx.compile)

    def _run(self, x: Tensor) -> Tensor:
        if self.w3 is not None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(_act(self.w1(x), self.activation))

    def forward(self, x: Tensor, state: None = None) -> tuple[Tensor, None]:
        """Stateless: the state is always None."""
        return self.run(x), None

    def plan(self) -> list[PlanRow]:
        impl = "SwiGLU" if self.w3 is not None else f"{self.activation} MLP"
        status, why = compile_status(self._cfg, [self.run.name], "one graph")
        return [PlanRow(name=self.name, kind="mlp", implementation=f"{impl} (hidden {self.w1.out_features})",
                        params=count_params(self), writes="—", compiled=status, notes=[why],
                        update="persistent level, period 1 step: updated by the outer optimizer")]


@register_layer("mlp")
def build_mlp_layer(ctx: BuildContext, node: ir.MLPLayer, name: str) -> nn.Module:
    return MLPBlock(ctx, node, name)
