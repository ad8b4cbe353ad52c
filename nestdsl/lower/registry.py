"""Layer type → builder registry.

A builder turns one IR layer into an `nn.Module` following `nestdsl.lower.layer.Layer`:

    @register_layer("cms")
    def build_cms(ctx: BuildContext, node: ir.CMSLayer, name: str) -> nn.Module: ...

Each layer type's module (`PROVIDERS`) is imported on first use and registers its builder.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from nestdsl.lower.common import BuildContext

LayerBuilder = Callable[[BuildContext, Any, str], nn.Module]

LAYER_BUILDERS: dict[str, LayerBuilder] = {}

# Module that registers each layer type (imported lazily, so optional modules may be missing).
PROVIDERS: dict[str, str] = {
    "memory": "nestdsl.lower.memory",
    "mal": "nestdsl.lower.titans",
    "mag": "nestdsl.lower.titans",
    "mlp": "nestdsl.lower.mlp",
    "self_modifying": "nestdsl.lower.hope",
    "cms": "nestdsl.lower.cms",
}


def register_layer(type_: str) -> Callable[[LayerBuilder], LayerBuilder]:
    """Decorator: register `fn` as the builder of layer type `type_` (last registration wins)."""

    def deco(fn: LayerBuilder) -> LayerBuilder:
        LAYER_BUILDERS[type_] = fn
        return fn

    return deco


def get_builder(type_: str) -> LayerBuilder:
    """The builder of a layer type (the IR's layer types are closed: every one has a provider)."""
    if type_ not in LAYER_BUILDERS:
        importlib.import_module(PROVIDERS[type_])      # registers its builders
    return LAYER_BUILDERS[type_]
