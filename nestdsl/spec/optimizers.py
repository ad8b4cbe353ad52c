"""The outer optimizers' spec: one model per `type:` (docs/design.md §4).

Each model is the whole account of one optimizer type on the spec side: the hyper-parameters
it reads (its fields: any other field is a positioned spec error by construction), the memories
it keeps (`levels()`, for the level graph; pure Python) and the torch class that implements it
(`implementation`, a "module:Class" path the builder imports, so this file stays torch-free).
A new optimizer is one model here, one entry in `AnyOptimizer`, and its torch module.

Parameter groups (`groups:`) route a class of parameters to another type, lr or weight decay.
A group may switch type, and then it reads hyper-parameters the parent's type may not have:
`group_optimizer(parent, group)` is the group's optimizer, the group type's model built from

1. the hyper-parameters of the parent that the group's type also reads (Muon's `beta` becomes
   the AdamW group's `beta`, as the flat record always did),
2. then the group's own fields: a typed group (`{params: vectors, type: adamw, beta2: 0.99}`)
   carries its type's hyper-parameters, each defaulting to "inherit" (null).

A hyper-parameter only a group's type reads belongs on that group: written on the parent, it is
the same positioned "does not use" error as any other field the parent's type does not read,
with a hint naming the group (`spec/validate.py`). Defaults are the same for every type, so a
field inherited or defaulted has the value it had when optimizers were one flat record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, TypeAdapter, create_model

from nestdsl.spec.node import Node
from nestdsl.spec.source import UNTYPED_TAG

__all__ = [
    "GROUP_MODELS", "OPTIMIZER_COMMON", "OPTIMIZER_FIELDS", "OPTIMIZER_MODELS", "AdamWOptimizer",
    "AnyGroup", "AnyOptimizer", "DGDOptimizer", "DMGDOptimizer", "DeltaMomentumOptimizer",
    "M3Optimizer", "MomentumOptimizer", "MuonOptimizer", "Optimizer", "OptimizerType",
    "ParamGroup", "PrecondMomentumOptimizer", "SGDOptimizer", "group_optimizer", "optimizer",
    "param_group",
]

OptimizerType = Literal[
    "sgd", "momentum", "precond_momentum", "delta_momentum", "dmgd", "muon", "m3", "adamw", "dgd"
]
ParamClass = Literal["matrices", "vectors", "embeddings", "all"]

# Each shared hyper-parameter is declared once; a type's model lists the ones it reads.
Beta = Annotated[float, Field(ge=0, le=1, description="momentum decay")]
Beta2 = Annotated[float, Field(ge=0, lt=1, description="second-moment decay")]
Eps = Annotated[float, Field(gt=0, description="floor of the second-moment denominator")]
MomentumLr = Annotated[float, Field(gt=0, description="inner step of the delta/dmgd momentum memory")]
Output = Annotated[
    Literal["identity", "newton_schulz"],
    Field(description="the momentum's read as is, or through Newton-Schulz (NL Eq. 42-44; "
                      "momentum + newton_schulz is Muon)"),
]
NsSteps = Annotated[int, Field(ge=1, description="Newton-Schulz iterations")]


# ---------------------------------------------------------------------------------------------
# Level descriptions (the rows of the level graph; optim/levels.py documents the keys)


def _level(name: str, state: str, objective: str, memory: str, reads: list[str], writes: str,
           doc: str, *, period: int = 1, decay: float | None = None, lr: float | None = None,
           **extra: Any) -> dict[str, Any]:
    return {"name": name, "state": state, "objective": objective, "memory": memory,
            "period": period, "unit": "steps", "reads": reads, "writes": writes,
            "decay": decay, "lr": lr, "doc": doc, **extra}


def _newton_schulz(ns_steps: int, reads: str, name: str = "newton_schulz",
                   period: int = 1) -> dict[str, Any]:
    return _level(name, "-", "orthogonality", "linear", [reads], "params",
                  f"Newton-Schulz output: {ns_steps} inner GD steps on ||O^T O - I|| (Eq. 43-44)",
                  period=period, inner_steps=ns_steps)


def _with_output(levels: list[dict[str, Any]], output: str, ns_steps: int) -> list[dict[str, Any]]:
    """A momentum memory read through Newton-Schulz writes into the orthogonalisation level."""
    if output == "newton_schulz":
        levels[-1]["writes"] = "newton_schulz"
        levels.append(_newton_schulz(ns_steps, levels[-1]["name"]))
    return levels


# ---------------------------------------------------------------------------------------------
# Parameter groups


class ParamGroup(Node):
    """Route a class of parameters to another optimizer type / lr (Muon-style split). A group
    with a `type` also takes that type's hyper-parameters, each null by default: the value the
    optimizer sets, if its type reads it, else the type's default."""

    params: ParamClass
    type: OptimizerType | None = None
    lr: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)


