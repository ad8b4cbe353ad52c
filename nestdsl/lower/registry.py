"""Layer type → builder registry.

A builder turns one IR layer into an `nn.Module` following `nestdsl.lower.layer.Layer`:

    @register_layer("cms")
    def build_cms(ctx: BuildContext, node: ir.CMSLayer, name: str) -> nn.Module: ...

Builders for the layer types of this package register on import; the types provided by other
modules (`self_modifying` in `nestdsl.lower.hope`, `cms` in `nestdsl.lower.cms`) are imported on
first use. A type whose module does not exist yet is a positioned `SpecError`, not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
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


def provider_available(type_: str) -> bool:
    """Whether the module providing `type_` exists (it may still fail to import)."""
    if type_ in LAYER_BUILDERS:
        return True
    mod = PROVIDERS.get(type_)
    return mod is not None and importlib.util.find_spec(mod) is not None


def get_builder(type_: str, ctx: BuildContext, node: Any) -> LayerBuilder:
    if type_ not in LAYER_BUILDERS:
        mod = PROVIDERS.get(type_)
        if mod is not None and importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)      # registers its builders; its own errors propagate
    if type_ not in LAYER_BUILDERS:
        raise ctx.error(node, f"layer type '{type_}' cannot be lowered yet: no builder is registered",
                        f"module {PROVIDERS.get(type_, '?')} is not available in this installation")
    return LAYER_BUILDERS[type_]
