"""Lowering: spec → trainable torch model (`compile_spec`), its plan, levels and schedule.

    system = nestdsl.compile("specs/titans-lmm.yaml", compile=False)
    logits = system.model(tokens)                        # (B, T, vocab)
    logits, state = system.model.forward_stream(tokens, state)
    loss = system.model.loss(tokens, targets, mask)
    system.plan, system.levels, system.schedule, system.param_count

Layer builders register by type in `nestdsl.lower.registry` (`register_layer`).
"""

from __future__ import annotations

# The built-in layer types register themselves on import (hope/cms load lazily on first use).
from nestdsl.lower import memory as _memory  # noqa: F401
from nestdsl.lower import mlp as _mlp  # noqa: F401
from nestdsl.lower import titans as _titans  # noqa: F401
from nestdsl.lower.compiler import CompiledSystem, LevelInfo, compile_spec
from nestdsl.lower.layer import PlanRow
from nestdsl.lower.registry import LAYER_BUILDERS, register_layer

__all__ = ["CompiledSystem", "LevelInfo", "PlanRow", "compile_spec", "register_layer", "LAYER_BUILDERS"]
