"""Atomic, pickle-free checkpoints: safetensors for tensors, JSON for everything else.

Layout of a run folder::

    RUN/
      latest                  # one line: the name of the newest complete checkpoint
      step_000100/
        model.safetensors     # model state dict (tied/aliased tensors stored once)
        optim.safetensors     # every tensor of the optimizer state(s), keyed by path
        state.safetensors     # RNG states (torch CPU / CUDA as uint8) and ``extra`` tensors
        meta.json             # spec text, its canonical form and identity (spec/identity.py),
                              # step, data position, the non-tensor
                              # structure of model/optimizer/extra, Python and numpy RNG
                              # states, and the size and sha256 of every file
      step_000200/ ...

Writing is atomic: everything goes into a temporary folder ``.tmp-step_...`` in the run folder;
files and folder are fsynced, the folder is renamed to ``step_N``, the run folder is fsynced,
and only then is ``latest`` replaced (temp file, fsync, ``os.replace``). The last ``keep``
checkpoints are kept. A crash at any point leaves the previous checkpoint as the one
:func:`find_latest` returns. Loading reads safetensors and JSON only; it never unpickles.
One process writes a run folder at a time (in DDP: rank 0).

Non-tensor state (ints, floats incl. nan/inf, bools, None, strings, lists, tuples, dicts with
any scalar keys, numpy arrays/scalars, torch dtypes) is encoded in JSON exactly, so e.g. an
``AdamW`` state dict (int parameter ids, tuple ``betas``, tensor ``step``) round-trips
bit-for-bit.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nestdsl.errors import ArgumentError, NestdslError

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "SpecMismatch",
    "UnreadableCheckpoint",
    "capture_rng_state",
    "find_latest",
    "flatten_state",
    "is_complete",
    "list_checkpoints",
    "load_checkpoint",
    "holds_run",
    "read_meta",
    "resume_latest",
    "step_folders",
    "unreadable_folders",
    "restore_rng_state",
    "save_checkpoint",
    "spec_hash",
    "unflatten_state",
]

FORMAT = "nestdsl-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optim.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "meta.json"
LATEST = "latest"
TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(NestdslError):
    """A checkpoint cannot be written or read; the message is one line for the user."""

    user_error = True


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint folder's files are missing, truncated or corrupt (not: from another spec)."""


class SpecMismatch(CheckpointError):
    """The checkpoint was trained with a spec that computes something else (`differences`)."""

    def __init__(self, message: str, differences: list[Any]) -> None:
        super().__init__(message)
        self.differences = differences


#: Prefix of a checkpoint folder moved aside because it did not verify (kept, never pruned).
UNREADABLE_PREFIX = "unreadable-"


def spec_hash(spec_text: str) -> str:
    """sha256 (hex) of the spec text, as stored in and checked against ``meta.json``."""
    return hashlib.sha256(spec_text.encode("utf-8")).hexdigest()


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint at ``step`` (``step_000123``)."""
    return f"step_{int(step):06d}"


# ---------------------------------------------------------------------------------------------
# Tensors + JSON skeleton


class _TensorSink:
    """Collects tensors for one safetensors file, storing aliased tensors once."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._views: dict[tuple[Any, ...], str] = {}
        self._storages: set[int] = set()

    def add(self, path: str, t: torch.Tensor) -> str:
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.is_sparse or t.layout != torch.strided:
            raise CheckpointError(f"cannot save non-strided tensor at {path or '<root>'}")
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        sig = (ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if ptr and sig in self._views:
            return self._views[sig]
        if (ptr and ptr in self._storages) or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        key = path or "tensor"
        n = 1
        while key in self.tensors:
            n += 1
            key = f"{path}#{n}"
        self.tensors[key] = t
        if ptr:
            self._views[sig] = key
            self._storages.add(ptr)
        return key


def _key_str(k: Any) -> str:
    return k if isinstance(k, str) else repr(k)


def _encode(obj: Any, path: str, sink: _TensorSink) -> Any:
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": sink.add(path, obj)}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": sink.add(path, torch.from_numpy(np.ascontiguousarray(obj)))}
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        return x if math.isfinite(x) else {"__float__": repr(x)}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.device):
        return {"__device__": str(obj)}
    sub = f"{path}." if path else ""
    if isinstance(obj, Mapping):
        return {
            "__dict__": [
                [_encode(k, path, _NoTensors(path)), _encode(v, sub + _key_str(k), sink)]
                for k, v in obj.items()
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{sub}{i}", sink) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{sub}{i}", sink) for i, v in enumerate(obj)]
    raise CheckpointError(
        f"cannot save a value of type {type(obj).__name__} at {path or '<root>'} "
        "(only tensors, numpy arrays, scalars, strings, lists, tuples and dicts)"
    )


