"""Using a trained model: from a picture to logits at the size of the user's image.

Evaluation modes are ``nn.Module`` wrappers around a model, with the model contract
(``forward(x (N,3,H,W)) -> {"out": (N,C,H,W) logits}``), so the one evaluation loop
(`segkit.evaluation.metrics.evaluate`), ``eval.py`` and ``scripts/predict.py`` share them:

- whole image: the model itself on the letterboxed input (as in training and validation);
- :class:`SlidingWindow`: windows of a fixed size over the input, batched, blended with a
  smooth (Gaussian) weight, placed so that they cover the border (no padding, no seams);
- :class:`TTA`: horizontal flip and/or several scales on top of either; logits are averaged.

:func:`make_predictor` builds them from plain values. The helpers below turn a picture into
the model's input and undo the letterbox on the logits (`restore_logits`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segkit.data.arguments import check_input_shape
from segkit.data.transforms import letterbox, letterbox_geometry, normalize
from segkit.errors import ConfigError

MODES = ("whole", "slide")
WINDOW_SIGMA = 0.125  # Gaussian sigma of the blend weight, as a fraction of the window side
WINDOW_FLOOR = 1e-3  # smallest weight per axis: every pixel keeps a usable weight


# --------------------------------------------------------------------------- input / output


def model_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H,W,3) uint8 RGB -> what the model reads: itself (``channels=3``) or (H,W,1) gray
    (ITU-R 601, as ``read_image(path, 1)``)."""
    if channels == 1 and image.shape[-1] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    return image


