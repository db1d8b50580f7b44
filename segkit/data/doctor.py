"""Dataset checks: every problem of a train/val dataset pair at once, each with file and fix.

`check_dataset` reads the raw files of the datasets (PIL header for mode, size and EXIF;
`read_image` to prove the image decodes; `read_mask` + `encode_mask` for the label values) and
returns a `CheckReport` (`segkit.data.problems`) listing every problem, each naming its file and
how to fix it. It never changes a dataset. `check_for_training` is what training calls before
the first step: it logs warnings and, on errors, raises or says which samples to drop, per the
dataset's `on_bad_sample`; the caller removes them (`remove_samples`) and may list them with
`report.write_bad_samples`. Class statistics and weights live in `segkit.data.stats`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segkit.data.io import exif_orientation, read_image, read_mask, read_split_file
from segkit.data.layout import LayoutError
from segkit.data.problems import (
    ERROR,
    MODE_NOTES,
    ORIENTATIONS,
    WARNING,
    CheckReport,
    Problem,
    check_jpeg_end,
    clean_error,
    format_warnings,
    is_lossy,
    is_lossy_rgb,
    list_values,
    opacity_note,
    rgb_mask_hint,
    size_message,
    top_colors,
)
from segkit.data.stats import ClassCounts, default_workers
from segkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LEVELS = ("off", "quick", "full")
QUICK_SAMPLES = 64  # per split; spread evenly over the split so the subset is deterministic


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
    check_augment_lists(train_ds)
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


def check_augment_lists(ds: Any) -> None:
    """The ``dataset.augment`` lists, before any file is read: each step run on generated pairs
    (`SegmentationDataset.check_pipelines`); DataError naming the step that breaks one."""
    if hasattr(ds, "check_pipelines"):
        ds.check_pipelines()


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
            alpha = np.asarray(im.getchannel("A")) if mode in ("RGBA", "LA") else None
        loaded = read_image(path)
        if fmt == "JPEG":
            check_jpeg_end(path)
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for corrupt files
        add(path, "unreadable_image", clean_error(e))
        return None
    if mode != "RGB":
        note = MODE_NOTES.get(mode, f"mode {mode}")
        add(path, "image_mode", note + ("" if alpha is None else opacity_note(alpha)), WARNING)
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
    except LayoutError as e:  # a public dataset's own finding: it names the fix itself
        add(path, e.kind, str(e))
        return
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
