"""Write VOC split files (the notes' voc_annotation.py), deterministically.

    python scripts/make_splits.py VOCdevkit --val-ratio 0.1 --seed 0

Lists the stems that have BOTH an image (<year>/JPEGImages/<stem>.jpg) and a mask
(<year>/SegmentationClass/<stem>.png), reports the orphans (an image without mask or the
reverse), draws round(n * val_ratio) of them for val with np.random.default_rng(seed), and writes
<year>/ImageSets/Segmentation/{train,val,trainval}.txt, one stem per line, sorted. The same
files, ratio and seed always give the same split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from segkit.data.folder import natural_key


def year_folder(root: Path, year: str) -> Path:
    """root/year when it exists (root is the VOCdevkit folder), else root itself."""
    return root / year if (root / year).is_dir() else root


def stems(folder: Path, suffix: str) -> set[str]:
    """Stems of the files `*<suffix>` in folder (suffix compared case-insensitively)."""
    if not folder.is_dir():
        raise SystemExit(f"error: folder not found: {folder}")
    return {p.name[: -len(suffix)] for p in folder.iterdir() if p.name.lower().endswith(suffix)}


def find_pairs(
    image_dir: Path, mask_dir: Path, image_suffix: str = ".jpg", mask_suffix: str = ".png"
) -> tuple[list[str], list[str], list[str]]:
    """-> (stems with image and mask, images without mask, masks without image), each sorted."""
    images, masks = stems(image_dir, image_suffix.lower()), stems(mask_dir, mask_suffix.lower())
    return tuple(
        sorted(s, key=natural_key) for s in (images & masks, images - masks, masks - images)
    )


def split_stems(names: list[str], val_ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic (train, val), both in natural order ("2" before "10"): round(n * val_ratio)
    names drawn by default_rng(seed) are val (at least one when val_ratio > 0 and n >= 2).
    The same rule as FolderDataset's val_fraction / split_seed, so a converted dataset gets the
    split it had when read in place."""
    if not 0 <= val_ratio < 1:
        raise ValueError(f"--val-ratio must be in [0, 1), got {val_ratio}")
    names = sorted(names, key=natural_key)
    n_val = round(len(names) * val_ratio)
    if val_ratio > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    picked = set(np.random.default_rng(seed).permutation(len(names))[:n_val].tolist())
    train = [s for i, s in enumerate(names) if i not in picked]
    return train, [s for i, s in enumerate(names) if i in picked]


def write_splits(split_dir: Path, splits: dict[str, list[str]], overwrite: bool = False) -> None:
    """split_dir/<name>.txt per entry, one stem per line (LF)."""
    existing = [split_dir / f"{n}.txt" for n in splits if (split_dir / f"{n}.txt").exists()]
    if existing and not overwrite:
        raise SystemExit(
            f"error: {', '.join(map(str, existing))} exist; pass --overwrite to replace them"
        )
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, members in splits.items():
        (split_dir / f"{name}.txt").write_text("".join(f"{s}\n" for s in members))


def report_orphans(no_mask: list[str], no_image: list[str], limit: int = 10) -> None:
    for what, names in (("images without a mask", no_mask), ("masks without an image", no_image)):
        if names:
            shown = ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")
            print(f"left out {len(names)} {what}: {shown}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root", type=Path, help="VOCdevkit folder (or its VOC2007 folder)")
    p.add_argument("--year", default="VOC2007")
    p.add_argument("--image-dir", default="JPEGImages", help="relative to the year folder")
    p.add_argument("--mask-dir", default="SegmentationClass", help="relative to the year folder")
    p.add_argument("--image-suffix", default=".jpg")
    p.add_argument("--mask-suffix", default=".png")
    p.add_argument("--val-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace existing split files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    year = year_folder(args.root, args.year)
    pairs, no_mask, no_image = find_pairs(
        year / args.image_dir, year / args.mask_dir, args.image_suffix, args.mask_suffix
    )
    report_orphans(no_mask, no_image)
    if not pairs:
        print(f"error: no stem has both an image and a mask under {year}", file=sys.stderr)
        return 1
    train, val = split_stems(pairs, args.val_ratio, args.seed)
    split_dir = year / "ImageSets" / "Segmentation"
    write_splits(split_dir, {"train": train, "val": val, "trainval": pairs}, args.overwrite)
    print(f"wrote {split_dir}/{{train,val,trainval}}.txt: {len(train)} train, {len(val)} val")
    return 0


if __name__ == "__main__":
    sys.exit(main())
