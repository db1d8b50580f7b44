"""Checkpoints: atomic save, safe load, exact resume, weights files to share, models back.

A checkpoint is a ``torch.save``d dict of tensors and plain data only (numbers, strings,
bools, None, lists, tuples, dicts), so ``torch.load(weights_only=True)`` reads it without
running code: ``model`` (state dict, no ``module.`` prefix), ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (epochs completed), ``step`` (optimiser steps done), ``best_miou``,
``best_epoch``, ``rng`` (`rng_state`: generator states as lists and tensors), ``config`` (the
resolved run config), ``labels`` (``LabelSpace.to_dict()``), ``class_names``, ``palette``,
``metrics`` (last validation), ``world_size`` and ``tracking`` (``{logger: run id}``: the
experiment trackers' runs, so a resumed run continues them). Checkpoints of the previous
format (numpy's RNG state as an array) load too and are upgraded in memory.

A weights file (`segkit.io.weights_file.export_weights`) is a ``.safetensors`` file: the model's
tensors, and as JSON metadata the run config, label space, class names and palette.
`load_model` accepts both and builds only a model whose stored ``_target_`` is one of segkit's
(`check_model_target`).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from segkit.errors import CheckpointError, StorageError
from segkit.io.partial_load import UnsafeCheckpointError, is_safetensors, read_checkpoint

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
LAST, BEST = "last.pt", "best.pt"
INTERRUPT, PERIODIC = "interrupt.pt", "periodic.pt"  # mid-epoch: hold ``epoch_step``
TMP_MARK = ".tmp-"  # .<name>.tmp-<pid>: a checkpoint being written
_LEAF_TYPES = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)
_CONTAINERS = (dict, OrderedDict, list, tuple, torch.Size)


# --------------------------------------------------------------------------- save
def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write ``obj`` to ``path`` through a temp file + fsync + rename, so a crash at any
    moment leaves either the previous file or the new one, never a truncated file.

    Raises TypeError (naming the entry) when ``obj`` holds anything but tensors and plain
    data: such a file would need unpickling to load back."""
    check_plain(obj)
    write_file_atomic(Path(path), lambda f: torch.save(obj, f), tensor_bytes(obj))


def write_file_atomic(path: Path, write: Callable[[IO[bytes]], None], nbytes: int = 0) -> None:
    """Temp file in the same folder, fsync, rename, fsync of the folder. A failure (disk full,
    permissions) removes the temp file, leaves ``path`` as it was and raises StorageError
    naming the folder, the space free there and ``nbytes`` (about what the file needs)."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _storage_error(path, e, nbytes) from e


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a crash right after it keeps the new name)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on a folder
        pass
    finally:
        os.close(fd)


def _storage_error(path: Path, e: OSError, nbytes: int) -> StorageError:
    free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
    return StorageError(
        f"could not write {path.name} in {path.parent}: {e.strerror or e} "
        f"({free / 1e6:.1f} MB free there, the file needs about {nbytes / 1e6:.1f} MB); free "
        "some space or fix the permissions, then resume with resume=auto (the previous "
        "checkpoints are untouched)"
    )


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested container (about the size of its checkpoint file)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def tidy_checkpoint_dir(folder: Path) -> None:
    """At the start of a run (rank 0): remove temp files a killed write left behind, and if a
    kill hit the ``best`` write, restore ``best`` from ``last`` (which is that same epoch)."""
    for tmp in folder.glob(f".*{TMP_MARK}*"):
        log.warning("removing %s, left by an interrupted checkpoint write", tmp)
        tmp.unlink(missing_ok=True)
    last, best = folder / LAST, folder / BEST
    if not last.is_file():
        return
    state = load(last)
    if state.get("best_epoch") != state.get("epoch") or state.get("epoch_step"):
        return
    if state.get("best_step", -1) not in (-1, state.get("step")):  # best inside the epoch
        return
    if best.is_file() and load(best).get("epoch") == state["epoch"]:
        return
    log.warning(
        "best checkpoint missing or stale: restoring it from %s (epoch %d)", last, state["epoch"]
    )
    save_atomic(state, best)


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``obj`` is tensors and plain data all the way down (exact types:
    a numpy float or a namedtuple would be pickled as a Python object)."""
    if isinstance(obj, torch.Tensor) or type(obj) in _LEAF_TYPES:
        return
    if type(obj) not in _CONTAINERS:
        raise TypeError(
            f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: a checkpoint may "
            "hold only tensors, numbers, strings, bools, None, lists, tuples and dicts"
        )
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, value in items:
        check_plain(key, f"{where} key {key!r}")
        check_plain(value, f"{where}[{key!r}]")


