"""Image/mask primitives: resize, flip, paste, letterbox, class-balanced offsets, HSV jitter,
copy-paste; uint8 samples to tensors and their normalisation on the device. The augmentation
steps of ``dataset.augment`` (`segkit.data.augment`) are built from them.

Conventions: image (H,W,C) uint8 (C = 3 RGB, or 1 gray), mask (H,W) uint8 class ids, sizes
given as (H,W).
Images are resized bicubic, masks ONLY nearest (so a mask never gains new values); padding is
gray 128 for the image and `ignore_index` for the mask (the notes padded labels with 0, which
taught "background" on the gray bars). All randomness comes from the `rng` argument
(np.random.Generator), never from the global np.random state.

Samples stay uint8 up to the device (`to_tensors`); `Normalize` turns a batch into the
float32 model input there.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

GRAY = 128


def resize_pair(
    image: np.ndarray, mask: np.ndarray, size_hw: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize image bicubic and mask nearest to size_hw=(h,w) (pixel centres aligned)."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if image.shape[:2] == (h, w):
        return image, mask
    resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)
    mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return resized.reshape(h, w, image.shape[2]), mask  # cv2 drops a single channel axis


def hflip_pair(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror both left-right (cv2.flip: far faster than copying a reversed numpy view)."""
    return cv2.flip(image, 1).reshape(image.shape), cv2.flip(mask, 1)


