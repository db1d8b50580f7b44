"""VOCDataset: the VOC-layout dataset (VOCdevkit/VOC2007/... with split lists).

`UnetDataset` is the same class under the name the course notes use.
"""

from __future__ import annotations

from pathlib import Path

from segkit.data.base import SegmentationDataset
from segkit.data.io import read_split_file
from segkit.errors import DataError


def voc_layout(year: str, image_dir: str, mask_dir: str, split_dir: str, suffixes=(".jpg", ".png")):
    """Text block showing the expected folder layout with the configured names."""
    return (
        "expected layout:\n"
        "  <dataset.root>/                (the VOCdevkit folder)\n"
        f"    {year}/                     (dataset.year)\n"
        f"      {image_dir}/<name>{suffixes[0]}\n"
        f"      {mask_dir}/<name>{suffixes[1]}\n"
        f"      {split_dir}/<split>.txt   (one <name> per line: train.txt, val.txt, ...)"
    )


def resolve_year_dir(root: str | Path, year: str, split_dir: str, layout: str) -> Path:
    """root/year, or root itself when it already is the year folder (holds split_dir)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset.root={root} is not a folder; set dataset.root. {layout}")
    if (root / year).is_dir():
        return root / year
    if (root / split_dir).is_dir():
        return root
    found = sorted(p.name for p in root.iterdir() if p.is_dir())[:10]
    raise DataError(
        f"no {year} folder in dataset.root={root} (found folders: {found}); set dataset.root to "
        f"the VOCdevkit folder or dataset.year to the year folder name. {layout}"
    )


def read_voc_split(split_file: Path, layout: str) -> list[str]:
    """Names listed in the split file <year>/<split_dir>/<split>.txt; DataError shows the splits
    that folder holds."""
    if not split_file.is_file():
        folder = split_file.parent
        found = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        raise DataError(f"split file not found: {split_file} (splits there: {found}). {layout}")
    names = read_split_file(split_file)
    if not names:
        raise DataError(f"split file {split_file} lists no samples")
    return names


class VOCDataset(SegmentationDataset):
    """VOC layout: names from root/<year>/<split_dir>/<split>.txt, image
    <year>/<image_dir>/<name><image_suffix>, mask <year>/<mask_dir>/<name><mask_suffix>.

    root is the VOCdevkit folder (the year folder itself is accepted too); `split_file` is the
    split list read. The remaining keyword arguments (train, num_classes, input_shape, ...) go to
    SegmentationDataset.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        year: str = "VOC2007",
        image_dir: str = "JPEGImages",
        mask_dir: str = "SegmentationClass",
        split_dir: str = "ImageSets/Segmentation",
        image_suffix: str = ".jpg",
        mask_suffix: str = ".png",
        **common,
    ):
        layout = voc_layout(year, image_dir, mask_dir, split_dir, (image_suffix, mask_suffix))
        year_dir = resolve_year_dir(root, year, split_dir, layout)
        split_file = year_dir / split_dir / f"{split}.txt"
        names = read_voc_split(split_file, layout)
        files = [
            (
                str(year_dir / image_dir / f"{name}{image_suffix}"),
                str(year_dir / mask_dir / f"{name}{mask_suffix}"),
            )
            for name in names
        ]
        self.root, self.split, self.split_file = Path(root), split, split_file
        super().__init__(files, **common)


UnetDataset = VOCDataset
"""The course notes' name of `VOCDataset` (same class)."""