def _group_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return str(kind) if kind is not None else UNTYPED_TAG


# ---------------------------------------------------------------------------------------------
# The optimizer types


class Optimizer(Node):
    """The outer optimizer as a nested memory over gradients: one model per `type`
    (`AnyOptimizer`); every type reads `lr`, `weight_decay` and `groups`."""

    type: OptimizerType
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    groups: list[AnyGroup] = Field(default_factory=list)

    #: "module:Class" of the torch optimizer (the builder passes it lr, weight_decay and the
    #: type's hyper-parameters as keywords).
    implementation: ClassVar[str]

    @classmethod
    def hyper_parameters(cls) -> tuple[str, ...]:
        """The fields this type reads besides the common ones, in declaration order."""
        return tuple(n for n in cls.model_fields if n not in OPTIMIZER_COMMON and n != "span")

    def hyper_values(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self.hyper_parameters()}

    def levels(self) -> list[dict[str, Any]]:
        """The memories this optimizer keeps, fastest first (arXiv App. B, Eqs. 38-60, §7.2)."""
        raise NotImplementedError(type(self).__name__)


class SGDOptimizer(Optimizer):
    """Plain gradient descent: one step on <W x, dL/dy> (NL Eq. 7-9)."""

    type: Literal["sgd"]
    implementation: ClassVar[str] = "nestdsl.optim.momentum:sgd"

    def levels(self) -> list[dict[str, Any]]:
        return [_level("gradient_step", "params", "dot", "linear", ["grad"], "params",
                       "plain GD: one step on <W x, dL/dy> (Eq. 7-9)", lr=self.lr)]


class MomentumOptimizer(Optimizer):
    """Momentum as a linear memory over gradients, m <- beta m - lr g (NL Eq. 33); with
    `output: newton_schulz` its read is orthogonalised (Muon without the AdamW split)."""

    type: Literal["momentum"]
    beta: Beta = 0.9
    output: Output = "identity"
    ns_steps: NsSteps = 5
    implementation: ClassVar[str] = "nestdsl.optim.momentum:MomentumSGD"

    def levels(self) -> list[dict[str, Any]]:
        return _with_output([_level("momentum", "m", "dot", "linear", ["grad"], "params",
                                    "m <- beta m - lr g (Eq. 33)", decay=self.beta, lr=self.lr)],
                            self.output, self.ns_steps)


class PrecondMomentumOptimizer(Optimizer):
    """Momentum over preconditioned gradients, P = 1/(sqrt(v)+eps) (App. B Eq. 101, Eq. 47)."""

    type: Literal["precond_momentum"]
    beta: Beta = 0.9
    beta2: Beta2 = 0.999
    eps: Eps = 1e-8
    implementation: ClassVar[str] = "nestdsl.optim.precond:PreconditionedMomentum"

    def levels(self) -> list[dict[str, Any]]:
        return [
            _level("preconditioner", "v", "l2", "elementwise", ["grad^2"], "momentum",
                   "running RMS of g, P = 1/(sqrt(v)+eps) (App. B Eq. 101)", decay=self.beta2),
            _level("momentum", "m", "dot", "linear", ["grad", "preconditioner"], "params",
                   "m <- beta m - lr P g (Eq. 47)", decay=self.beta, lr=self.lr),
        ]


class DeltaMomentumOptimizer(Optimizer):
    """Momentum with the L2 objective: the delta rule on normalised gradients (NL Eq. 49)."""

    type: Literal["delta_momentum"]
    beta: Beta = 0.9
    momentum_lr: MomentumLr = 1.0
    normalize: Literal["none", "row", "global"] = Field(
        default="row", description="gradient normalisation for the erase term")
    output: Output = "identity"
    ns_steps: NsSteps = 5
    implementation: ClassVar[str] = "nestdsl.optim.delta_momentum:DeltaMomentum"

    def levels(self) -> list[dict[str, Any]]:
        doc = f"m <- m(beta I - eta_m g^T g) - lr g, g normalised '{self.normalize}' (Eq. 49)"
        return _with_output([_level("delta_momentum", "m", "l2", "linear", ["grad"], "params", doc,
                                    decay=self.beta, lr=self.momentum_lr)],
                            self.output, self.ns_steps)