def copy_paste(
    image: np.ndarray,
    mask: np.ndarray,
    donor: np.ndarray,
    donor_mask: np.ndarray,
    classes: Sequence[int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Rare-class copy-paste: the pixels of ``classes`` in the donor pair (resized to the
    image's size, mirrored with probability 0.5) replace those of image/mask at the same place.

    image (H,W,C) uint8, mask (H,W) uint8, donor (h,w,C) uint8, donor_mask (h,w) uint8 ->
    new (H,W,C) and (H,W) arrays; the inputs are not modified.
    """
    donor, donor_mask = resize_pair(donor, donor_mask, image.shape[:2])
    if rng.uniform() < 0.5:
        donor, donor_mask = hflip_pair(donor, donor_mask)
    chosen = np.isin(donor_mask, np.asarray(classes, dtype=np.int64))
    image, mask = image.copy(), mask.copy()
    image[chosen] = donor[chosen]
    mask[chosen] = donor_mask[chosen]
    return image, mask


def paste(
    image: np.ndarray,
    mask: np.ndarray,
    out_hw: Sequence[int],
    offset_yx: Sequence[int],
    ignore_index: int = 255,
    fill: int = GRAY,
) -> tuple[np.ndarray, np.ndarray]:
    """Place image/mask with its top-left corner at offset_yx=(dy,dx) on an out_hw canvas of
    gray `fill` (image) / `ignore_index` (mask). Offsets may be negative or the picture larger
    than the canvas: whatever falls outside is cropped. -> ((h,w,C) uint8, (h,w) uint8)."""
    h, w = int(out_hw[0]), int(out_hw[1])
    dy, dx = int(offset_yx[0]), int(offset_yx[1])
    canvas = np.full((h, w, image.shape[2]), fill, np.uint8)
    label = np.full((h, w), ignore_index, np.uint8)
    y0, y1 = max(dy, 0), min(dy + image.shape[0], h)
    x0, x1 = max(dx, 0), min(dx + image.shape[1], w)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = image[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
        label[y0:y1, x0:x1] = mask[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    return canvas, label


def letterbox(
    image: np.ndarray,
    mask: np.ndarray,
    out_hw: Sequence[int],
    ignore_index: int = 255,
    fill: int = GRAY,
) -> tuple[np.ndarray, np.ndarray]:
    """Validation resize: keep the aspect ratio, fit inside out_hw, centre, pad gray / ignore.

    The scaled size is (int(ih*s), int(iw*s)) with s = min(h/ih, w/iw); the offset is
    ((h-nh)//2, (w-nw)//2), as in the notes.
    """
    h, w = int(out_hw[0]), int(out_hw[1])
    nh, nw, top, left = letterbox_geometry(image.shape[:2], (h, w))
    image, mask = resize_pair(image, mask, (nh, nw))
    return paste(image, mask, (h, w), (top, left), ignore_index, fill)


def letterbox_geometry(in_hw: Sequence[int], out_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """Where ``letterbox`` puts an (ih, iw) picture inside out_hw: (nh, nw, top, left).

    Also used to undo the letterbox on predictions (crop, then resize back to in_hw).
    """
    ih, iw = int(in_hw[0]), int(in_hw[1])
    h, w = int(out_hw[0]), int(out_hw[1])
    s = min(w / iw, h / ih)
    # the epsilon keeps int(iw * w / iw) from landing on w - 1 through rounding
    nh, nw = max(1, min(h, int(ih * s + 1e-6))), max(1, min(w, int(iw * s + 1e-6)))
    return nh, nw, (h - nh) // 2, (w - nw) // 2


def random_size(
    rng: np.random.Generator,
    image_hw: Sequence[int],
    out_hw: Sequence[int],
    jitter: float = 0.3,
    scale: Sequence[float] = (0.25, 2.0),
) -> tuple[int, int]:
    """(nh, nw) of the picture to paste: aspect ratio jittered, the longer side of the result
    `scale` times the matching output side (notes' rule)."""
    ih, iw = image_hw
    h, w = out_hw
    ratio = iw / ih * rng.uniform(1 - jitter, 1 + jitter) / rng.uniform(1 - jitter, 1 + jitter)
    s = rng.uniform(scale[0], scale[1])
    if ratio < 1:
        nh = int(s * h)
        nw = int(nh * ratio)
    else:
        nw = int(s * w)
        nh = int(nw / ratio)
    return max(nh, 1), max(nw, 1)


def class_balanced_offset(
    mask: np.ndarray, out_hw: Sequence[int], rng: np.random.Generator, ignore_index: int = 255
) -> tuple[int, int] | None:
    """Class-balanced crop sampling: a paste offset (dy, dx) for an (H,W) ``mask`` on an out_hw
    canvas such that the canvas holds a pixel of class c, c drawn uniformly from the classes
    present (rare classes are picked as often as common ones), the pixel drawn uniformly from
    that class, and the offset uniformly from the valid ones that keep it. None: no class."""
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[ignore_index % 256] = 0
    classes = np.flatnonzero(counts)
    if classes.size == 0:
        return None
    c = classes[rng.integers(classes.size)]
    ys, xs = np.nonzero(mask == c)
    k = rng.integers(ys.size)
    return (
        _offset_keeping(int(ys[k]), mask.shape[0], int(out_hw[0]), rng),
        _offset_keeping(int(xs[k]), mask.shape[1], int(out_hw[1]), rng),
    )


def _offset_keeping(pos: int, size: int, out: int, rng: np.random.Generator) -> int:
    """An offset d for a picture of ``size`` px on an ``out`` px canvas (d in [out-size, 0]
    when the picture is larger, [0, out-size] otherwise) with 0 <= pos + d < out, so pixel
    ``pos`` lands on the canvas; uniform over those offsets."""
    lo, hi = sorted((0, out - size))
    lo, hi = max(lo, -pos), min(hi, out - 1 - pos)
    return int(rng.integers(lo, hi + 1))


def hsv_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    hue: float = 0.1,
    sat: float = 0.7,
    val: float = 0.3,
) -> np.ndarray:
    """Multiply OpenCV H (mod 180), S and V by gains U(1-x, 1+x) through 256-entry lookup
    tables. All three 0 -> the image is returned untouched (no lossy HSV round trip).
    A gray (H,W,1) image gets the V gain only: exactly what the RGB path does to gray pixels
    (hue and saturation of a gray pixel are 0), with the same random draws."""
    gains = rng.uniform(-1, 1, 3) * np.array([hue, sat, val]) + 1
    if hue == 0 and sat == 0 and val == 0:
        return image
    x = np.arange(256, dtype=np.float64)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        return cv2.LUT(image, lut_v).reshape(image.shape)
    lut_h = ((x * gains[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    h, s, v = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    hsv = cv2.merge((cv2.LUT(h, lut_h), cv2.LUT(s, lut_s), cv2.LUT(v, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H,W,C) uint8 -> (C,H,W) float32 computed as (image/255 - mean) / std per channel.
    (Single pictures, e.g. for scripts; training batches use `Normalize` on the device.)"""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    out = image.astype(np.float32) * (1.0 / (255.0 * std)) - mean / std
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H,W,C) uint8 image, (H,W) uint8 mask -> ((C,H,W) uint8, (H,W) uint8) tensors: a sample
    as it crosses the worker boundary (1 byte per value; torch's default collate stacks them)."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(chw), torch.from_numpy(np.ascontiguousarray(mask))


class Normalize:
    """Model input on the device: (N,C,H,W) uint8 -> (N,C,H,W) float32 (x/255 - mean)/std.

    ``mean``/``std``: C values each (RGB or gray, of pixels scaled to [0, 1]). The constants
    follow the input's device; ``channels_last`` returns the batch in that memory format
    (faster convolutions on tensor-core GPUs). Float input is returned as it is (already
    normalised, e.g. by a caller that prepared its own tensors).
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], *, channels_last: bool = False
    ) -> None:
        std32 = np.asarray(std, np.float32)
        # the same float32 constants as `normalize`, so both paths agree to rounding
        self.scale = torch.from_numpy(1.0 / (255.0 * std32)).view(1, -1, 1, 1)
        self.shift = torch.from_numpy(np.asarray(mean, np.float32) / std32).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():
            return images
        if images.shape[1] != self.scale.shape[1]:
            raise ValueError(
                f"images have {images.shape[1]} channels but mean/std {self.scale.shape[1]}; "
                "set dataset.in_channels and dataset.mean/std to the same number of channels"
            )
        if self.scale.device != images.device:
            self.scale, self.shift = self.scale.to(images.device), self.shift.to(images.device)
        if self.channels_last:  # reorder the 1-byte values; the float ops keep the layout
            images = images.contiguous(memory_format=torch.channels_last)
        return images.float().mul_(self.scale).sub_(self.shift)
