"""Augmentation steps that move pixels: resizes, crops, flips, rotations, the letterbox.

Each step is a plain class named by ``_target_`` in ``dataset.augment``; it is called as
``step(image, mask, ctx) -> (image, mask)`` with image (H,W,C) uint8, mask (H,W) uint8 ids and
``ctx`` an `segkit.data.augment.Context` (the sample's random stream, the output size, the
ignore index). Images are interpolated, masks only ever nearest; pixels that come from outside
the picture are gray 128 in the image and ``ignore_index`` in the mask. ``p`` is the probability
that a step acts; its draw is made on every call, so a step's p does not shift the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from segkit.data.transforms import (
    GRAY,
    class_balanced_offset,
    hflip_pair,
    letterbox,
    paste,
    random_size,
    resize_pair,
)

Pair = tuple[np.ndarray, np.ndarray]
CAT_MAX_TRIES = 10  # MMSegmentation's RandomCrop: crops tried before one is taken as it is


def check_probability(p: float, name: str = "p") -> float:
    """``p`` as a float in [0, 1], else ValueError naming the argument."""
    p = float(p)
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return p


def check_range(values: Sequence[float], name: str, low: float = 0.0) -> tuple[float, float]:
    """``[lo, hi]`` with low <= lo <= hi, else ValueError naming the argument."""
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be [lo, hi], got {values!r}") from None
    if not low <= lo <= hi:
        raise ValueError(f"{name} must be [lo, hi] with {low} <= lo <= hi, got {[lo, hi]}")
    return lo, hi


class RandomScaleAspect:
    """The notes' resize: the aspect ratio jittered by U(1-j,1+j)/U(1-j,1+j), the longer side
    ``scale`` U(lo,hi) times the matching output side. Draws 3 numbers."""

    def __init__(self, scale: Sequence[float] = (0.25, 2.0), jitter: float = 0.3) -> None:
        self.scale = check_range(scale, "scale", low=1e-6)
        self.jitter = float(jitter)
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        size = random_size(ctx.rng, image.shape[:2], ctx.out_hw, self.jitter, self.scale)
        return resize_pair(image, mask, size)


class RandomResize:
    """MMSegmentation's keep-ratio ``RandomResize``: the picture scaled to fit ``scale`` (H, W;
    null: the output size) times r ~ U(ratio_range), the aspect ratio kept. Draws 1 number."""

    def __init__(
        self, ratio_range: Sequence[float] = (0.5, 2.0), scale: Sequence[int] | None = None
    ) -> None:
        self.ratio_range = check_range(ratio_range, "ratio_range", low=1e-6)
        self.scale = None if scale is None else tuple(int(v) for v in scale)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        r = ctx.rng.uniform(*self.ratio_range)
        th, tw = self.scale or ctx.out_hw
        h, w = image.shape[:2]
        f = r * min(max(th, tw) / max(h, w), min(th, tw) / min(h, w))
        return resize_pair(image, mask, (max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))))


class RandomCrop:
    """Crop (or pad, gray / ignore) to the output size at a random offset, as the notes do.

    ``class_balanced``: probability that the crop holds a pixel of a class drawn uniformly from
    the classes present (rare classes as often as common ones). ``cat_max_ratio`` < 1: up to 10
    offsets are tried until no class covers more than that share of the crop's labelled pixels
    (MMSegmentation's rule). With the defaults it draws 2 numbers (x, then y)."""

    def __init__(self, class_balanced: float = 0.0, cat_max_ratio: float = 1.0) -> None:
        self.class_balanced = check_probability(class_balanced, "class_balanced")
        self.cat_max_ratio = float(cat_max_ratio)
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if self.class_balanced > 0 and ctx.rng.uniform() < self.class_balanced:
            offset = class_balanced_offset(mask, ctx.out_hw, ctx.rng, ctx.ignore_index)
            if offset is not None:
                return paste(image, mask, ctx.out_hw, offset, ctx.ignore_index)
        offset = self._offset(mask, ctx)
        for _ in range(CAT_MAX_TRIES - 1):
            if self.cat_max_ratio >= 1 or _largest_share(mask, offset, ctx) < self.cat_max_ratio:
                break
            offset = self._offset(mask, ctx)
        return paste(image, mask, ctx.out_hw, offset, ctx.ignore_index)

    @staticmethod
    def _offset(mask: np.ndarray, ctx) -> tuple[int, int]:
        """The notes' rand(0, w - nw): negative when the picture is larger (then cropped)."""
        (h, w), (nh, nw) = ctx.out_hw, mask.shape
        dx = int(ctx.rng.random() * (w - nw))
        return int(ctx.rng.random() * (h - nh)), dx


def _largest_share(mask: np.ndarray, offset: tuple[int, int], ctx) -> float:
    """Share of the largest class among the labelled pixels the crop at ``offset`` keeps; 1
    when it holds fewer than two classes (MMSegmentation tries again then too)."""
    (h, w), (dy, dx) = ctx.out_hw, offset
    crop = mask[max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w]
    counts = np.bincount(crop.ravel(), minlength=256)
    counts[ctx.ignore_index] = 0
    if np.count_nonzero(counts) < 2:
        return 1.0
    return float(counts.max() / counts.sum())


class HorizontalFlip:
    """Mirror left-right with probability ``p`` (draws 1 number)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_probability(p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if ctx.rng.uniform() < self.p:
            return hflip_pair(image, mask)
        return image, mask


class VerticalFlip:
    """Mirror top-bottom with probability ``p`` (draws 1 number)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_probability(p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if ctx.rng.uniform() < self.p:
            return cv2.flip(image, 0).reshape(image.shape), cv2.flip(mask, 0)
        return image, mask


class Rotate:
    """Rotate about the centre by an angle ~ U(degrees) (a number d means [-d, d]) with
    probability ``p``; the size is kept, the corners become gray / ignore_index. Image
    bilinear, mask nearest. Draws 1 number, 2 when it rotates."""

    def __init__(self, degrees: float | Sequence[float] = 10.0, p: float = 0.5) -> None:
        pair = (-float(degrees), float(degrees)) if np.isscalar(degrees) else degrees
        self.degrees = check_range(pair, "degrees", low=-360.0)
        self.p = check_probability(p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if ctx.rng.uniform() >= self.p:
            return image, mask
        angle = ctx.rng.uniform(*self.degrees)
        h, w = mask.shape
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        fill = (GRAY,) * image.shape[2]
        rotated = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=fill)
        labels = cv2.warpAffine(
            mask, matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=ctx.ignore_index
        )
        return rotated.reshape(image.shape), labels


class Rotate90:
    """Turn by 90, 180 or 270 degrees (drawn uniformly) with probability ``p``; lossless. A
    quarter turn swaps height and width: place it before the crop unless the output is square.
    Draws 1 number, 2 when it turns."""

    TURNS = (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_probability(p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        if ctx.rng.uniform() >= self.p:
            return image, mask
        code = self.TURNS[int(ctx.rng.integers(3))]
        turned = cv2.rotate(image, code)
        return turned.reshape(*turned.shape[:2], image.shape[2]), cv2.rotate(mask, code)


class Letterbox:
    """Validation's resize: keep the aspect ratio, fit inside the output size, centre, pad
    gray / ignore_index (`segkit.data.transforms.letterbox`). Draws nothing; eval.py and the
    predictors undo exactly this step, so the val list keeps it last."""

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        return letterbox(image, mask, ctx.out_hw, ctx.ignore_index)
