"""Tolerant weight loading: partial state dicts, wrapper prefixes, loud failure on no match.

The user's notes load pretrained weights by keeping the keys that the new model also has
(``{k: v for k, v in old.items() if k in model_dict}``) and hit
``Unexpected key(s) in state_dict: "module.features..."`` after DataParallel training.
`load_weights` does both properly: it strips ``module.`` (DataParallel / DDP) and ``_orig_mod.``
(``torch.compile``) from both sides, keeps only tensors whose name *and* shape match, reports
what it skipped, and refuses to continue when too little matched (a wrong architecture would
otherwise train from scratch without anyone noticing).

Files are read as data only: ``.pt``/``.pth`` with ``torch.load(weights_only=True)`` and
``.safetensors`` through the safetensors library. A file that needs arbitrary unpickling (the
notes' ``torch.save(model)``) is refused with `UnsafeCheckpointError`; converting it is an
explicit step the user takes (``scripts/convert_checkpoint.py --trust``), never a fallback.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segkit.errors import CheckpointError

__all__ = [
    "LoadReport",
    "UnsafeCheckpointError",
    "is_safetensors",
    "load_weights",
    "normalize_key",
    "read_checkpoint",
    "read_safetensors",
    "read_state_dict",
]

# What the previous checkpoint format needs beyond plain data: numpy's RNG state, a uint32
# array. Only that dtype can be rebuilt (object arrays, which could hold anything, cannot).
_RECONSTRUCT = (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct
_NUMPY_RNG_GLOBALS = [
    _RECONSTRUCT,
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),  # written under numpy 1.x
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "net")


class UnsafeCheckpointError(CheckpointError):
    """A file that only loads by unpickling arbitrary Python objects (which can run code)."""


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


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> object:
    """A ``.pt``/``.pth`` file read as data (``torch.load(weights_only=True)``), or the
    ``{name: tensor}`` dict of a ``.safetensors`` file. Never unpickles code.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file holds pickled Python objects (``torch.save(model)``);
            the message names them and the explicit conversion step.
        CheckpointError: the file is corrupt or not a torch / safetensors file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if is_safetensors(path):
        return read_safetensors(path, map_location)[0]
    try:
        with torch.serialization.safe_globals(_NUMPY_RNG_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except Exception as err:  # truncated zip, foreign file, ...
        raise CheckpointError(f"{path} is corrupt or unreadable: {_first_line(err)}") from err


def _refusal(path: Path, err: Exception) -> CheckpointError:
    """The error for a file ``weights_only`` loading refused: unsafe (names what it would
    import and the way out) or corrupt."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (legacy format or garbage): read the message
        names = re.findall(r"GLOBAL ([\w.]+)", str(err))
    if not names:
        return CheckpointError(f"{path} is corrupt or unreadable: {_first_line(err)}")
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _NUMPY_RNG_GLOBALS if callable(g)}
    shown = sorted({n for n in names if n not in allowed} or set(names))
    return UnsafeCheckpointError(
        f"{path} holds pickled Python objects ({', '.join(shown[:8])}"
        f"{', ...' if len(shown) > 8 else ''}), not only tensors and plain data: unpickling them "
        "can run arbitrary code on this machine, so segkit refuses to load it. If you trust the "
        "file and where it came from, convert it once with "
        f"`python scripts/convert_checkpoint.py {path} CONVERTED.pt --trust` and use the "
        "converted file"
    )


def _first_line(err: Exception) -> str:
    """The informative line of a (long) torch.load error message."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def is_safetensors(path: str | Path) -> bool:
    """True when ``path`` starts like a safetensors file: an 8-byte little-endian header
    length, then a JSON header that fits in the file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") + 8 <= path.stat().st_size


def read_safetensors(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file (a JSON header and raw bytes: no code)."""
    from safetensors import safe_open

    device = str(torch.device(map_location))
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:
        raise CheckpointError(f"{path} is a corrupt safetensors file: {err}") from err


def read_state_dict(source: str | Path | Mapping) -> dict[str, torch.Tensor]:
    """Load ``source`` and unwrap it to a flat ``{name: tensor}`` dict (keys not normalised).

    Accepts a path (``.pt``/``.pth``/``.safetensors``, read by `read_checkpoint`), a state
    dict, a checkpoint dict with a ``model`` / ``state_dict`` entry (segkit checkpoints store
    ``{"model": ..., "config": ...}``), or an in-memory ``nn.Module``. Non-tensor entries are
    dropped.
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
        CheckpointError: ``source`` is corrupt, or needs unpickling (`UnsafeCheckpointError`).
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