def letterbox_input(
    image: np.ndarray, input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(H,W,3) uint8 RGB -> (C,h,w) float32 normalised (C = len(mean)), letterboxed into
    ``input_shape`` exactly as validation does (undo with `restore_logits`)."""
    image = model_channels(image, len(mean))
    boxed, _ = letterbox(image, np.zeros(image.shape[:2], np.uint8), input_shape)
    return torch.from_numpy(normalize(boxed, mean, std))


def full_input(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H,W,3) uint8 RGB -> (C,H,W) float32 normalised at the image's own size (sliding)."""
    return torch.from_numpy(normalize(model_channels(image, len(mean)), mean, std))


def restore_logits(
    logits: torch.Tensor, in_hw: tuple[int, int], orig_hw: tuple[int, int]
) -> torch.Tensor:
    """(C,h,w) logits of a letterboxed input of size ``in_hw`` -> (C,H0,W0) float logits at
    the original size ``orig_hw``: the padding is cropped away, then bilinear resize."""
    nh, nw, top, left = letterbox_geometry(orig_hw, in_hw)
    crop = logits[:, top : top + nh, left : left + nw]
    return F.interpolate(crop[None].float(), size=orig_hw, mode="bilinear", align_corners=False)[0]


# --------------------------------------------------------------------------- sliding window
def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` px every ``stride`` px along ``size`` px; the last
    window ends exactly at the border, so every pixel is covered without padding.

    ``window_starts(10, 4, 3) == [0, 3, 6]``; ``window_starts(11, 4, 3) == [0, 3, 6, 7]``.
    """
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def blend_weight(h: int, w: int) -> torch.Tensor:
    """(h,w) float32 weight: the product of two 1-D Gaussians (sigma = WINDOW_SIGMA of the side,
    1 at the centre, floored at WINDOW_FLOOR per axis, so the blend along one axis does not
    depend on the row): window centres dominate, the edges blend in without seams."""

    def axis(n: int) -> torch.Tensor:
        t = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        return torch.exp(-0.5 * (t / (WINDOW_SIGMA * n)) ** 2).clamp_min(WINDOW_FLOOR)

    return axis(h)[:, None] * axis(w)[None, :]


class SlidingWindow(nn.Module):
    """Windows of ``window`` (H,W) every ``stride`` (H,W) over the input, run in batches of
    ``batch`` windows (across the images of the batch too), logits blended with `blend_weight`.

    Windows are clipped to inputs smaller than ``window``. ``forward(x (N,3,H,W)) ->
    {"out": (N,C,H,W) float32 logits}``; with ``window >= (H,W)`` this is ``model(x)``.
    """

    def __init__(
        self,
        model: nn.Module,
        window: Sequence[int],
        stride: Sequence[int],
        batch: int = 8,
    ) -> None:
        super().__init__()
        self.model = model
        self.window = check_input_shape(window)
        self.stride = check_input_shape(stride)
        self.batch = max(1, int(batch))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        wh, ww = min(self.window[0], h), min(self.window[1], w)
        spots = [
            (y, x0)
            for y in window_starts(h, wh, self.stride[0])
            for x0 in window_starts(w, ww, self.stride[1])
        ]
        weight = blend_weight(wh, ww).to(x.device)
        norm = torch.zeros(h, w, device=x.device)
        for y, x0 in spots:
            norm[y : y + wh, x0 : x0 + ww] += weight
        boxes = [(i, y, x0) for i in range(n) for y, x0 in spots]
        out = None
        for k in range(0, len(boxes), self.batch):
            chunk = boxes[k : k + self.batch]
            tiles = torch.stack([x[i, :, y : y + wh, x0 : x0 + ww] for i, y, x0 in chunk])
            logits = self.model(tiles)["out"].float()
            if out is None:
                out = torch.zeros(n, logits.shape[1], h, w, device=x.device)
            for (i, y, x0), lg in zip(chunk, logits):
                out[i, :, y : y + wh, x0 : x0 + ww] += lg * weight
        return {"out": out / norm}


# --------------------------------------------------------------------------- test-time augm.
class TTA(nn.Module):
    """Test-time augmentation over ``predictor`` (the model or a `SlidingWindow`): the input at
    each of ``scales`` (bilinear) and, with ``flip``, also mirrored left-right (in the same
    batch); the logits of every view are mapped back (un-mirrored, resized to (H,W)) and
    averaged. ``forward(x (N,3,H,W)) -> {"out": (N,C,H,W) float32 logits}``."""

    def __init__(
        self, predictor: nn.Module, flip: bool = True, scales: Sequence[float] = (1.0,)
    ) -> None:
        super().__init__()
        check_scales(scales)
        self.predictor = predictor
        self.flip = bool(flip)
        self.scales = tuple(float(s) for s in scales)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        total = None
        for scale in self.scales:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            xs = (
                x
                if size == (h, w)
                else F.interpolate(x, size, mode="bilinear", align_corners=False)
            )
            views = torch.cat([xs, xs.flip(-1)]) if self.flip else xs
            logits = self.predictor(views)["out"].float()
            if self.flip:
                logits = logits[:n] + logits[n:].flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
        views_per_scale = 2 if self.flip else 1
        return {"out": total / (len(self.scales) * views_per_scale)}


def make_predictor(
    model: nn.Module,
    mode: str = "whole",
    window: Sequence[int] | None = None,
    overlap: float = 0.5,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    batch: int = 8,
) -> nn.Module:
    """The evaluation mode as one module with the model contract.

    ``mode="whole"``: ``model`` itself; ``"slide"``: `SlidingWindow` with ``window`` (H,W)
    (e.g. the training ``input_shape``) and a stride of ``window * (1 - overlap)``; then `TTA`
    on top when ``flip`` or ``scales != (1.0,)``. The result is in eval mode.
    """
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: choose one of {list(MODES)}")
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap={overlap}: must be in [0, 1) (0.5 = windows overlap by half)")
    predictor = model
    if mode == "slide":
        if window is None:
            raise ConfigError("mode=slide needs a window [H, W] (default: the input_shape)")
        win = check_input_shape(window)
        stride = [max(1, math.floor(s * (1 - overlap))) for s in win]
        predictor = SlidingWindow(model, win, stride, batch)
    if flip or tuple(float(s) for s in scales) != (1.0,):
        predictor = TTA(predictor, flip, scales)
    return predictor.eval()


DEFAULT_SCALES = (0.75, 1.0, 1.25)  # +ms when neither the command line nor the recipe says


def parse_mode(spec: str, key: str = "modes") -> tuple[str, bool, bool]:
    """An evaluation mode by name -> ``(base, flip, ms)``: ``whole`` or ``slide``, optionally
    followed by ``+flip`` and/or ``+ms`` (multi-scale), e.g. ``"slide+flip"`` -> ``("slide",
    True, False)``. ``key`` names the config key in the error."""
    base, *extras = str(spec).split("+")
    if base not in MODES or set(extras) - {"flip", "ms"} or len(set(extras)) != len(extras):
        raise ConfigError(
            f"{key}: evaluation mode {spec!r}: expected whole or slide, optionally followed by "
            "+flip and/or +ms (multi-scale), e.g. slide+flip"
        )
    return base, "flip" in extras, "ms" in extras


def check_scales(scales: Any, key: str = "tta.scales") -> None:
    """``scales`` must be a non-empty list of positive numbers (else a ConfigError naming
    ``key``)."""
    listed = isinstance(scales, Sequence) and not isinstance(scales, str) and len(scales) > 0
    numbers = listed and all(isinstance(s, int | float) and not isinstance(s, bool) for s in scales)
    if not numbers or min(scales) <= 0:
        found = list(scales) if isinstance(scales, Sequence) else scales
        raise ConfigError(
            f"{key}: expected a list of positive numbers (image scales) such as "
            f"[0.75, 1.0, 1.25], found {found!r}"
        )


def predictor_for(
    spec: str,
    model: nn.Module,
    *,
    window: Sequence[int] | None = None,
    overlap: float = 0.5,
    scales: Sequence[float] = DEFAULT_SCALES,
    batch: int = 8,
) -> nn.Module:
    """An evaluation mode by name (`parse_mode`), for tables of modes (``eval.py
    modes=[...]``); ``+ms`` averages over ``scales``. The other arguments go to
    `make_predictor`."""
    base, flip, ms = parse_mode(spec)
    return make_predictor(
        model,
        base,
        window=window,
        overlap=overlap,
        flip=flip,
        scales=tuple(scales) if ms else (1.0,),
        batch=batch,
    )


def format_modes(results: Mapping[str, Mapping[str, float]]) -> str:
    """One row per evaluation mode: mIoU, mPA, pixel accuracy (percent)."""
    lines = [f"{'mode':<16} {'mIoU':>7} {'mPA':>7} {'pixel acc':>9}"]
    for spec, m in results.items():
        lines.append(
            f"{spec:<16} {100 * m['miou']:7.2f} {100 * m['mpa']:7.2f} {100 * m['pixel_acc']:9.2f}"
        )
    return "\n".join(lines)
