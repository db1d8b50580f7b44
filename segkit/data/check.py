"""Dataset checks: every problem of a train/val dataset pair at once, each with file and fix.

`check_dataset` reads the raw files of the datasets (PIL header for mode, size and EXIF;
`read_image` to prove the image decodes; `read_mask` + `encode_mask` for the label values) and
returns a `CheckReport` listing every problem, each naming its file and how to fix it. It never
changes a dataset. `check_for_training` is what training calls before the first step: it logs
warnings and, on errors, raises or says which samples to drop, per the dataset's
`on_bad_sample`; the caller removes them (`remove_samples`) and may list them with
`write_bad_samples`. Class statistics and weights live in `segkit.data.stats`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segkit.data.diagnose import (
    MODE_NOTES,
    ORIENTATIONS,
    check_jpeg_end,
    clean_error,
    is_lossy,
    is_lossy_rgb,
    list_values,
    rgb_mask_hint,
    size_message,
    suggest_label_map,
    top_colors,
)
from segkit.data.io import exif_orientation, read_image, read_mask, read_split_file
from segkit.data.stats import ClassCounts, default_workers
from segkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"
LEVELS = ("off", "quick", "full")
QUICK_SAMPLES = 64  # per split; spread evenly over the split so the subset is deterministic

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


# ---------------------------------------------------------------------------------------------
# check_dataset
# ---------------------------------------------------------------------------------------------


def check_dataset(
    train_ds: Any,
    val_ds: Any | None = None,
    level: str = "quick",
    *,
    quick_samples: int = QUICK_SAMPLES,
    workers: int | None = None,
) -> CheckReport:
    """Check a train/val dataset pair without going through `__getitem__`.

    level 'quick': file existence and split checks for every sample, full reads of
    `quick_samples` evenly spaced samples per split. 'full': every file is decoded.
    """
    if level not in ("quick", "full"):
        raise ValueError(f"check level must be 'quick' or 'full', got {level!r}")
    splits = {"train": train_ds} if val_ds is None else {"train": train_ds, "val": val_ds}
    report = CheckReport(
        problems=[],
        level=level,
        num_classes=train_ds.num_classes,
        ignore_index=train_ds.ignore_index,
    )
    workers = workers or default_workers()
    binary: dict[str, list[int]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for name, ds in splits.items():
            binary[name] = _check_split(report, name, ds, level, quick_samples, pool)
    report.problems += _binary_ignored_problems(report, splits, binary)
    if val_ds is not None:
        report.problems += _overlap_problems(train_ds, val_ds)
    return report


def _check_split(
    report: CheckReport, name: str, ds: Any, level: str, quick: int, pool: ThreadPoolExecutor
) -> list[int]:
    """Check one split into `report`; -> indices of its 0/255 masks where 255 is ignore."""
    n = len(ds.files)
    read = set(range(n)) if level == "full" else set(_spread(n, quick))
    report.problems += _listing_problems(name, ds)
    results = list(pool.map(lambda i: _check_sample(ds, name, i, i in read), range(n)))
    counts = ClassCounts.zeros(ds.num_classes)
    binary = []
    for i, res in enumerate(results):
        report.problems += res.problems
        if res.hist is not None:
            counts.add(res.hist)
            if res.binary_ignored:
                binary.append(i)
    report.counts[name], report.sizes[name], report.checked[name] = counts, n, len(read)
    return binary


def _spread(n: int, k: int) -> list[int]:
    """Up to k indices spread evenly over range(n), first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(x) for x in np.linspace(0, n - 1, k)})


@dataclass
class _SampleResult:
    problems: list[Problem]
    hist: np.ndarray | None = None  # int64 (num_classes,) pixels per class id
    binary_ignored: bool = False  # raw values are {0, 255} and 255 is ignore_index


def _check_sample(ds: Any, split: str, index: int, read: bool) -> _SampleResult:
    image_path, mask_path = (str(p) for p in ds.files[index])
    res = _SampleResult(problems=[])

    def add(file: str, kind: str, message: str, severity: str = ERROR, values=()) -> None:
        """Record a problem; a second one of the same kind for the same file extends the first."""
        for j, p in enumerate(res.problems):
            if (p.file, p.kind) == (file, kind):
                res.problems[j] = replace(p, message=f"{p.message}; {message}")
                return
        res.problems.append(Problem(split, index, file, kind, message, severity, tuple(values)))

    missing = False
    for path, kind in ((image_path, "missing_image"), (mask_path, "missing_mask")):
        if not os.path.isfile(path):
            add(path, kind, "no such file")
            missing = True
    if missing or not read:
        return res
    image_hw = _check_image(image_path, add)
    mask = _read_mask(mask_path, add)
    if mask is None:
        return res
    if image_hw is not None and image_hw != mask.shape[:2]:
        add(mask_path, "size_mismatch", size_message(image_path, image_hw, mask.shape[:2]))
        return res
    _check_mask_values(ds, mask_path, mask, add, res)
    return res


