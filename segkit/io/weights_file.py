"""Weights files for sharing: a ``.safetensors`` file with the model's tensors and, as JSON
metadata, the run config, label space, class names and palette. Loading one never runs code;
``segkit.run.models.load_model``, ``model.init_from``, ``eval.py`` and predict accept it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segkit.errors import CheckpointError
from segkit.io.checkpoint import load, write_file_atomic
from segkit.io.partial_load import read_safetensors

WEIGHTS_FORMAT = "segkit-weights/1"  # the "format" entry of a weights file's metadata
_META_KEYS = ("config", "labels", "class_names", "palette", "logit_bias")


def export_weights(ckpt: Mapping[str, Any] | str | Path, out_path: str | Path) -> Path:
    """Write a weights file for sharing: the model's tensors of ``ckpt`` (a checkpoint dict as
    ``Trainer.state_dict`` makes it, or a checkpoint file) in the safetensors format, with the
    run config, label space, class names, palette (and calibration biases) as JSON metadata; no
    optimizer, RNG or history. Written atomically; returns ``out_path``."""
    from safetensors.torch import save

    if not isinstance(ckpt, Mapping):
        ckpt = load(ckpt)
    meta = {"format": WEIGHTS_FORMAT}
    meta.update({k: json.dumps(ckpt[k]) for k in _META_KEYS if ckpt.get(k) is not None})
    data = save(_unshared(ckpt["model"]), metadata=meta)
    out = Path(out_path)
    write_file_atomic(out, lambda f: f.write(data))
    return out


def _unshared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors; tensors sharing memory are copied (safetensors refuses them)."""
    out, seen = {}, set()
    for key, value in state.items():
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[key] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def read_weights_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A weights file from `export_weights` as a checkpoint-like dict: ``model`` (tensors),
    ``config``, ``labels``, ``class_names``, ``palette`` (and ``logit_bias`` when calibrated)."""
    tensors, meta = read_safetensors(path, map_location)
    if meta.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file without segkit's metadata (format "
            f"{meta.get('format')!r}, expected {WEIGHTS_FORMAT!r}): it holds weights only; use "
            "it as model.init_from=PATH with a model config"
        )
    try:
        info = {k: json.loads(meta[k]) for k in _META_KEYS if k in meta}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its metadata is not valid JSON ({e})") from e
    return {**info, "model": tensors}
