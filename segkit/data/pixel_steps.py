"""Augmentation steps that change pixel values where they are: colour (the notes' HSV jitter,
MMSegmentation's photometric distortion), Gaussian blur and noise, cutout, copy-paste.

Called as ``step(image, mask, ctx) -> (image, mask)`` like `segkit.data.geometric_steps`;
image (H,W,C) uint8 RGB or gray (C = 1: colour changes act on the brightness only), mask (H,W)
uint8. Colour changes go through 256-entry lookup tables (one pass over the pixels). Inputs are
never modified in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from segkit.data.arguments import paste_class_ids
from segkit.data.geometric_steps import Pair, check_probability, check_range
from segkit.data.transforms import GRAY, copy_paste, hsv_jitter

_LEVELS = np.arange(256, dtype=np.float64)


def _lut(values: np.ndarray) -> np.ndarray:
    """Float levels -> a uint8 lookup table, clipped (and truncated, as a uint8 cast)."""
    return np.clip(values, 0, 255).astype(np.uint8)


def _apply_lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return cv2.LUT(image, lut).reshape(image.shape)  # cv2 drops a single channel axis


class HSVJitter:
    """The notes' colour jitter: OpenCV hue (mod 180), saturation and value multiplied by gains
    U(1-x, 1+x). Draws 3 numbers (always, also for zero gains); with ``p`` < 1 one more first."""

    def __init__(self, hue: float = 0.1, sat: float = 0.7, val: float = 0.3, p: float = 1.0):
        self.hue, self.sat, self.val = float(hue), float(sat), float(val)
        if min(self.hue, self.sat, self.val) < 0:
            raise ValueError(f"hue, sat, val must be >= 0, got {[hue, sat, val]}")
        self.p = check_probability(p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if self.p < 1 and ctx.rng.uniform() >= self.p:
            return image, mask
        return hsv_jitter(image, ctx.rng, self.hue, self.sat, self.val), mask


class PhotometricDistortion:
    """MMSegmentation's ``PhotometricDistortion``, in its order: brightness (+U(-delta, delta)),
    contrast (x U(contrast_range)) first or last (a coin), saturation (x U(saturation_range)),
    hue (+U(-hue_delta, hue_delta) mod 180, OpenCV units); each with probability ``p``."""

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: float = 18,
        p: float = 0.5,
    ) -> None:
        self.brightness_delta, self.hue_delta = float(brightness_delta), float(hue_delta)
        if self.brightness_delta < 0 or not 0 <= self.hue_delta <= 180:
            raise ValueError("brightness_delta must be >= 0 and hue_delta in [0, 180]")
        self.contrast_range = check_range(contrast_range, "contrast_range")
        self.saturation_range = check_range(saturation_range, "saturation_range")
        self.p = check_probability(p)

    def _maybe(self, rng: np.random.Generator, low: float, high: float, neutral: float) -> float:
        """A factor or offset drawn with probability p, else the neutral value."""
        return rng.uniform(low, high) if rng.uniform() < self.p else neutral

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        rng = ctx.rng
        beta = self._maybe(rng, -self.brightness_delta, self.brightness_delta, 0.0)
        contrast_first = rng.uniform() < 0.5
        alpha = self._maybe(rng, *self.contrast_range, 1.0)
        sat = self._maybe(rng, *self.saturation_range, 1.0)
        hue = self._maybe(rng, -self.hue_delta, self.hue_delta, 0.0)
        before = _lut(_LEVELS + beta)  # each stage rounds to uint8, as the anchors' uint8 images
        if contrast_first:
            before = _lut(before * alpha)
        out = _apply_lut(image, before) if beta != 0 or alpha != 1 else image
        if image.shape[2] == 3 and (sat != 1 or int(hue) != 0):
            h, s, v = cv2.split(cv2.cvtColor(out, cv2.COLOR_RGB2HSV))
            h = cv2.LUT(h, ((_LEVELS + int(hue)) % 180).astype(np.uint8))
            out = cv2.cvtColor(
                cv2.merge((h, cv2.LUT(s, _lut(_LEVELS * sat)), v)), cv2.COLOR_HSV2RGB
            )
        if not contrast_first and alpha != 1:
            out = _apply_lut(out, _lut(_LEVELS * alpha))
        return out, mask


class GaussianBlur:
    """Blur with a Gaussian of sigma ~ U(sigma) px with probability ``p``."""

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0), p: float = 0.5) -> None:
        self.sigma = check_range(sigma, "sigma", low=1e-3)
        self.p = check_probability(p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if ctx.rng.uniform() >= self.p:
            return image, mask
        sigma = ctx.rng.uniform(*self.sigma)
        return cv2.GaussianBlur(image, (0, 0), sigma).reshape(image.shape), mask


class GaussianNoise:
    """Add N(0, s^2) noise per pixel and channel, s ~ U(std) in grey levels, with probability
    ``p``; clipped to 0..255."""

    def __init__(self, std: Sequence[float] = (2.0, 10.0), p: float = 0.5) -> None:
        self.std = check_range(std, "std")
        self.p = check_probability(p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if ctx.rng.uniform() >= self.p:
            return image, mask
        std = ctx.rng.uniform(*self.std)
        noise = ctx.rng.standard_normal(image.shape, dtype=np.float32) * np.float32(std)
        return np.clip(image + noise, 0, 255).astype(np.uint8), mask


class Cutout:
    """With probability ``p``, ``holes`` rectangles of each side U(size) times the picture's
    side, at uniform places, set to gray ``fill``; their labels are kept, or become
    ignore_index with ``ignore_labels`` (the model is then not asked what it cannot see)."""

    def __init__(
        self,
        holes: int = 1,
        size: Sequence[float] = (0.1, 0.3),
        p: float = 0.5,
        fill: int = GRAY,
        ignore_labels: bool = False,
    ) -> None:
        self.holes = int(holes)
        if self.holes < 1:
            raise ValueError(f"holes must be >= 1, got {holes}")
        self.size = check_range(size, "size")
        if self.size[1] > 1:
            raise ValueError(f"size is a fraction of the side: [lo, hi] in [0, 1], got {size}")
        self.p, self.fill, self.ignore_labels = check_probability(p), int(fill), bool(ignore_labels)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if ctx.rng.uniform() >= self.p:
            return image, mask
        image, mask = image.copy(), mask.copy() if self.ignore_labels else mask
        h, w = mask.shape
        for _ in range(self.holes):
            fh, fw = ctx.rng.uniform(*self.size, 2)
            y, x = int(ctx.rng.integers(h)), int(ctx.rng.integers(w))
            region = np.s_[y : y + max(1, int(fh * h)), x : x + max(1, int(fw * w))]
            image[region] = self.fill
            if self.ignore_labels:
                mask[region] = ctx.ignore_index
        return image, mask


class CopyPaste:
    """Rare-class copy-paste: with probability ``p`` the pixels of ``classes`` (ids or class
    names) of another training sample, resized to this one and mirrored half the time, replace
    this sample's at the same place (`segkit.data.transforms.copy_paste`). Put it first: it
    works on the raw pair. Draws nothing when p is 0."""

    def __init__(self, p: float = 0.0, classes: Sequence[int | str] = ()) -> None:
        self.p = check_probability(p)
        self.classes = [classes] if isinstance(classes, (str, int)) else list(classes or ())
        if self.p > 0 and not self.classes:
            raise ValueError(
                f"p={self.p} needs the classes to paste, e.g. classes: [2, 6] or "
                "[Pole, SignSymbol] (or p: 0)"
            )
        self.ids: tuple[int, ...] = ()

    def bind(self, class_names: Sequence[str]) -> None:
        """Resolve class names to ids (DataError naming the known names)."""
        self.ids = paste_class_ids(self.classes, class_names, "classes")

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if self.p == 0 or ctx.donor is None or ctx.rng.uniform() >= self.p:
            return image, mask
        donor = ctx.donor(ctx.rng)
        if donor is None:  # an unreadable donor in skip mode: the sample stays as it is
            return image, mask
        return copy_paste(image, mask, donor[0], donor[1], self.ids, ctx.rng)