class DMGDOptimizer(Optimizer):
    """Deep Momentum GD: an MLP momentum trained by GD on <m(u), g> (NL Eq. 50)."""

    type: Literal["dmgd"]
    beta: Beta = 0.9
    momentum_lr: MomentumLr = 1.0
    hidden: int = Field(default=2, ge=1, description="hidden multiple of the MLP momentum")
    output: Output = "identity"
    ns_steps: NsSteps = 5
    implementation: ClassVar[str] = "nestdsl.optim.dmgd:DMGD"

    def levels(self) -> list[dict[str, Any]]:
        doc = f"MLP momentum (hidden x{self.hidden}) trained by GD on <m(u), g> (Eq. 50)"
        return _with_output([_level("deep_momentum", "M,W1,W2", "dot", "mlp", ["grad"], "params",
                                    doc, decay=self.beta, lr=self.momentum_lr)],
                            self.output, self.ns_steps)


class MuonOptimizer(Optimizer):
    """Muon: momentum read through Newton-Schulz, W <- W - lr NS(m) (NL Eq. 42-44)."""

    type: Literal["muon"]
    beta: Beta = 0.9
    ns_steps: NsSteps = 5
    implementation: ClassVar[str] = "nestdsl.optim.muon:Muon"

    def levels(self) -> list[dict[str, Any]]:
        return [_level("momentum", "m", "dot", "linear", ["grad"], "newton_schulz",
                       "m <- beta m + g (Eq. 42)", decay=self.beta),
                _newton_schulz(self.ns_steps, "momentum")]


class M3Optimizer(Optimizer):
    """Multi-scale Momentum Muon (NL §7.2, Algorithm 1): a fast momentum every step, a slow one
    every `slow_every` steps, each orthogonalised, over an Adam-style second moment."""

    type: Literal["m3"]
    beta: Beta = 0.9
    beta2: Beta2 = 0.999
    eps: Eps = 1e-8
    ns_steps: NsSteps = 5
    slow_every: int = Field(default=8, ge=1, description="slow momentum period in steps")
    beta_slow: float = Field(default=0.99, ge=0, le=1, description="slow momentum decay")
    alpha: float = Field(default=1.0, ge=0, description="weight of the slow momentum")
    implementation: ClassVar[str] = "nestdsl.optim.m3:M3"

    def levels(self) -> list[dict[str, Any]]:
        f = self.slow_every
        return [
            _level("fast_momentum", "m_fast", "dot", "linear", ["grad"], "newton_schulz_fast",
                   "EMA of g every step (Alg. 1 line 7)", decay=self.beta),
            _level("second_moment", "v", "l2", "elementwise", ["grad^2"], "params",
                   "EMA of g^2, Adam denominator (Alg. 1 line 8)", decay=self.beta2),
            _newton_schulz(self.ns_steps, "fast_momentum", "newton_schulz_fast"),
            _level("slow_momentum", "m_slow,acc,o_slow", "dot", "linear", ["grad_sum"],
                   "newton_schulz_slow", f"EMA of the gradient sum of the last {f} steps "
                   "(Alg. 1 line 3)", period=f, decay=self.beta_slow, weight=self.alpha),
            _newton_schulz(self.ns_steps, "slow_momentum", "newton_schulz_slow", period=f),
        ]


class AdamWOptimizer(Optimizer):
    """AdamW: two element-wise L2 memories of the gradient (App. B Eq. 105)."""

    type: Literal["adamw"]
    beta: Beta = 0.9
    beta2: Beta2 = 0.999
    eps: Eps = 1e-8
    implementation: ClassVar[str] = "nestdsl.optim.adamw:adamw"

    def levels(self) -> list[dict[str, Any]]:
        return [_level("first_moment", "exp_avg", "l2", "elementwise", ["grad"], "params",
                       "Adam m: element-wise l2 memory (App. B Eq. 105)", decay=self.beta),
                _level("second_moment", "exp_avg_sq", "l2", "elementwise", ["grad^2"], "params",
                       "Adam v (App. B Eq. 105)", decay=self.beta2)]


