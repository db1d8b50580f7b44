"""What is odd about an image or mask file, in words: the findings `segkit.data.check` reports.

Pure functions of the pixels (or the file's tail): lossy (JPEG / resampled) mask detection,
colour listings of RGB masks with a `dataset.color_map` suggestion, a `dataset.label_map`
suggestion for raw mask values, and the texts of the image-mode / EXIF warnings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

MAX_LISTED_VALUES = 12

ORIENTATIONS = {
    2: "mirrored",
    3: "rotated 180",
    4: "flipped vertically",
    5: "transposed",
    6: "rotated 90 clockwise",
    7: "transversed",
    8: "rotated 90 counter-clockwise",
}

MODE_NOTES = {
    "L": "grayscale (mode L), replicated to 3 channels",
    "LA": "grayscale + alpha (mode LA), alpha dropped",
    "RGBA": "RGBA, alpha channel dropped",
    "P": "palette image (mode P), expanded to RGB",
    "I;16": "16-bit (mode I;16), scaled to 8 bits",
    "I;16B": "16-bit (mode I;16B), scaled to 8 bits",
    "I": "32-bit integer (mode I), scaled to 8 bits",
    "F": "32-bit float (mode F), scaled to 8 bits",
    "CMYK": "CMYK, converted to RGB",
    "1": "1-bit (mode 1), expanded to RGB",
}


def check_jpeg_end(path: str) -> None:
    """OpenCV decodes a truncated JPEG without error (the missing part comes out gray), so look
    for the end-of-image marker in the file's tail."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        if b"\xff\xd9" not in f.read():
            raise OSError("truncated JPEG: no end-of-image marker (the file was cut short)")


def clean_error(error: Exception) -> str:
    """Error text without PIL's '<_io.BytesIO object at 0x...>' (the file is named anyway)."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the bytes", str(error))


def size_message(image_path: str, image_hw: tuple[int, int], mask_hw: tuple[int, int]) -> str:
    """Both sizes as WxH, and a hint when one is the other transposed (an EXIF rotation)."""
    (mh, mw), (ih, iw) = mask_hw, image_hw
    msg = f"mask is {mw}x{mh} (WxH) but image {image_path} is {iw}x{ih}"
    if tuple(mask_hw) == tuple(image_hw[::-1]):
        msg += " (transposed: an EXIF rotation of the image that the mask does not have?)"
    return msg


def list_values(values: list[int], hist: np.ndarray) -> str:
    """'v (n px), ...' for the first MAX_LISTED_VALUES values; `hist` (256,) pixels per value."""
    shown = ", ".join(f"{v} ({int(hist[v])} px)" for v in values[:MAX_LISTED_VALUES])
    return shown + (f", ... {len(values)} values" if len(values) > MAX_LISTED_VALUES else "")


def suggest_label_map(values: Iterable[int], num_classes: int, ignore_index: int) -> str:
    """A `dataset.label_map` override that would make raw mask `values` valid, as text.

    {0, 255} -> {255: 1}; one extra value == num_classes (a 'void' class) -> map it to ignore;
    at most num_classes distinct values -> map them in order to 0..k-1.
    """
    values = sorted(set(values))
    if 255 in values and set(values) <= {0, 255}:
        return "'dataset.label_map={255: 1}' (255 = foreground class 1; 0 stays background)"
    values = [v for v in values if v != ignore_index]
    bad = [v for v in values if v >= num_classes]
    if bad == [num_classes]:
        return (
            f"'dataset.label_map={{{num_classes}: {ignore_index}}}' if {num_classes} means "
            f"void/unlabelled, else dataset.num_classes={num_classes + 1}"
        )
    if len(values) <= num_classes:
        pairs = ", ".join(f"{v}: {i}" for i, v in enumerate(values) if v != i)
        return (
            f"'dataset.label_map={{{pairs}}}' (a guess: the values in sorted order become ids "
            f"0..{len(values) - 1}; check it against your class list)"
        )
    return (
        f"{len(values)} distinct values for {num_classes} classes: set dataset.num_classes, or "
        "map the values with dataset.label_map"
    )


def is_lossy(mask: np.ndarray) -> bool:
    """True when many pixels lie strictly between the values 2 px before and after them.

    A class-id mask changes value in one step; JPEG ringing and bilinear resampling leave
    ramps of in-between values along every edge (0, 1, 1, 2 or 0, 3, 128, 252, 255). Counted
    against the number of value changes between neighbours, along rows and along columns.
    """
    between = changes = 0
    for m in (mask.astype(np.int16), mask.T.astype(np.int16)):
        a, v, b = m[:, :-4], m[:, 2:-2], m[:, 4:]
        between += int((((a < v) & (v < b)) | ((a > v) & (v > b))).sum())
        changes += int((m[:, 1:] != m[:, :-1]).sum())
    return between >= 16 and between > 0.2 * changes


def is_lossy_rgb(mask: np.ndarray) -> bool:
    """`is_lossy` for an (H,W,3) colour mask: any channel with ramps."""
    return any(is_lossy(mask[..., c]) for c in range(3))


def color_counts(mask: np.ndarray) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Distinct colours of an (H,W,3) mask, most frequent first, with their pixel counts."""
    codes = (mask[..., 0].astype(np.int64) << 16) | (mask[..., 1].astype(np.int64) << 8)
    codes |= mask[..., 2]
    colors, counts = np.unique(codes.ravel(), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rgb = [(c >> 16, (c >> 8) & 255, c & 255) for c in colors[order].tolist()]
    return rgb, counts[order].tolist()


def top_colors(mask: np.ndarray, k: int = 8) -> str:
    """'N colour(s), top: [r, g, b] p%, ...' for the k most frequent colours of (H,W,3)."""
    colors, counts = color_counts(mask)
    total = sum(counts)
    shown = ", ".join(
        f"[{r}, {g}, {b}] {100 * n / total:.1f}%" for (r, g, b), n in zip(colors[:k], counts[:k])
    )
    return f"{len(colors)} colour(s), top: {shown}"


def rgb_mask_hint(
    mask: np.ndarray, palette: Sequence[Sequence[int]] | None, num_classes: int
) -> str:
    """(H,W,3) mask -> its top colours plus a dataset.color_map suggestion ({id: [r, g, b]}),
    taken from `palette` when every colour is in it."""
    if all(np.array_equal(mask[..., 0], mask[..., c]) for c in (1, 2)):
        return "R = G = B everywhere: ids saved as an RGB image; re-save it as 8-bit gray (mode L)"
    colors, _ = color_counts(mask)
    ids = {tuple(c): i for i, c in enumerate(palette or [])}
    if all(c in ids for c in colors):
        source = "from dataset.palette"
        pairs = sorted((ids[c], c) for c in colors)
    else:
        source = "ids in order of pixel count; reorder to your class ids"
        pairs = list(enumerate(colors[:num_classes]))
    suggestion = ", ".join(f"{i}: [{r}, {g}, {b}]" for i, (r, g, b) in pairs)
    return f"{top_colors(mask)}; e.g. 'dataset.color_map={{{suggestion}}}' ({source})"