def _check_image(path: str, add: Callable[..., None]) -> tuple[int, int] | None:
    """Header warnings (mode, EXIF) and a full decode; returns (H, W) as loaded, None if bad."""
    try:
        with Image.open(path) as im:
            mode, orientation, fmt = im.mode, exif_orientation(im), im.format
        loaded = read_image(path)
        if fmt == "JPEG":
            check_jpeg_end(path)
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for corrupt files
        add(path, "unreadable_image", clean_error(e))
        return None
    if mode != "RGB":
        add(path, "image_mode", MODE_NOTES.get(mode, f"mode {mode}"), WARNING)
    if orientation != 1:
        add(
            path,
            "exif_rotated",
            f"EXIF orientation {orientation} ({ORIENTATIONS[orientation]})",
            WARNING,
        )
    return loaded.shape[:2]


def _read_mask(path: str, add: Callable[..., None]) -> np.ndarray | None:
    try:
        return read_mask(path)
    except (OSError, ValueError, SyntaxError) as e:  # DataError is a ValueError
        add(path, "unreadable_mask", clean_error(e))
        return None


def _check_mask_values(
    ds: Any, path: str, mask: np.ndarray, add: Callable[..., None], res: _SampleResult
) -> None:
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        add(path, "lossy_mask", "JPEG mask file: compression adds label values along edges")
    if mask.ndim == 3 and not ds.color_map:
        add(path, "rgb_mask", rgb_mask_hint(mask, getattr(ds, "palette", None), ds.num_classes))
        return
    try:
        ids = ds.encode(mask, path)
    except DataError as e:
        _explain_bad_values(ds, path, mask, str(e), add)
        return
    valid = ids[ids != ds.ignore_index]
    res.hist = np.bincount(valid.ravel(), minlength=ds.num_classes)[: ds.num_classes]
    if mask.ndim == 2 and is_lossy(mask):
        add(path, "lossy_mask", "values in between their neighbours along edges (resampled?)")
    res.binary_ignored = mask.ndim == 2 and _binary_values(mask, ds) and _maps(ds, 255) is None


def _mapped(ds: Any, value: int) -> int:
    """Raw mask `value` after dataset.label_map (values it does not list are kept)."""
    return int((ds.label_map or {}).get(value, value))


def _maps(ds: Any, value: int) -> int | None:
    """The class id raw `value` maps to, None when it is ignored or out of range."""
    mapped = _mapped(ds, value)
    return mapped if 0 <= mapped < ds.num_classes else None


def _binary_values(mask: np.ndarray, ds: Any) -> bool:
    values = set(np.unique(mask).tolist())
    return 255 in values and values <= {0, 255} and 255 not in (ds.label_map or {})


def _explain_bad_values(
    ds: Any, path: str, mask: np.ndarray, error: str, add: Callable[..., None]
) -> None:
    """Turn an encode_mask failure into a specific problem: lossy, binary, colour or range."""
    if mask.ndim == 3:
        kind = "lossy_mask" if is_lossy_rgb(mask) else "unmapped_color"
        add(path, kind, f"{error}; {top_colors(mask)}")
        return
    hist = np.bincount(mask.ravel(), minlength=256)
    values = np.flatnonzero(hist).tolist()
    bad = [v for v in values if _maps(ds, v) is None and _mapped(ds, v) != ds.ignore_index]
    if not bad:  # encode_mask refused for a reason this analysis does not know: pass it on
        add(path, "out_of_range", error)
    elif is_lossy(mask):
        hint = "; a picture, not a mask? (check dataset.mask_dir)" if len(values) > 64 else ""
        message = f"{len(values)} distinct values, {list_values(bad, hist)} invalid{hint}"
        add(path, "lossy_mask", message)
    else:
        kind = "binary_mask" if _binary_values(mask, ds) else "out_of_range"
        message = f"values {list_values(bad, hist)} not in [0, {ds.num_classes})"
        add(path, kind, message, values=values)


def _binary_ignored_problems(
    report: CheckReport, splits: dict[str, Any], binary: dict[str, list[int]]
) -> list[Problem]:
    """0/255 masks with 255 == ignore_index look valid; they are an error when, over all the
    masks read, nothing but class 0 is left to learn."""
    if any(any(c.pixels[1:]) for c in report.counts.values()):
        return []
    message = "values 0 and 255 only: 255 is ignore_index, so the model would see only class 0"
    return [
        Problem(split, i, str(splits[split].files[i][1]), "binary_mask", message, ERROR, (0, 255))
        for split, indices in binary.items()
        for i in indices
    ]