class DGDOptimizer(Optimizer):
    """Delta Gradient Descent on the weights, with the layer inputs' correlation (NL Eq. 57)."""

    type: Literal["dgd"]
    implementation: ClassVar[str] = "nestdsl.optim.dgd:DGD"

    def levels(self) -> list[dict[str, Any]]:
        return [_level("delta_gradient_descent", "params", "l2", "linear", ["grad", "layer_inputs"],
                       "params", "W <- W - eta' W C - eta g, C from hooked layer inputs (Eq. 57)",
                       lr=self.lr)]


_MODELS: tuple[type[Optimizer], ...] = (
    SGDOptimizer, MomentumOptimizer, PrecondMomentumOptimizer, DeltaMomentumOptimizer,
    DMGDOptimizer, MuonOptimizer, M3Optimizer, AdamWOptimizer, DGDOptimizer,
)
AnyOptimizer = Annotated[
    Union[SGDOptimizer, MomentumOptimizer, PrecondMomentumOptimizer, DeltaMomentumOptimizer,
          DMGDOptimizer, MuonOptimizer, M3Optimizer, AdamWOptimizer, DGDOptimizer],
    Field(discriminator="type"),
]
OPTIMIZER_COMMON = ("type", "lr", "weight_decay", "groups")
#: optimizer type -> its model
OPTIMIZER_MODELS: dict[str, type[Optimizer]] = {
    m.model_fields["type"].annotation.__args__[0]: m for m in _MODELS  # type: ignore[union-attr]
}
#: optimizer type -> the hyper-parameters it reads besides the common ones
OPTIMIZER_FIELDS: dict[str, tuple[str, ...]] = {k: m.hyper_parameters() for k, m in OPTIMIZER_MODELS.items()}


def _typed_group(kind: str, model: type[Optimizer]) -> type[ParamGroup]:
    """The group model of a type: ParamGroup + the type's hyper-parameters, each optional
    (null: inherit, see the module doc)."""
    fields: dict[str, Any] = {"type": (Literal[kind], ...)}
    for name in model.hyper_parameters():
        info = model.model_fields[name]
        assert info.annotation is not None  # every hyper-parameter is a declared, annotated field
        bounds = {b: getattr(m, b) for m in info.metadata for b in ("ge", "gt", "le", "lt") if hasattr(m, b)}
        fields[name] = (info.annotation | None, Field(default=None, description=info.description, **bounds))
    name = model.__name__.removesuffix("Optimizer") + "Group"
    group = create_model(name, __base__=ParamGroup, __module__=__name__, **fields)
    group.__doc__ = f"A parameter group of type `{kind}`: its hyper-parameters (null: the optimizer's)."
    return group


GROUP_MODELS: dict[str, type[ParamGroup]] = {k: _typed_group(k, m) for k, m in OPTIMIZER_MODELS.items()}
if TYPE_CHECKING:
    # The union below is built from the generated group models, which mypy cannot see; every
    # member is a ParamGroup (the typed groups subclass it).
    AnyGroup = ParamGroup
else:
    AnyGroup = Annotated[
        Union[tuple(Annotated[m, Tag(t)] for t, m in [(UNTYPED_TAG, ParamGroup), *GROUP_MODELS.items()])],
        Discriminator(_group_tag),
    ]
Optimizer.model_rebuild()
for _model in _MODELS:
    _model.model_rebuild(force=True)

_OPTIMIZER = TypeAdapter(AnyOptimizer)
_GROUP = TypeAdapter(AnyGroup)


def optimizer(**fields: Any) -> Optimizer:
    """The typed optimizer of `fields` (`optimizer(type="muon", lr=0.02)` is a MuonOptimizer),
    validated as in a spec file."""
    return _OPTIMIZER.validate_python(fields)


def param_group(**fields: Any) -> ParamGroup:
    """The typed parameter group of `fields` (`param_group(params="vectors", type="adamw")`)."""
    return _GROUP.validate_python(fields)


def group_optimizer(parent: Optimizer, group: ParamGroup) -> Optimizer:
    """The optimizer of the parameters `group` routes (module doc: inherit, then override)."""
    kind = group.type or parent.type
    model = OPTIMIZER_MODELS[kind]
    values = {n: getattr(parent, n) for n in model.hyper_parameters() if n in type(parent).model_fields}
    values.update({n: getattr(group, n) for n in model.hyper_parameters()
                   if n in type(group).model_fields and getattr(group, n) is not None})
    lr = group.lr if group.lr is not None else parent.lr
    wd = group.weight_decay if group.weight_decay is not None else parent.weight_decay
    return model(type=kind, lr=lr, weight_decay=wd, **values)
