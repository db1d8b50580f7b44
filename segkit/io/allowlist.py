"""What a config read from a file may name: a checkpoint is data, never code. A stored model
config may only build one of segkit's model classes, a stored dataset config one of segkit's
dataset classes; anything else is refused before anything is imported or built."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from segkit.errors import CheckpointError

_DOTTED = re.compile(r"[A-Za-z]\w*(\.[A-Za-z]\w*)+")  # no leading underscores: no dunders


# What nested ``_target_``s of a stored config may name besides torch.nn layers: a model's
# blocks; a dataset's augmentation steps (plain classes of segkit.data, torchvision v2
# transforms). Classes only, resolved within these packages; nothing else is imported.
_NESTED = {
    "model": (("segkit.models", nn.Module),),
    "dataset": (("segkit.data", object), ("torchvision.transforms.v2", nn.Module)),
}

_FIX = {
    "model": "build the model from your own config and load the weights with model.init_from=PATH",
    "dataset": "name the dataset yourself (eval.py dataset=NAME)",
}


def check_model_target(model_cfg: Any, source: str | Path = "checkpoint") -> None:
    """Refuse a model config read from a file unless its ``_target_`` names a model class of
    segkit (an ``nn.Module`` subclass defined in ``segkit.models``); nested ``_target_``s may
    also name ``torch.nn`` layers. Imports nothing outside those packages, builds nothing.

    Raises CheckpointError naming the target and where it came from."""
    _check_targets(model_cfg, "model", "segkit.models", nn.Module, source)


def check_dataset_target(dataset_cfg: Any, source: str | Path = "checkpoint") -> None:
    """As `check_model_target`, for a dataset config: a ``Dataset`` class of ``segkit.data``."""
    from torch.utils.data import Dataset

    _check_targets(dataset_cfg, "dataset", "segkit.data", Dataset, source)


def _check_targets(node: Any, name: str, root: str, base: type, source: str | Path) -> None:
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise CheckpointError(
            f"{source}: the stored config has no {name} with a _target_ (found "
            f"{type(node).__name__}); it was not written by segkit"
        )
    for key, target in _targets(node, name):
        top = key == f"{name}._target_"
        allowed = [(root, base)] if top else [*_NESTED[name], ("torch.nn", nn.Module)]
        if not any(_resolves_within(target, r, b) for r, b in allowed):
            raise CheckpointError(
                f"{source}: the stored {name} config names {key}={target!r}, which is not one "
                f"of segkit's own classes ({root}.*); a checkpoint may only name those, so it "
                f"was refused before anything was built. To use it anyway, {_FIX[name]}"
            )


def _targets(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every ``_target_`` in a nested config."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "_target_":
                yield f"{where}._target_", value
            else:
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def _resolves_within(target: Any, root: str, base: type) -> bool:
    """True when ``target`` names, inside package ``root``, a subclass of ``base`` defined
    there (``segkit.models.unet.os.system`` has the prefix but names ``os.system``)."""
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        return False
    if not target.startswith(root + "."):
        return False
    obj = _locate_within(target, root)
    return inspect.isclass(obj) and issubclass(obj, base) and _inside(obj.__module__, root)


def _inside(module: str, root: str) -> bool:
    return f"{module}.".startswith(f"{root}.")


def _locate_within(target: str, root: str) -> object | None:
    """What Hydra would locate for ``target``, importing only submodules of ``root``."""
    obj: object = importlib.import_module(root)
    for part in target[len(root) + 1 :].split("."):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif isinstance(obj, ModuleType) and _inside(obj.__name__, root):
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            except ImportError:
                return None
        else:
            return None
    return obj