# --------------------------------------------------------------------------- load
def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a segkit checkpoint as data (``weights_only=True``); every failure names the file
    and says what to do. A file that needs arbitrary unpickling raises UnsafeCheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path} (give a .pt file or a run directory holding "
            f"{CKPT_DIR}/{LAST})"
        )
    if is_safetensors(path):
        raise CheckpointError(
            f"{path} is a weights file (.safetensors: weights and model config, no optimizer "
            "or RNG state): it cannot be resumed; fine-tune from it with model.init_from=PATH"
        )
    ckpt = read_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(
            f"{path} is not a segkit checkpoint (expected a dict with 'model' and 'config'); "
            "for plain weights use model.init_from=PATH instead"
        )
    if isinstance(ckpt.get("rng"), dict):
        ckpt["rng"] = plain_rng_state(ckpt["rng"])
    return ckpt


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """Turn ``resume`` into a checkpoint path, or None for a fresh start.

    ``None``/``""``: fresh. ``auto``: the loadable checkpoint in ``run_dir`` furthest into
    training (`_furthest_checkpoint`) if any checkpoint exists there, else fresh; an unsafe
    file stops it rather than being skipped.
    A path: a checkpoint file, or a run directory (its ``checkpoints/last.pt``); missing ->
    CheckpointError.
    """
    if not resume:
        return None
    if str(resume) == "auto":
        return _furthest_checkpoint(run_dir / CKPT_DIR)
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / CKPT_DIR / LAST
    if not path.is_file():
        raise CheckpointError(
            f"resume={resume}: {path} does not exist; pass a checkpoint file, a run "
            "directory, or resume=auto"
        )
    return path


# on equal progress: the training state before the epoch-end file, ``best`` last (calibration
# rewrites it after training: it is a deployment file, not where training stands)
_RESUME_ORDER = (INTERRUPT, PERIODIC, LAST, BEST)


def _furthest_checkpoint(folder: Path) -> Path | None:
    """The loadable checkpoint furthest into training (optimiser step, then epoch and position
    in it; ties by `_RESUME_ORDER`), never chosen by file time. None when the folder holds no
    checkpoint; CheckpointError when none of them loads."""
    candidates = sorted(folder.glob("*.pt"))
    progress = {}
    for cand in candidates:
        try:
            state = load(cand)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            log.warning("skipping unusable checkpoint: %s", e)
            continue
        rank = _RESUME_ORDER.index(cand.name) if cand.name in _RESUME_ORDER else len(_RESUME_ORDER)
        keys = (state.get("step") or 0, state.get("epoch") or 0, state.get("epoch_step") or 0)
        progress[cand] = (*keys, -rank)
    if progress:
        return max(progress, key=progress.__getitem__)
    if candidates:
        names = ", ".join(str(c) for c in candidates)
        raise CheckpointError(f"resume=auto: no loadable checkpoint among {names}")
    return None


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """The python / numpy / torch (/ cuda) generator states as plain data: python's and
    numpy's MT19937 states as lists of ints, torch's as uint8 tensors."""
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def plain_rng_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` in `rng_state`'s form; the previous format's tuples (``random.getstate()``,
    ``np.random.get_state()``) are converted."""
    out = dict(state)
    py = state.get("python")
    if isinstance(py, tuple):
        out["python"] = {"version": py[0], "state": list(py[1]), "gauss_next": py[2]}
    npy = state.get("numpy")
    if isinstance(npy, tuple):
        name, key, pos, has_gauss, gauss = npy
        out["numpy"] = {
            "bit_generator": str(name),
            "key": np.asarray(key).tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        }
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators from `rng_state` (or the previous format's) output."""
    state = plain_rng_state(state)
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    np.random.set_state(
        {
            "bit_generator": npy["bit_generator"],
            "state": {"key": np.asarray(npy["key"], dtype=np.uint32), "pos": npy["pos"]},
            "has_gauss": npy["has_gauss"],
            "gauss": npy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())  # map_location may have moved it
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"][: torch.cuda.device_count()]]
        torch.cuda.set_rng_state_all(cuda_states)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class CheckpointWriter:
    """Rank 0's checkpoint folder: each checkpoint written atomically under its name.
    ``extra``: plain entries added to every checkpoint (``tracking``: the loggers' run ids)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.extra: dict[str, Any] = {}

    def save(self, name: str, make_state: Callable[[], dict[str, Any]]) -> Path:
        """``make_state()`` saved as ``folder/name``; the state is only built where it is saved."""
        path = self.folder / name
        save_atomic({**make_state(), **self.extra}, path)
        return path

    def remove(self, *names: str) -> None:
        for name in names:
            (self.folder / name).unlink(missing_ok=True)


class NullCheckpointWriter:
    """The other ranks' (and file-less Trainers') checkpoint writer: writes nothing."""

    def save(self, name: str, make_state: Callable[[], dict[str, Any]]) -> None:
        return None

    def remove(self, *names: str) -> None:
        pass
