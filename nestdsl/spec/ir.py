"""The nestdsl intermediate representation (IR): pydantic v2 models for a whole spec.

Both surface syntaxes (YAML and `.nest`) parse to a plain document (dicts, lists, scalars,
with a position for every node) and are then validated into these models. Every node carries
its source `span` (excluded from equality, serialisation and the JSON schema), so later stages
can point diagnostics at file:line:col.

Concepts follow docs/design.md §2: memories (associative maps with an objective and an update rule),
levels (clocks), CMS chains, blocks of layers, the model, the outer optimizer, data and train.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    WithJsonSchema,
    model_serializer,
)
from pydantic_core import PydanticCustomError

# Re-exported (`X as X`): the spec's types are named as `ir.X` throughout nestdsl.
from nestdsl.spec.node import Node as Node
from nestdsl.spec.optimizers import GROUP_MODELS as GROUP_MODELS
from nestdsl.spec.optimizers import OPTIMIZER_COMMON as OPTIMIZER_COMMON
from nestdsl.spec.optimizers import OPTIMIZER_FIELDS as OPTIMIZER_FIELDS
from nestdsl.spec.optimizers import OPTIMIZER_MODELS as OPTIMIZER_MODELS
from nestdsl.spec.optimizers import AdamWOptimizer as AdamWOptimizer
from nestdsl.spec.optimizers import AnyGroup as AnyGroup
from nestdsl.spec.optimizers import AnyOptimizer as AnyOptimizer
from nestdsl.spec.optimizers import DeltaMomentumOptimizer as DeltaMomentumOptimizer
from nestdsl.spec.optimizers import DGDOptimizer as DGDOptimizer
from nestdsl.spec.optimizers import DMGDOptimizer as DMGDOptimizer
from nestdsl.spec.optimizers import M3Optimizer as M3Optimizer
from nestdsl.spec.optimizers import MomentumOptimizer as MomentumOptimizer
from nestdsl.spec.optimizers import MuonOptimizer as MuonOptimizer
from nestdsl.spec.optimizers import Optimizer as Optimizer
from nestdsl.spec.optimizers import OptimizerType as OptimizerType
from nestdsl.spec.optimizers import ParamGroup as ParamGroup
from nestdsl.spec.optimizers import PrecondMomentumOptimizer as PrecondMomentumOptimizer
from nestdsl.spec.optimizers import SGDOptimizer as SGDOptimizer
from nestdsl.spec.optimizers import group_optimizer as group_optimizer
from nestdsl.spec.optimizers import optimizer as optimizer
from nestdsl.spec.optimizers import param_group as param_group
from nestdsl.vocabulary import EraseRate, MemoryKind, ReadMode, RuleKind

SPEC_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Periods: "16 tokens", "4 steps", or a bare int (tokens)

_PERIOD_RE = re.compile(r"^\s*(\d+)\s*(token|tokens|step|steps)?\s*$")

PeriodUnit = Literal["tokens", "steps"]


class Period(Node):
    """How often a level fires: every `every` tokens (inside a sequence) or optimizer steps."""

    every: int = Field(ge=1, description="number of units between two firings")
    unit: PeriodUnit = "tokens"

    @classmethod
    def parse(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value  # let validation reject it with a type error
        if isinstance(value, int):
            return {"every": value, "unit": "tokens"}
        if isinstance(value, str):
            m = _PERIOD_RE.match(value)
            if not m:
                raise ValueError(
                    f"invalid period {value!r}; write e.g. '16 tokens' or '4 steps'"
                )
            unit = m.group(2) or "tokens"
            return {"every": int(m.group(1)), "unit": unit if unit.endswith("s") else unit + "s"}
        return value

    def __str__(self) -> str:
        unit = self.unit if self.every != 1 else self.unit[:-1]
        return f"{self.every} {unit}"

    @model_serializer(mode="plain")
    def _as_text(self) -> str:
        return str(self)


def _period(value: Any) -> Any:
    return Period.parse(value)


# ---------------------------------------------------------------------------------------------
# Gates: a constant or a data-dependent (learned) per-head scalar


class LearnedGate(Node):
    """A data-dependent gate: `squash(<w, x_t> + b) * scale`, one scalar per head and token."""

    learned: Literal["sigmoid", "softplus"] = Field(description="squashing function")
    scale: float = Field(default=1.0, gt=0, description="maximum (sigmoid) or multiplier")
    init: float | None = Field(
        default=None, description="initial gate value (sets the bias); None = library default"
    )


Gate = Union[float, LearnedGate]


class Rule(Node):
    """The inner optimizer of a memory (docs/design.md §3.1)."""

    kind: RuleKind = Field(default="gd", description="gd or Delta Gradient Descent")
    lr: Gate = Field(default=1.0, description="inner learning rate eta")
    retention: Gate | None = Field(default=None, description="retention/decay alpha (None: 1)")
    momentum: Gate | None = Field(default=None, description="momentum beta (None: no momentum)")
    erase: EraseRate | None = Field(
        default=None,
        description="dgd erase rate eps in W(alpha I - eps k k^T): eta (NL Eq. 88, the default), "
                    "normalized = eta/(1 + eta|k|^2) (Eq. 57), retained = alpha*eta (Gated DeltaNet)",
    )
    lr_per_dim: bool = Field(
        default=False,
        description="divide eta by the head dimension (TTT's eta/d; titans-pytorch's loss is a "
                    "mean over dimensions): the step stays bounded by scale/d whatever the width",
    )
    normalized_lr: bool = Field(
        default=False,
        description="mlp memories: per-layer normalised step (NL Eq. 57 applied to each weight "
                    "with its own input a): W_i steps with eta/(eps + |a_i|^2), so eta in (0, 1) is "
                    "the fraction of the error each layer corrects, whatever the weights' scale",
    )
    lr_warmup: int | None = Field(
        default=None, ge=1,
        description="outer steps N over which eta ramps up linearly: at outer step s the inner "
                    "step is eta * min(1, (s + 1) / N); the factor reached is saved with the "
                    "model, so evaluation uses the eta the model was last trained with (None: off)",
    )
    clip: float | None = Field(
        default=None, gt=0,
        description="soft-clip the surprise: the prediction error's norm is capped smoothly at "
                    "this value (loss c^2 log cosh(|M(k) - v|/c)); l2 objective only",
    )


# ---------------------------------------------------------------------------------------------
# Level references: a level's name, or (in the source) an inline level `{every: 16 tokens}`,
# which validation lifts into `levels:` under a generated name (nestdsl/spec/validate.py), so the
# IR only ever holds names.

_PERIOD_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*\d+\s*(tokens?|steps?)?\s*$"},
        {"type": "integer", "minimum": 1},
    ],
    "description": "period, e.g. '16 tokens' or '4 steps' (a bare integer is tokens)",
}

LevelRef = Annotated[
    str,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "the name of a level (declared or built-in)"},
                {"type": "object", "description": "an inline (anonymous) level",
                 "properties": {"every": _PERIOD_SCHEMA, "doc": {"type": "string"}},
                 "required": ["every"], "additionalProperties": False},
            ],
            "description": "a level name, or an inline level like {every: 16 tokens}",
        }
    ),
]

# ---------------------------------------------------------------------------------------------
# Memories

Activation = Literal["silu", "gelu", "relu", "tanh"]
WriteGrad = Literal["grad", "stop"]


class Memory(Node):
    """An associative memory M_theta: key -> value (docs/design.md §2). One model per kind —
    `LinearMemory`, `MLPMemory`, `AttentionMemory`, chosen by `kind:` (`AnyMemory`) — so a
    field that a kind does not read is a positioned spec error by construction (`MISPLACED`
    words the hint)."""

    kind: MemoryKind
    heads: int | None = Field(default=None, ge=1, description="heads (default: model.heads)")


class ParametricMemory(Memory):
    """A memory with weights theta that learn in context: an inner objective and update rule."""

    objective: str | None = Field(
        default=None, description="inner objective (registry: dot, l2, ...); parametric only"
    )
    rule: Rule | None = Field(default=None, description="inner update rule; parametric only")
    level: LevelRef | None = Field(
        default=None,
        description="level whose period is the chunk size C: a name, or an inline level "
                    "(`{every: 16 tokens}`; .nest: `level every 16 tokens`) (default: 1 token)",
    )
    read: ReadMode = Field(default="after", description="read after/before the write, or at chunk start")
    writes: WriteGrad = Field(default="grad", description="back-propagate through writes or not")
    residual: bool | None = Field(
        default=None, description="x + M(x): mlp (Hope's x + W1 s(W2 x)), or linear with `norm`")
    norm: bool | None = Field(
        default=None,
        description="inner LayerNorm on the memory's output before the residual, x + LN(MLP(x)) "
                    "(TTT, titans-pytorch); bounds predictions so deep memories stay finite",
    )
    norm_gain: float = Field(
        default=1.0, gt=0,
        description="initial gain of the inner LayerNorm (outer-learned afterwards): the memory "
                    "branch's size in x + LN(MLP(x)) at init; LN rescales the MLP's output to norm "
                    "~sqrt(d_head) x gain against |x| = 1, so gain 1 lets the memory's writes "
                    "swamp the residual (see docs/hope-dynamics.md)",
    )
    init: Literal["zeros", "learned"] | None = Field(
        default=None,
        description="initial state theta_0: learned (meta-learned; the only choice for mlp) or "
                    "zeros (default for linear)",
    )


class LinearMemory(ParametricMemory):
    """A matrix per head, M(k) = W k (optionally TTT-Linear's x + LN(W x) with `norm`)."""

    kind: Literal["linear"]


class MLPMemory(ParametricMemory):
    """A depth-`depth` MLP per head (hidden width `hidden` x head dim), optionally residual
    x + W1 s(W2 x)."""

    kind: Literal["mlp"]
    depth: int | None = Field(default=None, ge=2, description="mlp: number of layers")
    hidden: int | None = Field(default=None, ge=1, description="mlp: hidden multiple of head dim")
    activation: Activation | None = Field(default=None, description="mlp: activation")
    read_norm: float | None = Field(
        default=None, gt=0,
        description="residual memories: the read becomes q + g * RMSNorm(M(q) - q), g an "
                    "outer-learned gain per head and dimension initialised to this value; the "
                    "inner loss still sees x + M~(x), so the writes are unchanged (None: off)",
    )
    renorm: bool = Field(
        default=False,
        description="mlp memories: fast-weight norm control. After every chunk each weight's "
                    "rows are rescaled to their initial norms (those of theta_0), so the writes "
                    "turn the weights without growing them",
    )


class AttentionMemory(Memory):
    """Non-parametric softmax attention over the cached keys/values (optional sliding
    `window`): nothing to update, so no objective, rule or level."""

    kind: Literal["attention"]
    window: int | None = Field(default=None, ge=1, description="attention: sliding window")


AnyMemory = Annotated[Union[LinearMemory, MLPMemory, AttentionMemory], Field(discriminator="kind")]
MEMORY_MODELS: dict[str, type[Memory]] = {"linear": LinearMemory, "mlp": MLPMemory,
                                          "attention": AttentionMemory}

# Why a field written on a kind that does not read it is wrong: (kind, field) -> (message,
# hint, the sub-path to point at or None). `{name}` is the memory's name. Without an entry the
# error says which kinds take the field.
_NON_PARAMETRIC = "attention is non-parametric (softmax over the cached keys/values)"
MISPLACED: dict[tuple[str, str], tuple[str, str]] = {
    ("attention", "objective"): (
        "attention memory '{name}' has no inner objective",
        "attention is non-parametric; `objective` applies to linear and mlp memories only"),
    ("attention", "rule"): (
        "attention memory '{name}' has no update rule", f"{_NON_PARAMETRIC}; remove `rule`"),
    ("attention", "rule.kind=dgd"): (
        "'dgd' on attention memory '{name}'",
        "attention is non-parametric: it has no weights for Delta Gradient Descent to update; "
        "use kind: linear or mlp, or remove `rule`"),
    ("attention", "level"): (
        "attention memory '{name}' has no update level",
        "attention keeps every key/value (or a sliding `window`); a level (chunk size) applies "
        "to linear and mlp memories only"),
    ("linear", "window"): ("`window` on linear memory '{name}'",
                           "a sliding window applies to attention memories only"),
    ("mlp", "window"): ("`window` on mlp memory '{name}'",
                        "a sliding window applies to attention memories only"),
    ("linear", "renorm"): (
        "`renorm` on linear memory '{name}'",
        "`renorm` rescales an mlp memory's weight rows to their initial norms after each chunk; "
        "a linear memory starts from zeros (its rows' norms are 0) and attention has no "
        "weights: use `kind: mlp`, or remove `renorm`"),
    ("linear", "read_norm"): (
        "`read_norm` on memory '{name}' without a residual",
        "`read_norm` normalises the branch M(q) - q of a residual mlp memory (x + W1 s(W2 x)); "
        "use `kind: mlp` with `residual: true`"),
}
MISPLACED[("attention", "renorm")] = MISPLACED[("linear", "renorm")]
MISPLACED[("attention", "read_norm")] = MISPLACED[("linear", "read_norm")]


def misplaced_field(kind: str, field: str, name: str) -> tuple[str, str] | None:
    """(message, hint) for `field` written on a memory of `kind` that has no such field (None
    if no kind has it: an unknown field)."""
    if (kind, field) in MISPLACED:
        message, hint = MISPLACED[(kind, field)]
        return message.format(name=name), hint
    owners = [k for k, model in MEMORY_MODELS.items() if field in model.model_fields]
    if not owners:
        return None
    which = " and ".join(owners)
    return (f"`{field}` on {kind} memory '{name}'",
            f"`{field}` applies to {which} memories only; remove it or use `kind: {owners[0]}`")


# ---------------------------------------------------------------------------------------------
# Levels and CMS


PeriodField = Annotated[Period, BeforeValidator(_period), WithJsonSchema(_PERIOD_SCHEMA)]


class Level(Node):
    """A clock: a named period. Frequency = 1/period."""

    every: PeriodField
    doc: str | None = None


class CMSStage(Node):
    """One MLP block of a Continuum Memory System with its own level (docs/design.md §3.3)."""

    level: LevelRef = Field(
        description="level that sets this stage's period: a name, or an inline level "
                    "(`{every: 4 steps}`; .nest: `stage every 4 steps`)")
    hidden: int = Field(default=4, ge=1, description="hidden multiple of the width")
    activation: Activation = "silu"
    gated: bool = Field(
        default=False, description="W_out (σ(W_in x) ⊙ W_gate x), the gated MLP of a Transformer++ "
        "/ Llama block (SwiGLU with silu), instead of W_out σ(W_in x); not with `signal: local`")
    signal: Literal["task", "local"] = Field(
        default="task", description="in-context update signal: next-token loss or local L2"
    )
    scope: Literal["sequence", "stream"] = Field(
        default="sequence", description="in-context state resets per sequence or streams on"
    )
    lr: float = Field(default=0.01, gt=0, description="in-context step size")


class CMS(Node):
    """A chain / independent set / nested stack of MLP stages at different frequencies."""

    mode: Literal["chain", "independent", "nested"] = "chain"
    stages: list[CMSStage] = Field(min_length=1)


# ---------------------------------------------------------------------------------------------
# Block layers (discriminated by `type`)

Norm = Literal["rms", "layer", "none"]


class _Layer(Node):
    norm: Norm = Field(default="rms", description="pre-norm")
    residual: bool = True


class MemoryLayer(_Layer):
    """A memory used as a token mixer (linear attention, DeltaNet, Titans LMM, attention...)."""

    type: Literal["memory"]
    memory: str
    conv: int = Field(default=4, ge=0, description="causal depthwise conv width on q,k,v (0: none)")
    qk_norm: bool = Field(default=True, description="L2-normalise q and k")
    output_gate: bool = Field(default=True, description="output norm and sigmoid gate")


class MALLayer(_Layer):
    """Titans memory-as-layer: the memory, then sliding-window attention."""

    type: Literal["mal"]
    memory: str
    attention: str


class MAGLayer(_Layer):
    """Titans memory-as-gate: memory and sliding-window attention combined by a learned gate."""

    type: Literal["mag"]
    memory: str
    attention: str


Adaptive = Literal["k", "v", "q", "eta", "alpha"]


def _default_adaptive() -> list[Adaptive]:
    return ["k", "v", "eta", "alpha"]


class SelfModifyingLayer(_Layer):
    """Hope's self-modifying Titans (docs/design.md §3.4): k, v, eta, alpha (and optionally q) are
    themselves memories (`projections`) that generate their own targets."""

    type: Literal["self_modifying"]
    memory: str = Field(description="the main memory M_mem (its level gives C_mem)")
    projections: str = Field(description="memory used for k, v, eta, alpha (level: C_other)")
    adaptive: list[Adaptive] = Field(
        default_factory=_default_adaptive,
        description="which projections are memories; the rest are static linear maps",
    )
    conv: int = Field(default=4, ge=0)
    qk_norm: bool = True
    v_norm: bool = Field(
        default=False,
        description="L2-normalise v_t per head like q and k (bounds the self-generated targets "
                    "M(v_t) and keeps the inner steps of every memory stable; not in the paper)",
    )
    output_gate: bool = True
    values: Literal["self", "shared"] = Field(
        default="self",
        description="each memory's target: `self` = its own v̂_t = M(v_t) (self-modifying, NL paper "
                    "Eqs. 83–85); `shared` = v_t for every memory (fully adaptive memories "
                    "sharing values, Eqs. 79–82)",
    )


class CMSLayer(_Layer):
    """A Continuum Memory System (MLP chain at several frequencies)."""

    type: Literal["cms"]
    cms: str


class MLPLayer(_Layer):
    """A Transformer MLP (= a CMS with one persistent level of period one step)."""

    type: Literal["mlp"]
    hidden: int = Field(default=4, ge=1)
    activation: Activation = "silu"


Layer = Annotated[
    Union[MemoryLayer, MALLayer, MAGLayer, SelfModifyingLayer, CMSLayer, MLPLayer],
    Field(discriminator="type"),
]
LAYER_TYPES = ("memory", "mal", "mag", "self_modifying", "cms", "mlp")


class Block(Node):
    """An ordered composition of layers, each pre-norm + residual."""

    layers: list[Layer] = Field(min_length=1)


class Model(Node):
    """Embeddings + `depth` blocks (cycling through `pattern`) + head."""

    vocab: int = Field(default=256, ge=2)
    width: int = Field(ge=1)
    depth: int = Field(ge=1)
    heads: int = Field(default=1, ge=1)
    pattern: list[str] = Field(min_length=1, description="block names, repeated to `depth`")
    tie_embeddings: bool = True


# ---------------------------------------------------------------------------------------------
# Outer optimizer (docs/design.md §4)

# One model per optimizer type (fields, level description, implementation):
# nestdsl/spec/optimizers.py, re-exported here.



# ---------------------------------------------------------------------------------------------
# Data and train


class _Data(Node):
    seq_len: int = Field(default=128, ge=2)
    batch: int = Field(default=8, ge=1)
    seed: int = 0


def _tokenizer_name(value: Any) -> Any:
    """`bytes`, `bpe`, or the path of a local tokenizer.json. A word that is neither (`bpee`, or
    not a string) is refused as the literal it meant to be; a path is refused unless it names a
    .json file."""
    if isinstance(value, str) and (value in ("bytes", "bpe") or value.lower().endswith(".json")):
        return value
    if isinstance(value, str) and (any(c in value for c in "/\\.") or value.strip() != value):
        raise ValueError(f"a tokenizer file must be a tokenizer.json (a path ending in .json), "
                         f"got {value!r}")
    raise PydanticCustomError("literal_error", "Input should be 'bytes' or 'bpe'",
                              {"expected": "'bytes' or 'bpe'"})


TokenizerName = Annotated[Union[Literal["bytes", "bpe"], str], BeforeValidator(_tokenizer_name)]


class TextData(_Data):
    """Language modelling on a text file or folder: bytes, a local BPE or a tokenizer.json."""

    task: Literal["text"]
    path: str
    tokenizer: TokenizerName = "bytes"
    vocab_size: int | None = Field(default=None, ge=2, description="bpe vocabulary size")
    val_fraction: float = Field(default=0.1, ge=0, lt=1)


class ShardsData(_Data):
    """Language modelling on a folder of token shards written by `nestdsl data prepare`
    (docs/own-data.md): memory-mapped, the vocabulary and tokenizer from its shards.json."""

    task: Literal["shards"] = Field(description="task (the discriminator)")
    path: str = Field(description="the folder `nestdsl data prepare` wrote (with its shards.json); "
                                  "a relative path is tried against the working folder, then the "
                                  "spec's folder")


class MQARData(_Data):
    """Multi-query associative recall."""

    task: Literal["mqar"]
    num_pairs: int = Field(default=8, ge=1)
    num_queries: int | None = Field(default=None, ge=1)


class NIAHData(_Data):
    """Single needle in a haystack (RULER S-NIAH-1/2/3 style)."""

    task: Literal["niah"]
    variant: Literal[1, 2, 3] = 1


class CopyData(_Data):
    """Copy a random string after a separator (a fast synthetic smoke task)."""

    task: Literal["copy"]
    length: int = Field(default=16, ge=1)


class ContinualData(_Data):
    """A sequence of tasks with switch points, for forgetting studies."""

    task: Literal["continual"]
    tasks: list[Annotated[Union[TextData, ShardsData, MQARData, NIAHData, CopyData],
                          Field(discriminator="task")]] = Field(
        min_length=2
    )
    switch_every: int = Field(default=100, ge=1, description="steps per task")
    optimizer_at_switch: Literal["keep", "reset"] = Field(
        default="keep", description="the outer optimizer's state (momenta, second moments) at a "
        "task switch: kept, or reset as a fresh optimizer would start (NL paper §4.5: the "
        "optimizer is itself a memory of the earlier tasks' gradients)")


Data = Annotated[
    Union[TextData, ShardsData, MQARData, NIAHData, CopyData, ContinualData],
    Field(discriminator="task"),
]
DATA_TASKS = ("text", "shards", "mqar", "niah", "copy", "continual")


class InitFrom(Node):
    """Start the model from a trained checkpoint (NL arXiv §7.3, ad-hoc level stacking): tensors
    with the same name and shape are copied, and each CMS layer starts from the checkpoint's MLP
    at its place (nestdsl/runtime/init_from.py)."""

    checkpoint: str = Field(description="a nestdsl run folder or one of its step_N checkpoint "
                                        "folders (relative to this spec's folder)")
    stages: Literal["first", "all"] = Field(
        default="first", description="first: the first CMS stage is the pre-trained MLP and the "
        "others start as identities (in-context step sizes -> 0 give the pre-trained model "
        "exactly); all: every stage starts as a copy of it")


class Train(Node):
    steps: int = Field(default=200, ge=1)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    seed: int = 0
    log_every: int = Field(default=10, ge=1)
    ckpt_every: int = Field(default=100, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="how torchrun's processes share the model: ddp (each holds all of it, "
        "gradients all-reduced) or fsdp (FSDP2: parameters, gradients and optimizer states "
        "sharded per block, sharded checkpoints); one process ignores it; `--parallel` overrides "
        "it")
    compile: bool | Literal["auto"] = Field(
        default="auto",
        description="torch.compile the training step; auto: on for CUDA, off for CPU (a cold "
        "compile costs about a minute there and wins nothing on tiny models); `--compile` / "
        "`--no-compile` override it")
    telemetry: bool = Field(
        default=True, description="record per-memory inner-loop statistics at every log step")
    state_norm_warn: float | None = Field(
        default=1000.0, gt=0,
        description="warn when a memory's state norm (per head, Frobenius) exceeds this")
    init_from: InitFrom | None = Field(
        default=None, description="a fresh run starts from this checkpoint's weights, its CMS "
        "levels from the checkpoint's MLPs (a resumed run from its own checkpoint)")


# ---------------------------------------------------------------------------------------------
# The whole spec


class Spec(Node):
    """A nestdsl spec: a model (architecture), or an outer-optimizer spec, or both."""

    nestdsl: int = Field(default=SPEC_VERSION, description="spec language version")
    name: str = Field(min_length=1)
    doc: str | None = None
    model: Model | None = None
    levels: dict[str, Level] = Field(default_factory=dict)
    memories: dict[str, AnyMemory] = Field(default_factory=dict)
    cms: dict[str, CMS] = Field(default_factory=dict)
    blocks: dict[str, Block] = Field(default_factory=dict)
    optimizer: AnyOptimizer | str | None = Field(
        default=None,
        description="inline optimizer, the name of a shipped optimizer spec (adamw, muon, m3, "
                    "dmgd, delta-momentum, sgd-momentum), or a path to an optimizer spec file "
                    "(relative to this spec's folder)",
    )
    data: Data | None = None
    train: Train | None = None

    # Set by the loader: the file the spec came from, and `optimizer` resolved when it is a name
    # or a path (the optimizer and the file it was read from).
    _source_file: str | None = PrivateAttr(default=None)
    _resolved_optimizer: Optimizer | None = PrivateAttr(default=None)
    _optimizer_file: str | None = PrivateAttr(default=None)
    # Set by the stages (nestdsl/pipeline.py): the document the spec was validated from, and
    # whether the checker has passed it (the lowering checks an unchecked spec first).
    _document: Any = PrivateAttr(default=None)
    _checked: bool = PrivateAttr(default=False)

    @property
    def source_file(self) -> str | None:
        return self._source_file

    @property
    def outer_optimizer(self) -> Optimizer | None:
        """The outer optimizer, with a file reference resolved (None if the spec has none)."""
        if isinstance(self.optimizer, Optimizer):
            return self.optimizer
        return self._resolved_optimizer

    @property
    def optimizer_file(self) -> str | None:
        """The file a string `optimizer:` reference was read from (set by the checker)."""
        return self._optimizer_file

    def level_period(self, name: str | None) -> Period:
        """The period of a named level (built-ins `token` and `step` included; None = 1 token)."""
        if name is None:
            return BUILTIN_LEVELS["token"]
        if name in self.levels:
            return self.levels[name].every
        return BUILTIN_LEVELS[name]


# Built-in levels every spec can reference without declaring them.
BUILTIN_LEVELS: dict[str, Period] = {
    "token": Period(every=1, unit="tokens"),
    "step": Period(every=1, unit="steps"),
}