# ---------------------------------------------------------------------------------------------
# split listings: empty, duplicates, train/val overlap
# ---------------------------------------------------------------------------------------------


def _split_file(ds: Any) -> str | None:
    path = getattr(ds, "split_file", None)
    return None if path is None else str(path)


def _listing_problems(split: str, ds: Any) -> list[Problem]:
    split_file = _split_file(ds)
    where = f"the '{split}' split" + (f" ({split_file})" if split_file else "")
    if len(ds.files) == 0:
        source = split_file or str(getattr(ds, "root", "<dataset>"))
        return [Problem(split, None, source, "empty_split", f"{where} has no samples")]
    problems = []
    seen: dict[str, int] = {}
    for i, (image, _) in enumerate(ds.files):
        key = os.path.normpath(str(image))
        if key in seen:
            msg = f"sample {i} repeats sample {seen[key]} of {where}"
            problems.append(Problem(split, i, str(image), "duplicate_id", msg))
        else:
            seen[key] = i
    return problems


def _overlap_problems(train_ds: Any, val_ds: Any) -> list[Problem]:
    """Samples of train whose image is also in val; reported on train so 'skip' keeps val whole."""
    val_images = {os.path.normpath(str(img)) for img, _ in val_ds.files}
    source = _split_file(val_ds) or "the val split"
    return [
        Problem("train", i, str(img), "overlap", f"also listed in {source}")
        for i, (img, _) in enumerate(train_ds.files)
        if os.path.normpath(str(img)) in val_images
    ]


def check_split_file(path: str | Path) -> list[Problem]:
    """Problems of one split file on its own: no ids, ids listed more than once."""
    ids = read_split_file(path)
    if not ids:
        return [Problem("", None, str(path), "empty_split", "no ids in the file")]
    counts = Counter(ids)
    return [
        Problem("", None, str(path), "duplicate_id", f"id {i!r} listed {n} times")
        for i, n in counts.items()
        if n > 1
    ]


# ---------------------------------------------------------------------------------------------
# training start
# ---------------------------------------------------------------------------------------------


def check_for_training(
    train_ds: Any, val_ds: Any | None, level: str
) -> tuple[CheckReport | None, dict[str, list[int]]]:
    """Check the datasets before training: -> (report, {split: sample indices to drop}).

    level 'off': (None, {}), nothing is read. Otherwise warnings are logged (one message) and
    with no errors the result is (report, {}). On errors, with `train_ds.on_bad_sample` 'raise':
    DataError listing every problem; 'skip': the bad indices per split ('train' / 'val') that the
    caller should drop, or DataError when a split would lose more than its `max_bad_fraction` or
    when an error concerns a whole split. The datasets are not changed.
    """
    if level not in LEVELS:
        raise ConfigError(f"dataset.check must be one of {LEVELS}, got {level!r}")
    if level == "off":
        return None, {}
    report = check_dataset(train_ds, val_ds, level)
    if report.warnings:
        log.warning("%s", format_warnings(report))
    if not report.errors:
        log.info("dataset check (%s): no errors", level)
        return report, {}
    if train_ds.on_bad_sample == "raise":
        raise DataError(report.format() + _RAISE_HINT)
    datasets = {"train": train_ds} if val_ds is None else {"train": train_ds, "val": val_ds}
    _refuse_too_many(report, datasets)
    return report, report.bad_indices


_RAISE_HINT = (
    "\n\nFix the files above, or set dataset.on_bad_sample=skip to train without the bad samples "
    "(they are listed in <run dir>/bad_samples.txt). Run `python scripts/check_dataset.py` with "
    "the same dataset overrides to re-check."
)


def format_warnings(report: CheckReport) -> str:
    """`report.format()` of its warnings only (what training logs before it starts)."""
    return report.only(WARNING).format()


def _refuse_too_many(report: CheckReport, datasets: dict[str, Any]) -> None:
    """DataError when skipping is not possible: a split would lose more than its
    max_bad_fraction, or an error has no sample index (a whole split is wrong)."""
    unremovable = [p for p in report.errors if p.index is None]
    too_many = [
        f"{split}: {len(idx)}/{report.sizes[split]} bad "
        f"(> max_bad_fraction={datasets[split].max_bad_fraction})"
        for split, idx in report.bad_indices.items()
        if len(idx) > datasets[split].max_bad_fraction * max(report.sizes[split], 1)
    ]
    if too_many or unremovable:
        why = "; ".join(too_many) or "split-level errors cannot be skipped"
        raise DataError(f"{report.format()}\n\nToo many bad samples to skip them: {why}")


def write_bad_samples(report: CheckReport, path: str | Path) -> Path:
    """Write one tab-separated line per error: split, file, "kind: message"; -> the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{p.split}\t{p.file}\t{p.kind}: {p.message}" for p in report.errors]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
