"""Tolerant weight loading: partial state dicts, wrapper prefixes, loud failure on no match.

The user's notes load pretrained weights by keeping the keys that the new model also has
(``{k: v for k, v in old.items() if k in model_dict}``) and hit
``Unexpected key(s) in state_dict: "module.features..."`` after DataParallel training.
`load_weights` does both properly: it strips ``module.`` (DataParallel / DDP) and ``_orig_mod.``
(``torch.compile``) from both sides, keeps only tensors whose name *and* shape match, reports
what it skipped, and refuses to continue when too little matched (a wrong architecture would
otherwise train from scratch without anyone noticing).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["LoadReport", "load_weights", "normalize_key", "read_checkpoint", "read_state_dict"]

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "net")


@dataclass
class LoadReport:
    """Outcome of `load_weights`; every field is a list of model-side key names.

    ``unexpected`` holds source keys absent from the model (after prefix stripping);
    ``skipped_shape`` holds ``(key, source_shape, model_shape)`` triples.
    """

    loaded: list[str] = field(default_factory=list)
    skipped_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    matched_fraction: float = 0.0

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors ({self.matched_fraction:.1%} of model parameters), "
            f"skipped {len(self.skipped_shape)} (shape mismatch), "
            f"{len(self.unexpected)} unexpected, {len(self.missing)} missing"
        ]
        for key, src, dst in self.skipped_shape[:20]:
            lines.append(f"  shape mismatch: {key}: checkpoint {list(src)} vs model {list(dst)}")
        lines += [f"  missing: {k}" for k in self.missing[:20]]
        if len(self.missing) > 20:
            lines.append(f"  ... and {len(self.missing) - 20} more missing")
        return "\n".join(lines)


def normalize_key(key: str) -> str:
    """Drop wrapper prefixes: leading ``module.`` (DataParallel/DDP) and any ``_orig_mod.``."""
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    while parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def read_checkpoint(path: str | Path) -> object:
    """``torch.load`` on CPU, ``weights_only=True`` first (safe), else a warned fallback."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Checkpoints saved with torch.save(model) (as in the notes) pickle whole objects.
        warnings.warn(
            f"{path}: not loadable with weights_only=True ({str(err).splitlines()[0]}); "
            "falling back to weights_only=False, which runs pickled code: only do this for "
            "files you trust, and re-save as a plain state_dict",
            stacklevel=2,
        )
        return torch.load(path, map_location="cpu", weights_only=False)


def read_state_dict(source: str | Path | Mapping) -> dict[str, torch.Tensor]:
    """Load ``source`` and unwrap it to a flat ``{name: tensor}`` dict (keys not normalised).

    Accepts a path (``.pt``/``.pth``), a state dict, a checkpoint dict with a ``model`` /
    ``state_dict`` entry (segkit checkpoints store ``{"model": ..., "config": ...}``), or a
    pickled ``nn.Module``. Non-tensor entries are dropped.
    """
    obj: object = source
    if isinstance(source, str | Path):
        obj = read_checkpoint(source)
    for _ in range(3):  # nested wrappers such as {"model": {"state_dict": ...}}
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, Mapping):
            wrapped = (obj.get(k) for k in _WRAPPER_KEYS)
            inner = next((v for v in wrapped if isinstance(v, Mapping | nn.Module)), None)
            if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict or checkpoint dict, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _match(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], strict_shapes: bool
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    by_norm = {normalize_key(k): k for k in target}
    report, matched = LoadReport(), {}
    for key, value in source.items():
        model_key = by_norm.get(normalize_key(key))
        if model_key is None:
            report.unexpected.append(key)
            continue
        want = target[model_key]
        if value.shape == want.shape:
            matched[model_key] = value
        elif not strict_shapes and value.numel() == want.numel():
            matched[model_key] = value.reshape(want.shape)
        else:
            report.skipped_shape.append((model_key, tuple(value.shape), tuple(want.shape)))
            continue
        report.loaded.append(model_key)
    report.missing = [k for k in target if k not in matched]
    return matched, report


def load_weights(
    model: nn.Module,
    source: str | Path | Mapping,
    *,
    min_match: float = 0.5,
    strict_shapes: bool = True,
) -> LoadReport:
    """Copy matching tensors from ``source`` into ``model`` in place.

    Keys are compared after `normalize_key` on both sides, so a DDP-wrapped or compiled model
    and its checkpoint always line up. With ``strict_shapes=False`` a tensor whose shape differs
    but whose element count matches (e.g. Linear weight vs 1x1 conv weight) is reshaped in.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        RuntimeError: the loaded tensors cover less than ``min_match`` of the model's parameter
            elements (buffers such as BatchNorm statistics do not count).
    """
    target = model.state_dict()
    matched, report = _match(read_state_dict(source), target, strict_shapes)
    params = {name for name, _ in model.named_parameters()}
    total = sum(target[k].numel() for k in params) or 1
    report.matched_fraction = sum(matched[k].numel() for k in matched if k in params) / total
    if report.matched_fraction < min_match:
        name = source if isinstance(source, str | Path) else "the given state dict"
        raise RuntimeError(
            f"only {report.matched_fraction:.1%} of {type(model).__name__}'s parameters match "
            f"{name} (min_match={min_match:.0%}): {report}\n"
            "Check that the checkpoint was trained with the same architecture / backbone "
            "(model config) and num_classes; lower min_match only if a partial load is intended."
        )
    target.update(matched)
    model.load_state_dict(target)
    return report
