"""What a dataset check can find, and how it is told: `Problem` (one finding, with its file),
`CheckReport` (all of them, grouped by kind with a fix per group), the two ways training shows a
report (`format_warnings`, `write_bad_samples`), and the words for what is odd about an image or
mask file: pure functions of the pixels (lossy masks, colour listings with a `dataset.color_map`
suggestion, a `dataset.label_map` suggestion, image-mode and EXIF notes). The checks themselves
are in `segkit.data.doctor`.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from segkit.data.io import ALPHA_RULE
from segkit.data.layout import LAYOUT_KINDS
from segkit.data.stats import ClassCounts

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
    "LA": f"grayscale + alpha (mode LA), {ALPHA_RULE}",
    "RGBA": f"RGBA, {ALPHA_RULE}",
    "P": "palette image (mode P), expanded to RGB",
    "I;16": "16-bit (mode I;16), scaled to 8 bits",
    "I;16B": "16-bit (mode I;16B), scaled to 8 bits",
    "I": "32-bit integer (mode I), scaled to 8 bits",
    "F": "32-bit float (mode F), scaled to 8 bits",
    "CMYK": "CMYK, converted to RGB",
    "1": "1-bit (mode 1), expanded to RGB",
}


def opacity_note(alpha: np.ndarray) -> str:
    """'; N% of the pixels are not opaque' for an (H,W) uint8 alpha channel: how much of the
    picture `ALPHA_RULE` concerns."""
    share = 100 * float(np.count_nonzero(alpha < 255)) / max(alpha.size, 1)
    return f"; {share:.3g}% of the pixels are not opaque"


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
    """True when many pixels lie strictly between the values 2 px before and after them, in
    a way that class ids do not explain.

    A class-id mask changes value in one step; JPEG ringing and bilinear resampling leave
    ramps of in-between values along the edges (0, 1, 1, 2 or 0, 3, 128, 252, 255). But a
    label layout can put a class between two others on purpose: background 0, a boundary ring
    1, interior 2 (nuclei, instance boundaries). Such a band is consistent: the two outer
    values never meet without it. So the in-between pixels of a value pair count as evidence
    when the pair also meets directly in places (over 10% as often as it is bridged: a ramp
    that comes and goes), and otherwise only where the band is 1 px thin (what a resize leaves;
    a drawn band is rarely that thin). Counted against the number of value changes between
    neighbours, along rows and along columns.
    """
    views = [m.astype(np.int16) for m in (mask, mask.T)]  # along rows, then along columns
    betweens = [_in_between(m) for m in views]
    if sum(int(x.sum()) for x in betweens) < 16:  # the common case: decided without counting
        return False
    bridged, thin, direct = (np.zeros(1 << 16, np.int64) for _ in range(3))
    changes = 0
    for m, between in zip(views, betweens):
        a, before, v, after, b = m[:, :-4], m[:, 1:-3], m[:, 2:-2], m[:, 3:-1], m[:, 4:]
        lo, hi, mid = a[between], b[between], v[between]  # the two values a band separates
        alone = (before[between] != mid) & (mid != after[between])  # a 1-px band
        bridged += _pair_counts(lo, hi)
        thin += _pair_counts(lo[alone], hi[alone])
        left, right = m[:, :-1], m[:, 1:]
        edge = left != right
        changes += int(edge.sum())
        direct += _pair_counts(left[edge], right[edge])
    ramp = 10 * direct > bridged  # the pair meets without the in-between value too
    evidence = int(np.where(ramp, bridged, thin).sum())
    return evidence >= 16 and evidence > 0.2 * changes


def _in_between(m: np.ndarray) -> np.ndarray:
    """(H,W-4) bool: the value lies strictly between the ones 2 px before and after it."""
    a, v, b = m[:, :-4], m[:, 2:-2], m[:, 4:]
    return ((a < v) & (v < b)) | ((a > v) & (v > b))


def _pair_counts(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(65536,) int64 occurrences of each unordered value pair {x, y}, keyed lo << 8 | hi."""
    x, y = x.astype(np.int32), y.astype(np.int32)
    return np.bincount(np.minimum(x, y) << 8 | np.maximum(x, y), minlength=1 << 16)


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


ERROR, WARNING = "error", "warning"

