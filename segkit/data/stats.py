"""Class pixel statistics of a dataset's masks, and per-class loss weights computed from them.

Masks are counted after the dataset's `label_map` / `color_map` (`ds.encode`), ignore_index
excluded. `auto_class_weights` is what `loss.class_weights=auto` uses; `format_class_table` is
the table `scripts/check_dataset.py` prints.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from segkit.data.io import read_mask
from segkit.errors import DataError

log = logging.getLogger(__name__)


# loss.class_weights values computed from the train masks (auto = median frequency); also
# median**P: the median-frequency weights raised to P > 0 (sqrt_median = median**0.5)
CLASS_WEIGHT_METHODS = ("auto", "median", "sqrt_median", "inverse", "median**P")
_MEDIAN_POWER = re.compile(r"median\*\*(\d+(?:\.\d*)?|\.\d+)")


def median_weight_power(method: str) -> float | None:
    """The power P of a median-frequency weight method ('median' 1, 'auto' 1, 'sqrt_median'
    0.5, 'median**P' P > 0); None for any other string ('inverse' or not a method)."""
    if method in ("auto", "median"):
        return 1.0
    if method == "sqrt_median":
        return 0.5
    match = _MEDIAN_POWER.fullmatch(method)
    power = float(match.group(1)) if match else 0.0
    return power if power > 0 else None


def is_class_weight_method(value: object) -> bool:
    """Whether ``value`` names weights computed from the train masks (see above)."""
    return isinstance(value, str) and (value == "inverse" or median_weight_power(value) is not None)


# keys users reach for that segkit spells differently
@dataclass
class ClassCounts:
    """Pixel statistics of class ids over a set of masks (ignore_index excluded).

    pixels[c]: pixels labelled c; image_pixels[c]: labelled pixels of the masks in which c occurs
    (the denominator of SegNet's median frequency balancing); images[c]: masks in which c occurs.
    Each list has num_classes ints.
    """

    pixels: list[int]
    image_pixels: list[int]
    images: list[int]

    @classmethod
    def zeros(cls, num_classes: int) -> ClassCounts:
        return cls([0] * num_classes, [0] * num_classes, [0] * num_classes)

    def add(self, hist: np.ndarray) -> None:
        """Accumulate one mask's histogram `hist`: int64 (num_classes,) pixels per class id."""
        labelled = int(hist.sum())
        for c in np.flatnonzero(hist):
            self.pixels[c] += int(hist[c])
            self.image_pixels[c] += labelled
            self.images[c] += 1


def default_workers() -> int:
    """Reader threads for a pass over the files (decoding releases the GIL)."""
    return min(8, (os.cpu_count() or 1) + 2)


def class_pixel_counts(ds: Any, workers: int | None = None) -> ClassCounts:
    """Full pass over the masks of `ds` (label_map / color_map applied, ignore excluded).

    `ds` needs `files` [(image, mask)], `encode(raw, path) -> (H,W) uint8 ids`, `num_classes`
    and `ignore_index` (any SegmentationDataset).
    """

    def hist(i: int) -> np.ndarray:
        path = str(ds.files[i][1])
        ids = ds.encode(read_mask(path), path)
        return np.bincount(ids[ids != ds.ignore_index].ravel(), minlength=ds.num_classes)

    counts = ClassCounts.zeros(ds.num_classes)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for h in pool.map(hist, range(len(ds.files))):
            counts.add(h[: ds.num_classes])
    return counts


def class_weights(counts: ClassCounts | Sequence[int], method: str = "median") -> list[float]:
    """Per-class loss weights (num_classes floats) from pixel counts.

    'median' (median frequency balancing, SegNet, Eigen & Fergus 2015): freq_c = pixels of c /
    labelled pixels of the images where c occurs; w_c = median(freq) / freq_c.
    'inverse': w_c = total / (K * pixels_c) with K the number of classes present, so the
    pixel-weighted mean weight is 1 (scikit-learn's 'balanced').
    'sqrt_median': the square root of the median-frequency weights, a softer balance (rare
    classes gain recall with far fewer false positives, common ones lose less); 'median**P':
    the median-frequency weights to the power P > 0 ('median' is P = 1, 'sqrt_median' 0.5).
    A class with no pixels gets weight 0.0 (it cannot be learned from this data; never inf/NaN)
    and is left out of the median and of K. A plain sequence of pixel counts is accepted: each
    class then counts as present in every image (freq_c = pixels_c / total pixels).
    """
    if not isinstance(counts, ClassCounts):
        total = int(sum(counts))
        counts = ClassCounts(list(counts), [total] * len(counts), [0] * len(counts))
    pixels = np.asarray(counts.pixels, dtype=np.float64)
    present = pixels > 0
    if not present.any():
        raise DataError("class_weights: every class has 0 pixels (are all masks ignore?)")
    weights = np.zeros_like(pixels)
    power = median_weight_power(method)
    if power is not None:
        freq = pixels[present] / np.asarray(counts.image_pixels, dtype=np.float64)[present]
        median = np.median(freq) / freq
        weights[present] = np.sqrt(median) if power == 0.5 else median**power
    elif method == "inverse":
        weights[present] = pixels.sum() / (present.sum() * pixels[present])
    else:
        raise ValueError(
            "class weight method must be 'median', 'sqrt_median', 'median**P' (P > 0) or "
            f"'inverse', got {method!r}"
        )
    return [float(w) for w in weights]


def auto_class_weights(train_ds: Any, method: str = "median") -> list[float]:
    """Class weights for `loss.class_weights=auto`, from a full pass over the train masks."""
    weights = class_weights(class_pixel_counts(train_ds), method)
    log.info("class weights (%s): %s", method, ", ".join(f"{w:.4f}" for w in weights))
    return weights


def format_class_table(counts: ClassCounts, class_names: Sequence[str] | None = None) -> str:
    """Per-class pixels, share of labelled pixels, images, median and inverse weights."""
    total = sum(counts.pixels) or 1
    names = list(class_names or [])
    zeros = [0.0] * len(counts.pixels)
    median = class_weights(counts, "median") if any(counts.pixels) else zeros
    inverse = class_weights(counts, "inverse") if any(counts.pixels) else zeros
    rows = [
        f"{'id':>3}  {'class':<16} {'pixels':>12} {'share':>7} {'images':>7} "
        f"{'w_median':>9} {'w_inverse':>9}"
    ]
    for c, n in enumerate(counts.pixels):
        name = names[c] if c < len(names) else str(c)
        rows.append(
            f"{c:>3}  {name[:16]:<16} {n:>12} {n / total:>7.4f} {counts.images[c]:>7} "
            f"{median[c]:>9.4f} {inverse[c]:>9.4f}"
        )
    return "\n".join(rows)