class _NoTensors(_TensorSink):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def add(self, path: str, t: torch.Tensor) -> str:
        raise CheckpointError(f"a dict key under {self.path or '<root>'} is a tensor")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    try:
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().copy()
    except KeyError as e:
        raise CheckpointError(f"checkpoint is missing tensor {e.args[0]!r}") from None
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    if "__device__" in obj:
        return torch.device(obj["__device__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    raise CheckpointError(f"unknown entry in checkpoint metadata: {sorted(obj)}")


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested structure into a JSON-able skeleton and a flat ``{key: tensor}`` dict."""
    sink = _TensorSink()
    return _encode(obj, prefix, sink), sink.tensors


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    return _decode(skeleton, tensors)


# ---------------------------------------------------------------------------------------------
# RNG


def capture_rng_state() -> dict[str, Any]:
    """RNG states: ``python`` and ``numpy`` (JSON-able), ``torch_cpu`` and ``cuda`` (uint8 tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch_cpu": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the Python, numpy, torch CPU (and CUDA, if saved and present) RNG states."""
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if state.get("numpy") is not None:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state(
            (kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        )
    if state.get("torch_cpu") is not None:
        torch.set_rng_state(state["torch_cpu"].to(torch.uint8).cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([t.cpu() for t in cuda])


# ---------------------------------------------------------------------------------------------
# File helpers (module-level so tests can inject faults)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot fsync a directory
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        save_file(tensors, str(path))
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors wraps I/O errors in its own type
        # e.g. 'IoError(Os { code: 28, kind: StorageFull, ... })': the OS error it stands for
        code = re.search(r"\bcode: (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
    _fsync_file(path)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_of(obj: Any) -> Any:
    """``obj.state_dict()`` for modules/optimizers; lists/dicts of them element-wise."""
    if obj is None:
        return None
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, list | tuple) and any(hasattr(o, "state_dict") for o in obj):
        return [_state_of(o) for o in obj]
    if isinstance(obj, Mapping) and any(hasattr(o, "state_dict") for o in obj.values()):
        return {k: _state_of(v) for k, v in obj.items()}
    return obj


def _load_into(obj: Any, state: Any, what: str) -> None:
    try:
        if hasattr(obj, "load_state_dict"):
            obj.load_state_dict(state)
        elif isinstance(obj, list | tuple):
            if len(obj) != len(state):
                raise ValueError(f"{len(state)} saved states for {len(obj)} objects")
            for o, s in zip(obj, state, strict=True):
                _load_into(o, s, what)
        elif isinstance(obj, Mapping):
            for k, o in obj.items():
                _load_into(o, state[k], what)
        else:
            raise TypeError(f"cannot load state into {type(obj).__name__}")
    except CheckpointError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{what} state does not fit: {first}") from None


def _disk_message(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "disk full (no space left on device)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return e.strerror or str(e)


# ---------------------------------------------------------------------------------------------
# Finding checkpoints


def read_meta(ckpt_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``meta.json`` of a checkpoint folder (raises :class:`CheckpointError`)."""
    p = Path(ckpt_dir) / META_FILE
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnreadableCheckpoint(f"not a checkpoint (no {META_FILE}): {p.parent}") from None
    except (OSError, ValueError) as e:
        raise UnreadableCheckpoint(f"cannot read {p}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UnreadableCheckpoint(f"not a nestdsl checkpoint: {p.parent}")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {p.parent} has format version {meta.get('version')}, newer than the "
            f"supported {FORMAT_VERSION}; upgrade nestdsl"
        )
    return meta


def is_complete(ckpt_dir: str | os.PathLike[str]) -> bool:
    """Whether a folder is a complete checkpoint (meta.json valid, every file present, right size)."""
    p = Path(ckpt_dir)
    try:
        meta = read_meta(p)
        if meta.get("complete") is not True:
            return False
        for name, info in meta["files"].items():
            if (p / name).stat().st_size != int(info["bytes"]):
                return False
    except (CheckpointError, OSError, KeyError, TypeError, ValueError):
        return False
    return True


def _step_of(p: Path) -> int | None:
    m = _STEP_RE.match(p.name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run folder, oldest step first (temp/partial folders ignored)."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    found = [(s, p) for p in d.iterdir() if (s := _step_of(p)) is not None and p.is_dir()]
    return [p for _, p in sorted(found) if is_complete(p)]


def step_folders(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Every ``step_<n>`` folder of a run, complete or not, newest step first."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    found = [(s, p) for p in d.iterdir() if (s := _step_of(p)) is not None and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def unreadable_folders(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint folders set aside by `resume_latest` because they did not verify."""
    d = Path(run_dir)
    return sorted(p for p in d.glob(f"{UNREADABLE_PREFIX}step_*") if p.is_dir()) if d.is_dir() else []


def holds_run(run_dir: str | os.PathLike[str]) -> bool:
    """Whether a folder holds a run's checkpoints, readable or not (a fresh start must refuse)."""
    return bool(step_folders(run_dir) or unreadable_folders(run_dir))


def find_latest(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run folder, or ``None``.

    The ``latest`` pointer is trusted when it names a complete checkpoint; otherwise (missing,
    stale) the complete checkpoint with the highest step is returned.
    """
    d = Path(run_dir)
    if not d.is_dir():
        return None
    try:
        name = (d / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if _STEP_RE.match(name) and is_complete(d / name):
        return d / name
    found = list_checkpoints(d)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------
# Save


def _write_pointer(run_dir: Path, name: str) -> None:
    tmp = run_dir / f"{TMP_PREFIX}{LATEST}-{os.getpid()}"
    try:
        _write_bytes(tmp, (name + "\n").encode())
        os.replace(tmp, run_dir / LATEST)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(run_dir)


def _remove_stale_tmp(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _prune(run_dir: Path, keep: int, newest: Path) -> None:
    """Keep ``newest`` and the ``keep - 1`` highest older steps; later steps are left alone."""
    new_step = _step_of(newest)
    assert new_step is not None
    older = [p for p in list_checkpoints(run_dir) if (_step_of(p) or 0) < new_step]
    n_old = max(0, keep - 1)
    doomed = older[: len(older) - n_old] if n_old else older
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    model: Any,
    spec_text: str,
    spec_record: dict[str, Any] | None = None,
    optimizer: Any = None,
    data_position: int | None = None,
    extra: Any = None,
    rng: bool = True,
    keep: int = 2,
) -> Path:
    """Write ``RUN/step_<step>/`` atomically and return its path.

    ``model``: an ``nn.Module`` or a state dict. ``optimizer``: an optimizer, a list/dict of
    optimizers, or any nested state (tensors + scalars). ``extra``: any nested structure of
    tensors and JSON-able values (e.g. persistent-level gradient accumulators). ``rng``: save
    the current Python/numpy/torch(/CUDA) RNG states. ``data_position`` defaults to ``step``.
    ``spec_record`` (`spec.identity.record`) makes the spec's identity, not its text, what a
    later load checks.
    Keeps the last ``keep`` checkpoints. Raises :class:`CheckpointError` (disk full, unwritable
    folder, unsupported value); the previous checkpoint is left intact.
    """
    if keep < 1:
        raise ArgumentError(f"keep must be >= 1, got {keep}")
    run = Path(run_dir)
    name = checkpoint_name(step)
    final = run / name
    tmp: Path | None = None
    trash: Path | None = None
    try:
        run.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(run)
        model_sd = _state_of(model)
        model_skel, model_t = flatten_state(model_sd)
        metadata = getattr(model_sd, "_metadata", None)
        optim_skel, optim_t = flatten_state(_state_of(optimizer))
        extra_skel, state_t = flatten_state(extra, "extra")
        rng_json: dict[str, Any] = {}
        if rng:
            r = capture_rng_state()
            rng_json = {"python": r["python"], "numpy": r["numpy"], "cuda": len(r["cuda"])}
            state_t["rng.torch_cpu"] = r["torch_cpu"]
            for i, t in enumerate(r["cuda"]):
                state_t[f"rng.cuda.{i}"] = t.cpu()
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=run))
        os.umask(umask := os.umask(0o077))  # read the umask (and put it back): mkdtemp's 0700
        tmp.chmod(0o777 & ~umask)            # becomes what the run folder and metrics get
        files: dict[str, dict[str, Any]] = {}
        for fname, tensors in ((MODEL_FILE, model_t), (OPTIM_FILE, optim_t), (STATE_FILE, state_t)):
            _save_tensors(tensors, tmp / fname)
            files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": _sha256(tmp / fname)}
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "complete": True,
            "step": int(step),
            "data_position": int(step if data_position is None else data_position),
            "spec_hash": spec_record["identity_hash"] if spec_record else spec_hash(spec_text),
            "spec_text": spec_text,
            "spec": spec_record,
            "created": time.time(),
            "torch_version": torch.__version__,
            "model": model_skel,
            "model_metadata": _jsonable_metadata(metadata),
            "optim": optim_skel,
            "extra": extra_skel,
            "rng": rng_json,
            "files": files,
        }
        text = json.dumps(meta, allow_nan=False, indent=1)
        _write_bytes(tmp / META_FILE, text.encode("utf-8"))
        for f in tmp.iterdir():              # safetensors writes 0600; meta.json gets the umask's
            f.chmod(0o666 & ~umask)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume)
            trash = run / f"{TMP_PREFIX}old-{name}-{os.getpid()}"
            os.rename(final, trash)
        os.rename(tmp, final)
        tmp = None
        _fsync_dir(run)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if trash is not None and not final.exists():
            os.rename(trash, final)
        prev = find_latest(run)
        kept = f"; the previous checkpoint {prev} is intact" if prev else ""
        raise CheckpointError(
            f"cannot write checkpoint {final}: {_disk_message(e)}{kept}"
        ) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if trash is not None and not final.exists():
            os.rename(trash, final)
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    try:
        _write_pointer(run, name)
    except OSError as e:
        prev = find_latest(run)
        if prev is not None and prev != final:
            shutil.rmtree(final, ignore_errors=True)
        kept = f"; the previous checkpoint {prev} is intact" if prev and prev != final else ""
        raise CheckpointError(
            f"cannot update {run / LATEST}: {_disk_message(e)}{kept}"
        ) from None
    _prune(run, keep, final)
    return final


def _jsonable_metadata(md: Any) -> Any:
    if not isinstance(md, Mapping):
        return None
    try:
        out = {str(k): dict(v) for k, v in md.items()}
        json.dumps(out, allow_nan=False)
        return out
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Load


@dataclass
class Checkpoint:
    """A loaded checkpoint: states as plain Python/tensor structures plus its metadata."""

    path: Path
    step: int
    data_position: int
    spec_text: str
    spec_hash: str
    model_state: dict[str, torch.Tensor]
    optim_state: Any
    extra: Any
    rng: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def restore_rng(self) -> None:
        """Set the process RNGs to the saved states (see :func:`restore_rng_state`)."""
        if self.rng:
            restore_rng_state(self.rng)


def resume_latest(run_dir: str | os.PathLike[str], *, move_aside: bool = True,
                  **load: Any) -> tuple[Checkpoint | None, list[str]]:
    """Load the newest checkpoint of a run that verifies; ``load`` goes to `load_checkpoint`.

    Returns the checkpoint (``None`` when the run has no checkpoint folder at all) and one note
    per newer folder that did not verify. Such a folder is never deleted or overwritten: it is
    renamed ``unreadable-step_<n>`` (by one process: ``move_aside``) so the resumed run can write
    its step again. A checkpoint of another spec stops the search (`CheckpointError`), and so
    does a run whose every checkpoint is unreadable: starting over would silently discard it.
    """
    run = Path(run_dir)
    folders = step_folders(run)
    notes: list[str] = []
    for p in folders:
        try:
            return load_checkpoint(p, **load), notes
        except UnreadableCheckpoint as e:
            kept = f"; kept it as {_move_aside(p).name}" if move_aside else ""
            notes.append(f"checkpoint {p.name} does not verify ({e}){kept}")
    aside = unreadable_folders(run)
    if not folders and not aside:
        return None, notes
    notes += [f"{p.name} was set aside earlier (it did not verify)" for p in aside if not any(
        p.name in n for n in notes)]
    raise CheckpointError(
        f"no checkpoint in {run} verifies: " + "; ".join(notes) +
        ". Nothing was overwritten; remove the run folder or choose another --out to start over")


def _move_aside(p: Path) -> Path:
    """Rename an unreadable checkpoint folder out of the ``step_<n>`` namespace (first free name)."""
    for i in range(1000):
        aside = p.with_name(f"{UNREADABLE_PREFIX}{p.name}" + (f".{i}" if i else ""))
        if not aside.exists():
            os.rename(p, aside)
            _fsync_dir(p.parent)
            return aside
    raise CheckpointError(f"cannot move the unreadable checkpoint {p} aside: too many copies")


def _check_identity(p: Path, stored: dict[str, Any], current: dict[str, Any], force: bool) -> None:
    from nestdsl.spec.identity import differences

    diffs = differences(stored, current)
    if diffs and not force:
        shown = "; ".join(str(d) for d in diffs[:6]) + (f"; … {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise SpecMismatch(
            f"checkpoint {p} was trained with a spec that differs in {len(diffs)} field"
            f"{'s' if len(diffs) != 1 else ''} (stored → given): {shown}. Leave out the spec to "
            "use the stored one, undo the change, or pass --force to load it anyway", diffs)


def _is_sharded_model(model: Any) -> bool:
    return any(hasattr(p, "device_mesh") for p in getattr(model, "parameters", list)())


def _load_sharded(p: Path, meta: dict[str, Any], model: Any, optimizer: Any, device: str,
                  restore_rng: bool, rank: int, level_params: dict[str, Any] | None) -> Checkpoint:
    from nestdsl.runtime import sharded

    extra, rng = sharded.load(p, meta, model=model, optimizer=optimizer, device=device,
                              rank=rank, level_params=level_params)
    ckpt = Checkpoint(path=p, step=int(meta["step"]), data_position=int(meta["data_position"]),
                      spec_text=meta.get("spec_text", ""), spec_hash=meta.get("spec_hash", ""),
                      model_state={}, optim_state=None, extra=extra, rng=rng, meta=meta)
    if restore_rng:
        ckpt.restore_rng()
    return ckpt


def _load_tensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise UnreadableCheckpoint(f"cannot read {path}: {e}") from None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    optimizer: Any = None,
    spec_text: str | None = None,
    expected_hash: str | None = None,
    identity: dict[str, Any] | None = None,
    force: bool = False,
    restore_rng: bool = False,
    device: str = "cpu",
    strict: bool = True,
    verify: bool = True,
    rank: int = 0,
    level_params: dict[str, Any] | None = None,
) -> Checkpoint:
    """Load a checkpoint folder, or the newest complete one of a run folder.

    With ``identity`` (`spec.identity.identity`) the stored spec must mean the same, else
    :class:`SpecMismatch` lists what differs (``force``: load anyway). A checkpoint written
    before identities were stored is compared by ``spec_text`` hash. With ``spec_text`` (or
    ``expected_hash``) alone the stored hash must match. With ``model`` /
    ``optimizer`` the states are loaded into them (``strict`` for the model). ``restore_rng``
    sets the process RNGs. ``verify`` checks the files' sha256. Never unpickles anything.
    A sharded checkpoint (an FSDP run's, `runtime/sharded.py`) loads into any sharding of the
    model: ``rank`` is this process's rank, ``level_params`` the persistent levels' parameters.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir() and not (p / META_FILE).exists():
        if _step_of(p) is not None:       # a step folder whose meta.json is gone: damaged
            raise UnreadableCheckpoint(f"checkpoint {p} has no {META_FILE}")
        latest = find_latest(p)
        if latest is None:
            raise CheckpointError(f"no complete checkpoint in {p}")
        p = latest
    meta = read_meta(p)
    want = expected_hash if expected_hash is not None else (
        spec_hash(spec_text) if spec_text is not None else None
    )
    stored_identity = (meta.get("spec") or {}).get("identity")
    if identity is not None and stored_identity is not None:
        _check_identity(p, stored_identity, identity, force)
        want = None
    elif identity is not None:
        if not force:
            raise CheckpointError(
                f"checkpoint {p} was written by an older nestdsl that did not store its spec's "
                "identity; pass --force to load it with this spec")
        want = None
    if want is not None and meta.get("spec_hash") != want:
        raise CheckpointError(
            f"checkpoint {p} was written by a different spec (spec hash "
            f"{str(meta.get('spec_hash'))[:12]}, this spec {want[:12]}); use the spec it was "
            "trained with, or a new output folder (--force loads it anyway)"
        )
    if meta.get("complete") is not True:
        raise UnreadableCheckpoint(f"checkpoint {p} is incomplete")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    sharded = meta.get("layout") == "sharded"
    for fname, info in meta.get("files", {}).items():
        fp = p / fname
        if not fp.is_file():
            raise UnreadableCheckpoint(f"checkpoint {p} is missing {fname}")
        if verify and _sha256(fp) != info.get("sha256"):
            raise UnreadableCheckpoint(f"checkpoint file {fp} is corrupt (sha256 mismatch)")
        if not sharded:
            tensors[fname] = _load_tensors(fp, device)
    if sharded:
        return _load_sharded(p, meta, model, optimizer, device, restore_rng, rank, level_params)
    if model is not None and _is_sharded_model(model):
        raise CheckpointError(
            f"checkpoint {p} was written by one process (or DDP); resume it that way, or under "
            "--parallel ddp: a run under FSDP resumes from its own sharded checkpoints")
    model_state = unflatten_state(meta["model"], tensors.get(MODEL_FILE, {}))
    if isinstance(model_state, dict):
        model_state = OrderedDict(model_state)
        if meta.get("model_metadata") is not None:
            model_state._metadata = OrderedDict(meta["model_metadata"])  # type: ignore[attr-defined]
    optim_state = unflatten_state(meta["optim"], tensors.get(OPTIM_FILE, {}))
    state_t = tensors.get(STATE_FILE, {})
    extra = unflatten_state(meta["extra"], state_t)
    rng: dict[str, Any] = {}
    if meta.get("rng"):
        r = meta["rng"]
        rng = {
            "python": r.get("python"),
            "numpy": r.get("numpy"),
            "torch_cpu": state_t.get("rng.torch_cpu"),
            "cuda": [state_t[f"rng.cuda.{i}"] for i in range(int(r.get("cuda", 0)))],
        }
    ckpt = Checkpoint(
        path=p,
        step=int(meta["step"]),
        data_position=int(meta["data_position"]),
        spec_text=meta.get("spec_text", ""),
        spec_hash=meta.get("spec_hash", ""),
        model_state=model_state,
        optim_state=optim_state,
        extra=extra,
        rng=rng,
        meta=meta,
    )
    if model is not None:
        if hasattr(model, "load_state_dict") and not isinstance(model, Mapping):
            try:
                model.load_state_dict(model_state, strict=strict)
            except (RuntimeError, KeyError, ValueError) as e:
                first = str(e).strip().splitlines()
                raise CheckpointError(
                    f"model state in {p} does not fit the model: "
                    + " ".join(s.strip() for s in first[:3])
                ) from None
        else:
            _load_into(model, model_state, "model")
    if optimizer is not None:
        _load_into(optimizer, optim_state, "optimizer")
    if restore_rng:
        ckpt.restore_rng()
    return ckpt