# kind -> (what is wrong, how to fix it); shown once per group by CheckReport.format().
KINDS: dict[str, tuple[str, str]] = {
    "missing_image": (
        "image file does not exist",
        "restore the file, or remove its id from the split file (scripts/make_splits.py lists "
        "only ids that have both an image and a mask)",
    ),
    "missing_mask": (
        "mask file does not exist",
        "restore the mask, or remove the id from the split file (scripts/make_splits.py)",
    ),
    "unreadable_image": (
        "image cannot be decoded (truncated, empty or not an image)",
        "re-export or re-download the file, or remove its id from the split file",
    ),
    "unreadable_mask": (
        "mask cannot be decoded (truncated, empty or not an image)",
        "re-export the mask from the annotation tool, or remove its id from the split file",
    ),
    "size_mismatch": (
        "image and mask have different sizes",
        "a mask must have exactly the image's width and height: re-export it, or resize it with "
        "nearest-neighbour interpolation (never bilinear)",
    ),
    "out_of_range": (
        "mask values outside [0, num_classes) that are not ignore_index",
        "map the values to class ids with dataset.label_map (or to ignore_index), or set "
        "dataset.num_classes to the real number of classes",
    ),
    "binary_mask": (
        "mask looks like a 0/255 binary image, not class ids",
        "map 255 to the foreground class id, e.g. 'dataset.label_map={255: 1}' with "
        "dataset.num_classes=2",
    ),
    "rgb_mask": (
        "mask is an RGB colour image, not class ids",
        "set dataset.color_map (RGB colour -> class id), or convert the masks to single-channel "
        "class-id PNGs (scripts/convert_to_voc.py)",
    ),
    "unmapped_color": (
        "mask has colours that dataset.color_map does not map",
        "add the colours to dataset.color_map (or map them to ignore_index)",
    ),
    "lossy_mask": (
        "mask is lossy (JPEG or resampled): noisy values along the edges",
        "save masks as PNG and resize them only with nearest-neighbour interpolation; re-export "
        "them from the annotation tool (JPEG compression invents new label values)",
    ),
    "empty_split": (
        "split has no samples",
        "fill the split file (scripts/make_splits.py) or point dataset.root at the right folder",
    ),
    "duplicate_id": (
        "the same sample is listed more than once in a split",
        "remove the repeated lines from the split file (scripts/make_splits.py writes none)",
    ),
    "overlap": (
        "sample is in both the train and the val split (val scores would be inflated)",
        "regenerate disjoint splits with scripts/make_splits.py",
    ),
    "image_mode": (
        "image is not 8-bit RGB; it is converted to RGB when loaded",
        "nothing to do if this is intended (e.g. grayscale microscopy)",
    ),
    "exif_rotated": (
        "image has an EXIF orientation; it is rotated when loaded",
        "make sure the mask was drawn on the rotated image (or strip the EXIF tag)",
    ),
    **LAYOUT_KINDS,  # the public datasets' layouts (segkit.data.layout)
}


@dataclass(frozen=True)
class Problem:
    """One finding. `index` is the sample index in its split (None for split-level problems)."""

    split: str
    index: int | None
    file: str
    kind: str
    message: str
    severity: str = ERROR
    values: tuple[int, ...] = ()  # all raw values of the mask (out_of_range / binary_mask only)


@dataclass
class CheckReport:
    """Everything `check_dataset` found. `counts[split]` covers the masks that were read."""

    problems: list[Problem]
    counts: dict[str, ClassCounts] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # samples per split
    checked: dict[str, int] = field(default_factory=dict)  # samples read per split
    level: str = "full"
    num_classes: int = 0  # of the train dataset; used to suggest a label_map
    ignore_index: int = 255

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def bad_indices(self) -> dict[str, list[int]]:
        """Sample indices per split that have at least one error (what 'skip' removes)."""
        bad: dict[str, set[int]] = defaultdict(set)
        for p in self.errors:
            if p.index is not None:
                bad[p.split].add(p.index)
        return {split: sorted(idx) for split, idx in bad.items()}

    def only(self, severity: str) -> CheckReport:
        """A copy holding only the problems of `severity` (ERROR or WARNING)."""
        return replace(self, problems=[p for p in self.problems if p.severity == severity])

    def format(self, max_per_kind: int = 20) -> str:
        """All problems, grouped by kind (errors first), each group with its fix."""
        splits = ", ".join(
            f"{s}: {n} samples ({self.checked.get(s, 0)} read)" for s, n in self.sizes.items()
        )
        lines = [
            f"Dataset check ({self.level}) - {splits}: "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        ]
        groups: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for p in self.problems:
            groups[(p.severity, p.kind)].append(p)
        for (severity, kind), probs in sorted(groups.items(), key=lambda kv: kv[0][0] != ERROR):
            label_space = (self.num_classes, self.ignore_index)
            lines += _format_group(severity, kind, probs, max_per_kind, label_space)
        return "\n".join(lines)


def _format_group(
    severity: str, kind: str, probs: list[Problem], limit: int, label_space: tuple[int, int]
) -> list[str]:
    """Header, fix, then one line per file; a message shared by all files is printed once."""
    title, fix = KINDS.get(kind, (kind, ""))
    lines = ["", f"{severity.upper()} [{kind}] {title}: {len(probs)} file(s)"]
    lines.append(f"  fix: {_group_suggestion(kind, probs, *label_space) or fix}")
    shared = len(probs) > 1 and len({p.message for p in probs}) == 1
    if shared:
        lines.append(f"  every file below: {probs[0].message}")
    limit = limit if severity == ERROR else min(limit, 5)  # warnings are often dataset-wide
    for p in probs[:limit]:
        lines.append(f"  {p.split}: {p.file}" + ("" if shared else f": {p.message}"))
    if len(probs) > limit:
        lines.append(f"  ... and {len(probs) - limit} more [{kind}] file(s)")
    return lines


def _group_suggestion(kind: str, probs: list[Problem], num_classes: int, ignore: int) -> str:
    """One label_map for the whole group, computed from the raw values of all its files."""
    if kind not in ("out_of_range", "binary_mask"):
        return ""
    values = sorted({v for p in probs for v in p.values})
    return suggest_label_map(values, num_classes, ignore) if values else ""


def format_warnings(report: CheckReport) -> str:
    """`report.format()` of its warnings only (what training logs before it starts)."""
    return report.only(WARNING).format()


def write_bad_samples(report: CheckReport, path: str | Path) -> Path:
    """Write one tab-separated line per error: split, file, "kind: message"; -> the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{p.split}\t{p.file}\t{p.kind}: {p.message}" for p in report.errors]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
