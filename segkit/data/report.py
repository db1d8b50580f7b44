"""What a dataset check found: `Problem` (one finding, with its file), `CheckReport` (all of
them, grouped by kind with a fix per group in `CheckReport.format`), and the two ways training
shows a report (`format_warnings`, `write_bad_samples`). The checks themselves are in
`segkit.data.check`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from segkit.data.diagnose import suggest_label_map
from segkit.data.stats import ClassCounts

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
