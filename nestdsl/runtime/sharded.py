"""Sharded checkpoints of FSDP runs, with torch.distributed.checkpoint (DCP).

Each rank writes its own shards of the parameters, optimizer states and accumulated gradients
(DTensors) in parallel; rank 0 writes `meta.json` last. The step folder is a DCP checkpoint plus
the same `meta.json` as the safetensors format (`runtime/checkpoint.py`), with `"layout":
"sharded"`::

    RUN/step_000010/
      .metadata, __0_0.distcp, __1_0.distcp   # DCP: every tensor by name, any sharding
      meta.json                               # spec, step, loop state, optimizer structure,
                                              # Python/numpy RNG, size + sha256 of every file

What the tensors are called (one name per tensor, the same whatever the process count):
`model.<parameter or buffer>`, `optim.<level>.<child>.<param index>.<state key>` (the index of
the parameter in that optimizer's groups), `accum.<level>.<i>` (a persistent level's gradient
accumulated since its last update), and per rank `loop.loss_acc.rank<r>` and
`rng.rank<r>.torch_cpu`. Loading builds the same names around the *current* model — sharded
DTensors under FSDP with any number of processes, plain tensors in one process — and DCP reads
each rank's part: that is the resharding. The per-rank loop values come back to the same rank
when the process count is unchanged (so resuming is bitwise on CPU); with another count every
rank takes the mean of the window's loss sums and rank 0's RNG state (the ranks' RNGs advance
in step: they seed alike and draw alike).

The guarantees of the safetensors format hold: the write goes to a temporary folder that is
renamed once complete and verified (sha256 per file, checked on load), `latest` moves last, a
failed write leaves the previous checkpoint as the newest, nothing is unpickled (DCP's tensor
files hold raw storage; the structure is JSON).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nestdsl.runtime import checkpoint as ck

__all__ = ["LAYOUT", "load", "save"]

LAYOUT = "sharded"


def _leaves(optimizer: Any) -> list[Any]:
    """The optimizers holding state (a MultiOptimizer's children; else the optimizer itself)."""
    return list(getattr(optimizer, "optimizers", [optimizer]))


def _order(opt: Any) -> list[torch.nn.Parameter]:
    return [p for g in opt.param_groups for p in g["params"]]


def _describe(value: torch.Tensor, param: torch.nn.Parameter | None) -> dict[str, Any]:
    """How to allocate a tensor to load into: like its parameter (sharded like it), or plain."""
    like = param is not None and tuple(value.shape) == tuple(param.shape)
    return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
            "like_param": like, "cpu": not like and value.device.type == "cpu"}


def _json(value: Any) -> Any:
    return ck.flatten_state(value)[0]


