"""FolderDataset: images and masks read in place from two folders, masks matched by file stem.

Two ways to get a split:
- `{split}` in image_dir / mask_dir (CamVid: "{split}" and "{split}annot");
- no placeholder: a fixed split of the sorted stems, `val_fraction` of them (chosen with
  `split_seed`) for split="val", the rest for "train", all of them for "trainval"
  (ISBI: Images/, Labels/, 30 files, val_fraction 0.2 -> 24 train / 6 val).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from segkit.data.base import SegmentationDataset
from segkit.errors import DataError

FRACTION_SPLITS = ("train", "val", "trainval")


def natural_key(name: str) -> list:
    """Sort key putting "2" before "10"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_stems(folder: Path, suffix: str) -> list[str]:
    """Naturally sorted stems of the files `*<suffix>` in folder; DataError when none."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder} (check dataset.root / image_dir)")
    stems = [p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix)]
    if not stems:
        raise DataError(
            f"no '*{suffix}' files in {folder}; check dataset.image_dir / dataset.image_suffix"
        )
    return sorted(stems, key=natural_key)


def fraction_split(
    stems: list[str], split: str, val_fraction: float | None, split_seed: int
) -> list[str]:
    """Deterministic split of sorted stems: round(n * val_fraction) random stems are "val"."""
    if val_fraction is None:
        raise DataError(
            "the image folder has no {split} placeholder, so set dataset.val_fraction (e.g. 0.2) "
            "to split it, or put {split} in dataset.image_dir / dataset.mask_dir"
        )
    if not 0 < val_fraction < 1:
        raise DataError(f"dataset.val_fraction must be in (0, 1), got {val_fraction}")
    if split not in FRACTION_SPLITS:
        raise DataError(f"split={split!r}: with dataset.val_fraction use one of {FRACTION_SPLITS}")
    if split == "trainval":
        return stems
    n_val = max(1, round(len(stems) * val_fraction))
    val = set(np.random.default_rng(split_seed).permutation(len(stems))[:n_val].tolist())
    return [s for i, s in enumerate(stems) if (i in val) == (split == "val")]


class FolderDataset(SegmentationDataset):
    """root/<image_dir>/<stem><image_suffix> paired with root/<mask_dir>/<stem><mask_suffix>.

    image_dir / mask_dir may contain "{split}"; otherwise val_fraction splits the files. The
    remaining keyword arguments (train, num_classes, ...) go to SegmentationDataset.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        image_dir: str,
        mask_dir: str,
        image_suffix: str = ".png",
        mask_suffix: str = ".png",
        val_fraction: float | None = None,
        split_seed: int = 0,
        **common,
    ):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"dataset.root={root} is not a folder; set dataset.root")
        image_folder = root / image_dir.format(split=split)
        mask_folder = root / mask_dir.format(split=split)
        stems = list_stems(image_folder, image_suffix)
        if "{split}" not in image_dir:
            stems = fraction_split(stems, split, val_fraction, split_seed)
        files = [
            (str(image_folder / f"{s}{image_suffix}"), str(mask_folder / f"{s}{mask_suffix}"))
            for s in stems
        ]
        self.root, self.split = root, split
        super().__init__(files, **common)
