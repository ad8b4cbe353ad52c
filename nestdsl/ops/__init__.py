"""nestdsl.ops — functional kernels: associative memories, attention, conv, Newton–Schulz.

Public API::

    o, state = memory_scan(q, k, v, memory="linear" | MLPMemory(...), objective="l2", rule="gd",
                           lr=1.0, retention=None, momentum=None, chunk_size=16,
                           read="after", state=None, kernel="auto")
"""

from .attention import causal_attention
from .conv import causal_conv1d
from .kernels import compiled_step
from .linear_chunked import linear_chunk_step
from .memory import memory_scan
from .mlp import MLPMemory, mlp_forward
from .mlp_chunked import mlp_chunk_step
from .newton_schulz import newton_schulz
from .objectives import OBJECTIVES, Objective, get_objective, register_objective
from .state import MemoryState

__all__ = [
    "memory_scan",
    "MemoryState",
    "MLPMemory",
    "mlp_forward",
    "mlp_chunk_step",
    "linear_chunk_step",
    "compiled_step",
    "Objective",
    "OBJECTIVES",
    "register_objective",
    "get_objective",
    "causal_attention",
    "causal_conv1d",
    "newton_schulz",
]
