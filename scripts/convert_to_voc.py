"""Convert a CamVid- or ISBI-style folder dataset into the VOC layout VOCDataset reads.

    python scripts/convert_to_voc.py camvid /data/camvid VOCdevkit            # void 11 -> 255
    python scripts/convert_to_voc.py isbi /data/isbi VOCdevkit --val-ratio 0.2  # 255 -> 1

Layouts (SRC):
  camvid  <split>/<name>.png + <split>annot/<name>.png for each of train, val, test present;
          the folders give the splits. Default --label-map 11:255 (SegNet's void -> ignore).
  isbi    Images/<name>.png + Labels/<name>.png (other folders: --image-dir / --mask-dir); the
          split is drawn with --val-ratio / --seed (scripts/make_splits.py rules). Default
          --label-map 255:1 (0/255 masks -> class ids 0/1).
Writes OUT/<year>/JPEGImages/<name><--image-suffix> (.jpg: RGB JPEG quality 95, the
VOCDataset default; .png: lossless, source PNGs copied as they are), SegmentationClass/<name>.png
(mode P, VOC palette, 255 white) and ImageSets/Segmentation/{train,val,trainval[,test]}.txt.
Both datasets can also be read in place, without converting: see conf/dataset/camvid.yaml and
conf/dataset/isbi.yaml. Check the result with `python scripts/check_dataset.py dataset=voc ...`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from make_splits import split_stems, write_splits  # scripts/ is sys.path[0] when run as a script
from PIL import Image

from segkit.data.arguments import voc_palette
from segkit.data.folder import natural_key
from segkit.data.io import read_image, read_mask
from segkit.errors import DataError

DEFAULT_LABEL_MAPS = {"camvid": "11:255", "isbi": "255:1"}
CAMVID_SPLITS = ("train", "val", "test")


def parse_label_map(text: str) -> dict[int, int]:
    """'255:1,11:255' -> {255: 1, 11: 255}; 'none' or '' -> {}."""
    if text.strip().lower() in ("", "none"):
        return {}
    pairs = {}
    for item in text.split(","):
        try:
            raw, target = (int(v) for v in item.split(":"))
        except ValueError:
            raise SystemExit(
                f"error: --label-map item {item!r} is not RAW:ID (e.g. 255:1)"
            ) from None
        if not (0 <= raw <= 255 and 0 <= target <= 255):
            raise SystemExit(f"error: --label-map {item!r}: values must be in 0..255")
        pairs[raw] = target
    return pairs


def camvid_pairs(src: Path) -> dict[str, list[tuple[Path, Path]]]:
    """{split: [(image, mask), ...]} for every <split>/ + <split>annot/ pair present."""
    splits = {}
    for split in CAMVID_SPLITS:
        images, masks = src / split, src / f"{split}annot"
        if images.is_dir() and masks.is_dir():
            splits[split] = [(p, masks / p.name) for p in sorted(images.glob("*.png"))]
    if not splits:
        raise SystemExit(f"error: no train/ + trainannot/ (or val, test) folders in {src}")
    return splits


def folder_pairs(src: Path, image_dir: str, mask_dir: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by stem; masks may have another suffix than images."""
    images, masks = src / image_dir, src / mask_dir
    for folder in (images, masks):
        if not folder.is_dir():
            raise SystemExit(f"error: folder not found: {folder} (see --image-dir / --mask-dir)")
    by_stem = {p.stem: p for p in masks.iterdir() if p.is_file()}
    return [(p, by_stem[p.stem]) for p in sorted(images.iterdir()) if p.stem in by_stem]


def palette_bytes() -> list[int]:
    flat = [v for colour in voc_palette(256) for v in colour]
    flat[-3:] = [255, 255, 255]  # ignore shown white
    return flat