def _collect(model: torch.nn.Module, level_opts: list[Any], loop: Any, rank: int,
             world: int) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors by name, their descriptions, the JSON structure of the optimizers)."""
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, dict[str, Any]] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v
        index[f"model.{k}"] = {**_describe(v, None), "model": True}
    optim: list[list[dict[str, Any]]] = []
    for i, lo in enumerate(level_opts):
        children = []
        for j, opt in enumerate(_leaves(lo.optimizer)):
            states: dict[str, dict[str, Any]] = {}
            for n, p in enumerate(_order(opt)):
                st = opt.state.get(p)
                if not st:
                    continue
                entry: dict[str, Any] = {}
                for key, val in st.items():
                    if isinstance(val, torch.Tensor):
                        name = f"optim.{i}.{j}.{n}.{key}"
                        tensors[name], index[name] = val, _describe(val, p)
                        entry[str(key)] = {"tensor": name}
                    else:
                        entry[str(key)] = {"value": _json(val)}
                states[str(n)] = entry
            groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            children.append({"state": states, "groups": _json(groups)})
        optim.append(children)
    for lo in level_opts:
        if lo.every_k > 1:
            for n, p in enumerate(lo.params):
                if p.grad is not None:
                    name = f"accum.{lo.name}.{n}"
                    tensors[name], index[name] = p.grad, _describe(p.grad, p)
    tensors[f"loop.loss_acc.rank{rank}"] = loop.loss_acc.detach().float().cpu().clone()
    tensors[f"rng.rank{rank}.torch_cpu"] = torch.get_rng_state()
    for r in range(world):      # every rank's entries, described by rank 0 (same shapes)
        index[f"loop.loss_acc.rank{r}"] = {"shape": [], "dtype": "float32", "like_param": False, "cpu": True}
        index[f"rng.rank{r}.torch_cpu"] = _describe(tensors[f"rng.rank{rank}.torch_cpu"], None)
    return tensors, index, {"optimizers": optim}


def save(run_dir: str | os.PathLike[str], step: int, *, ranks: Any, model: torch.nn.Module,
         level_opts: list[Any], loop: Any, spec_text: str, spec_record: dict[str, Any],
         keep: int = 2) -> Path:
    """Every rank: write the sharded checkpoint of `step` into `RUN/step_<step>` (collective)."""
    import torch.distributed.checkpoint as dcp

    run = Path(run_dir)
    name = ck.checkpoint_name(step)
    final = run / name
    tmp = run / f"{ck.TMP_PREFIX}{name}-sharded"
    error: BaseException | None = None
    if ranks.rank == 0:
        try:
            run.mkdir(parents=True, exist_ok=True)
            ck._remove_stale_tmp(run)
            tmp.mkdir()
        except OSError as e:
            error = e
    _agree(ranks, error, final, run)
    tensors, index, optim = _collect(model, level_opts, loop, ranks.rank, ranks.world)
    try:
        with warnings.catch_warnings():    # one process (the tests, the converter): as intended
            warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single")
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(tmp), sync_files=True))
    except Exception as e:  # noqa: BLE001 - every rank learns below
        error = e
    _agree(ranks, error, final, run)
    if ranks.rank == 0:
        try:
            _commit(run, tmp, final, step, spec_text, spec_record, index, optim, loop, ranks.world)
        except OSError as e:
            error = e
        if error is None:
            ck._prune(run, keep, final)
    _agree(ranks, error, final, run)
    return final


def _agree(ranks: Any, error: BaseException | None, final: Path, run: Path) -> None:
    """Every rank stops if any failed; the failing rank names why, the others that it failed."""
    if ranks.all_ok(error is None):
        return
    prev = ck.find_latest(run)
    kept = f"; the previous checkpoint {prev} is intact" if prev else ""
    if isinstance(error, OSError):
        raise ck.CheckpointError(f"cannot write checkpoint {final}: {ck._disk_message(error)}{kept}") from None
    if error is not None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ck.CheckpointError(f"cannot write checkpoint {final}: {first}{kept}") from None
    raise ck.CheckpointError(f"another rank could not write checkpoint {final}{kept}")


def _commit(run: Path, tmp: Path, final: Path, step: int, spec_text: str,
            spec_record: dict[str, Any], index: dict[str, Any], optim: dict[str, Any], loop: Any,
            world: int) -> None:
    """Rank 0: meta.json (with every file's size and sha256), fsync, rename, `latest`."""
    import random

    files = {f.name: {"bytes": f.stat().st_size, "sha256": ck._sha256(f)}
             for f in sorted(tmp.iterdir()) if f.is_file()}
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "format": ck.FORMAT, "version": ck.FORMAT_VERSION, "complete": True, "layout": LAYOUT,
        "step": int(step), "data_position": int(step),
        "spec_hash": spec_record["identity_hash"], "spec_text": spec_text, "spec": spec_record,
        "created": time.time(), "torch_version": torch.__version__,
        "world_size": world,
        "sharded": {"tensors": index, **optim, "history": _json(loop.history),
                    "n_acc": int(loop.n_acc)},
        "rng": {"python": [version, list(internal), gauss],
                "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]},
        "files": files,
    }
    for f in tmp.iterdir():
        ck._fsync_file(f)
    ck._write_bytes(tmp / ck.META_FILE, json.dumps(meta, allow_nan=False, indent=1).encode("utf-8"))
    ck._fsync_dir(tmp)
    trash = None
    if final.exists():                 # the same step again (after a resume)
        trash = run / f"{ck.TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.rename(final, trash)
    os.rename(tmp, final)
    ck._fsync_dir(run)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    ck._write_pointer(run, final.name)


def _empty(desc: dict[str, Any], like: torch.Tensor | None, device: str) -> torch.Tensor:
    dtype = getattr(torch, desc["dtype"])
    if desc["like_param"] and like is not None:
        return torch.empty_like(like, dtype=dtype)
    return torch.empty(desc["shape"], dtype=dtype, device="cpu" if desc.get("cpu") else device)


def load(path: Path, meta: dict[str, Any], *, model: Any, optimizer: Any, device: str,
         rank: int = 0, level_params: dict[str, Any] | None = None
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a sharded checkpoint into `model` and `optimizer` (a list, one per level, as saved;
    None: the model only), whatever this run's sharding. `level_params` (`<level>.<i>` → the
    parameter) shapes the accumulated gradients like their parameters. Returns (extra, rng) in
    the form the safetensors loader gives them."""
    import torch.distributed.checkpoint as dcp

    sh = meta["sharded"]
    index: dict[str, dict[str, Any]] = sh["tensors"]
    world = int(meta.get("world_size", 1))
    target: dict[str, torch.Tensor] = {}
    if model is not None:
        own = model.state_dict()
        stored = {k[len("model."):] for k, d in index.items() if d.get("model")}
        if stored != set(own):
            missing, unexpected = sorted(set(own) - stored)[:3], sorted(stored - set(own))[:3]
            raise ck.CheckpointError(
                f"model state in {path} does not fit the model: missing {missing}, unexpected "
                f"{unexpected}")
        target.update({f"model.{k}": v for k, v in own.items()})
    fills: list[tuple[Any, Any, str, str]] = []          # (opt, param, state key, tensor name)
    if optimizer is not None:
        saved = sh["optimizers"]
        opts = list(optimizer) if isinstance(optimizer, list | tuple) else [optimizer]
        if len(opts) != len(saved):
            raise ck.CheckpointError(f"optimizer state in {path} does not fit: {len(saved)} saved "
                                     f"levels for {len(opts)} optimizers")
        for opt, children in zip(opts, saved, strict=True):
            leaves = _leaves(opt)
            if len(leaves) != len(children):
                raise ck.CheckpointError(f"optimizer state in {path} does not fit the optimizer")
            for leaf, child in zip(leaves, children, strict=True):
                order = _order(leaf)
                for n, entry in child["state"].items():
                    p = order[int(n)]
                    leaf.state[p] = {}
                    for key, v in entry.items():
                        if "tensor" in v:
                            target[v["tensor"]] = _empty(index[v["tensor"]], p, device)
                            fills.append((leaf, p, key, v["tensor"]))
                        else:
                            leaf.state[p][key] = ck.unflatten_state(v["value"], {})
                for g, hyper in zip(leaf.param_groups, ck.unflatten_state(child["groups"], {}),
                                    strict=True):
                    g.update(hyper)
    accum_names = [k for k in index if k.startswith("accum.")]
    for k in accum_names:
        target[k] = _empty(index[k], (level_params or {}).get(k[len("accum."):]), device)
    for r in range(world):
        target[f"loop.loss_acc.rank{r}"] = _empty(index[f"loop.loss_acc.rank{r}"], None, device)
    own_rng = f"rng.rank{rank if rank < world else 0}.torch_cpu"
    target[own_rng] = _empty(index[own_rng], None, device)
    try:
        with warnings.catch_warnings():    # one process: DCP says it assumes so, as intended
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single")
            dcp.load(target, storage_reader=dcp.FileSystemReader(str(path)))
    except Exception as e:  # noqa: BLE001 - DCP wraps its readers' errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ck.UnreadableCheckpoint(f"cannot read the sharded checkpoint {path}: {first}") from None
    if model is not None:
        model.load_state_dict({k[len("model."):]: v for k, v in target.items()
                               if k.startswith("model.")})
    for leaf, p, key, name in fills:
        leaf.state[p][key] = target[name]
    sums = [target[f"loop.loss_acc.rank{r}"] for r in range(world)]
    same_world = _world_now() == world
    loss_acc = sums[rank] if same_world else torch.stack(sums).mean()
    extra = {"history": ck.unflatten_state(sh["history"], {}), "n_acc": int(sh["n_acc"]),
             "loss_acc": loss_acc, "accum": {k[len("accum."):]: target[k] for k in accum_names}}
    rng = {"python": meta["rng"]["python"], "numpy": meta["rng"]["numpy"],
           "torch_cpu": target[own_rng], "cuda": []}
    return extra, rng


def _world_now() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def convert(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the sharded checkpoint `src` (a step folder, or a run folder: its newest) as a
    one-process safetensors checkpoint in the run folder `out`: the model, every level's
    optimizer state, the accumulated gradients, the loop state and RNG — what `--resume`,
    `eval` and `generate` read. Runs in one process (DCP reads every shard)."""
    from nestdsl import compile as compile_spec
    from nestdsl.runtime.resume import LoopState, extra_of
    from nestdsl.runtime.run_spec import checkpoint_folder, from_checkpoint
    from nestdsl.runtime.train import DEFAULT_OPTIMIZER, build_level_optimizers

    folder = checkpoint_folder(Path(src))
    meta = ck.read_meta(folder)
    if meta.get("layout") != LAYOUT:
        raise ck.CheckpointError(f"{folder} is already a one-process (safetensors) checkpoint")
    dst = Path(out)
    if ck.holds_run(dst):
        raise ck.CheckpointError(f"{dst} already holds checkpoints; choose another --out folder "
                                 "(nothing was overwritten)")
    run_spec = from_checkpoint(folder)
    spec = run_spec.spec
    system = compile_spec(spec, device="cpu", compile=False)
    level_opts = build_level_optimizers(system, spec.outer_optimizer or DEFAULT_OPTIMIZER)
    loaded = ck.load_checkpoint(
        folder, model=system.model, optimizer=[lo.optimizer for lo in level_opts],
        identity=meta["spec"]["identity"], level_params={
            f"{lo.name}.{i}": p for lo in level_opts for i, p in enumerate(lo.params)})
    extra = loaded.extra
    for lo in level_opts:
        for i, p in enumerate(lo.params):
            if f"{lo.name}.{i}" in extra["accum"]:
                p.grad = extra["accum"][f"{lo.name}.{i}"].clone()
    state = LoopState(loaded.step, extra["history"], extra["loss_acc"], extra["n_acc"])
    loaded.restore_rng()
    return ck.save_checkpoint(
        dst, loaded.step, model=system.model, optimizer=[lo.optimizer for lo in level_opts],
        spec_text=loaded.spec_text, spec_record=meta["spec"], data_position=loaded.data_position,
        extra=extra_of(state, level_opts))
