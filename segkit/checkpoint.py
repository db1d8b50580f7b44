"""Checkpoints: atomic save, exact resume, and loading a model back from a checkpoint.

A checkpoint is a dict written with ``torch.save``:
``model`` (state dict, no ``module.`` prefix), ``optimizer``, ``scheduler``, ``scaler``,
``epoch`` (epochs completed), ``step`` (optimiser steps done), ``best_miou``, ``best_epoch``,
``rng`` (python / numpy / torch / cuda states), ``config`` (the resolved run config as plain
containers), ``class_names``, ``palette``, ``metrics`` (last validation) and ``world_size``.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.errors import CheckpointError

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
LAST, BEST = "last.pt", "best.pt"


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write ``obj`` to ``path`` through a temp file + fsync + rename, so a crash at any
    moment leaves either the previous file or the new one, never a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a segkit checkpoint; every failure names the file and says what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path} (give a .pt file or a run directory holding "
            f"{CKPT_DIR}/{LAST})"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which, keep the cause
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(
            f"{path} is not a segkit checkpoint (expected a dict with 'model' and 'config'); "
            "for plain weights use model.init_from=PATH instead"
        )
    return ckpt


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """Turn ``trainer.resume`` into a checkpoint path, or None for a fresh start.

    ``None``/``""``: fresh. ``auto``: the newest loadable checkpoint in ``run_dir`` if any
    checkpoint exists there, else fresh. A path: a checkpoint file, or a run directory
    (its ``checkpoints/last.pt``); missing -> CheckpointError.
    """
    if not resume:
        return None
    if str(resume) == "auto":
        candidates = sorted(
            (run_dir / CKPT_DIR).glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for cand in candidates:
            try:
                load(cand)
                return cand
            except CheckpointError as e:
                log.warning("skipping unusable checkpoint: %s", e)
        if candidates:
            names = ", ".join(str(c) for c in candidates)
            raise CheckpointError(f"trainer.resume=auto: no loadable checkpoint among {names}")
        return None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / CKPT_DIR / LAST
    if not path.is_file():
        raise CheckpointError(
            f"trainer.resume={resume}: {path} does not exist; pass a checkpoint file, a run "
            "directory, or trainer.resume=auto"
        )
    return path


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the model stored in a checkpoint (architecture from its config, weights from
    its state dict). Returns ``(model in eval mode, checkpoint dict)``."""
    from segkit.run import instantiate_model

    ckpt = load(path, map_location)
    model = instantiate_model(ckpt["config"]["model"], from_checkpoint=True)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