def convert_mask(src: Path, dst: Path, lut: np.ndarray) -> None:
    """Raw class-value mask -> palette PNG of lut[value]."""
    raw = read_mask(src)
    if raw.ndim != 2:
        raise SystemExit(f"error: {src} is an RGB colour mask; this tool needs class-value masks")
    out = Image.fromarray(lut[raw])  # mode L; putpalette turns it into P, keeping the values
    out.putpalette(palette_bytes())
    out.save(dst)


def convert_image(src: Path, dst: Path) -> None:
    """Same suffix (PNG -> PNG, JPEG -> JPEG): copy; otherwise decode (EXIF applied) and encode."""
    if src.suffix.lower() == dst.suffix.lower():
        shutil.copyfile(src, dst)
    else:
        Image.fromarray(read_image(src)).save(dst, quality=95)


def write_samples(pairs: list[tuple[Path, Path]], year: Path, suffix: str, lut: np.ndarray) -> None:
    for sub in ("JPEGImages", "SegmentationClass"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    for image, mask in pairs:
        if not mask.is_file():
            raise SystemExit(f"error: no mask for {image}: {mask} is missing")
        convert_image(image, year / "JPEGImages" / f"{image.stem}{suffix}")
        convert_mask(mask, year / "SegmentationClass" / f"{image.stem}.png", lut)


def collect(args: argparse.Namespace) -> tuple[list[tuple[Path, Path]], dict[str, list[str]]]:
    """All (image, mask) pairs and the split lists of stems, for the chosen layout."""
    if args.layout == "camvid":
        by_split = camvid_pairs(args.src)
        pairs = [pair for split in by_split.values() for pair in split]
        splits = {s: [img.stem for img, _ in p] for s, p in by_split.items()}
        splits["trainval"] = splits.get("train", []) + splits.get("val", [])
    else:
        pairs = folder_pairs(args.src, args.image_dir, args.mask_dir)
        stems = [img.stem for img, _ in pairs]
        train, val = split_stems(stems, args.val_ratio, args.seed)
        splits = {"train": train, "val": val, "trainval": sorted(stems, key=natural_key)}
    stems = [img.stem for img, _ in pairs]
    if len(set(stems)) != len(stems):
        raise SystemExit("error: the same file name appears in two splits; names must be unique")
    if not pairs:
        raise SystemExit(f"error: no image/mask pairs found in {args.src}")
    return pairs, splits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("layout", choices=("camvid", "isbi"))
    p.add_argument("src", type=Path, help="dataset folder in that layout")
    p.add_argument("out", type=Path, help="output VOCdevkit folder")
    p.add_argument("--label-map", help="RAW:ID[,RAW:ID...] or none (default: per layout)")
    p.add_argument("--image-suffix", default=".jpg", choices=(".jpg", ".png"))
    p.add_argument("--image-dir", default="Images", help="isbi layout: image folder")
    p.add_argument("--mask-dir", default="Labels", help="isbi layout: mask folder")
    p.add_argument("--val-ratio", type=float, default=0.2, help="isbi layout: val share")
    p.add_argument("--seed", type=int, default=0, help="isbi layout: split seed")
    p.add_argument("--year", default="VOC2007")
    p.add_argument("--overwrite", action="store_true", help="replace existing split files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    label_map = parse_label_map(args.label_map or DEFAULT_LABEL_MAPS[args.layout])
    lut = np.arange(256, dtype=np.uint8)
    for raw, target in label_map.items():
        lut[raw] = target
    pairs, splits = collect(args)
    year = args.out / args.year
    try:
        write_samples(pairs, year, args.image_suffix, lut)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_splits(year / "ImageSets" / "Segmentation", splits, args.overwrite)
    counts = ", ".join(f"{len(v)} {k}" for k, v in splits.items())
    print(f"wrote {len(pairs)} samples to {year} ({counts}); label map {label_map or 'none'}")
    print(
        f"check: python scripts/check_dataset.py dataset=voc dataset.root={args.out} "
        f"dataset.image_suffix={args.image_suffix} dataset.num_classes=<N>"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
