"""Feature-map recording and visualisation with forward hooks (the notes' ``register_forward_hook``
recipe, with the handles always removed).

Example::

    with FeatureRecorder(model, ["encoder.downs.0", "head"]) as rec:
        model(x)
    save_feature_maps(rec.features, "feature_maps/")
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

__all__ = ["FeatureRecorder", "feature_grid", "log_feature_maps", "save_feature_maps"]


class FeatureRecorder:
    """Context manager recording the outputs of named submodules during forward passes.

    ``layer_names`` are names from ``model.named_modules()``. Each forward stores the output
    (a detached copy, on its device) in ``features[name]``, replacing the previous one;
    tuple/list/dict outputs are stored per element as ``name[i]`` / ``name[key]``. Hooks are
    removed on exit, also when the block raises.

    Raises:
        KeyError: a name is not a submodule (the message lists close matches).
    """

    def __init__(self, model: nn.Module, layer_names: Iterable[str]) -> None:
        modules = dict(model.named_modules())
        self.layer_names = list(layer_names)
        for name in self.layer_names:
            if name not in modules:
                raise KeyError(_unknown_layer_message(name, list(modules)))
        self._modules = {name: modules[name] for name in self.layer_names}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.features: dict[str, torch.Tensor] = {}

    def __enter__(self) -> FeatureRecorder:
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            self._store(name, output)

        return hook

    def _store(self, name: str, output: object) -> None:
        if isinstance(output, torch.Tensor):
            # clone: a following in-place op (ReLU(inplace=True)) would rewrite a shared view
            self.features[name] = output.detach().clone()
        elif isinstance(output, Mapping):
            for key, value in output.items():
                self._store(f"{name}[{key}]", value)
        elif isinstance(output, list | tuple):
            for i, value in enumerate(output):
                self._store(f"{name}[{i}]", value)


def _unknown_layer_message(name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
    top = sorted({n.split(".")[0] for n in available if n})
    hint = f"close matches: {close}" if close else f"top-level modules: {top}"
    return (
        f"no submodule named {name!r}; {hint}. "
        "List all names with [n for n, _ in model.named_modules()]"
    )


def feature_grid(feature: torch.Tensor, max_channels: int = 16, min_tile: int = 64) -> np.ndarray:
    """First sample's first ``max_channels`` channels as one uint8 ``(H_grid, W_grid)`` image.

    ``feature`` is ``(N, C, H, W)`` or ``(C, H, W)``. Each channel is min-max normalised on its
    own (a constant channel becomes 0), small maps are enlarged (nearest) to about ``min_tile``
    pixels, and tiles are laid out in a near-square grid with 2-pixel gaps.
    """
    if feature.ndim == 4:
        feature = feature[0]
    if feature.ndim != 3:
        raise ValueError(f"expected a (N, C, H, W) or (C, H, W) feature map, got {feature.shape}")
    maps = feature[:max_channels].float().cpu()
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = (maps.amax(dim=(1, 2), keepdim=True) - low).clamp(min=1e-12)
    tiles = ((maps - low) / span * 255).round().to(torch.uint8).numpy()
    scale = max(1, math.ceil(min_tile / max(tiles.shape[1:])))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    th, tw, gap = tiles.shape[1], tiles.shape[2], 2
    grid = np.zeros((rows * (th + gap) - gap, cols * (tw + gap) - gap), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = tile
    return grid


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "features"


def save_feature_maps(
    features: Mapping[str, torch.Tensor], out_dir: str | Path, max_channels: int = 16
) -> list[Path]:
    """Write one colour-mapped PNG grid per feature (see `feature_grid`); returns the paths.

    Files are named after the layer (``encoder.downs.0`` -> ``encoder.downs.0.png``). Written via
    ``cv2.imencode(...).tofile`` so non-ASCII directories work (the notes' cv2 workaround).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, feature in features.items():
        image = cv2.applyColorMap(feature_grid(feature, max_channels), cv2.COLORMAP_VIRIDIS)
        path = out_dir / f"{_file_stem(name)}.png"
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError(f"could not encode the feature map of {name!r} as PNG")
        encoded.tofile(str(path))
        paths.append(path)
    return paths


def log_feature_maps(
    writer, features: Mapping[str, torch.Tensor], step: int, max_channels: int = 16
) -> None:
    """Add each feature grid as a grayscale image ``features/<name>`` to a SummaryWriter."""
    for name, feature in features.items():
        grid = feature_grid(feature, max_channels)
        writer.add_image(f"features/{name}", grid, global_step=step, dataformats="HW")
