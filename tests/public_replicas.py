"""Small replicas of the public datasets' official layouts, file names and encodings (the
datasets themselves cannot be downloaded here): Cityscapes, ADE20K, SBD + VOC 2012, COCO-Stuff.
Pictures are 32x64 (H x W) so a tiny training runs on them; masks hold every value the tests
check the maps with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (32, 64)  # H, W of every replica picture


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def value_mask(values: list[int], shift: int = 0) -> np.ndarray:
    """(H,W) mask holding every one of ``values`` in 4x4 blocks, in a shuffled order (no ramps
    the dataset check would take for a resampled mask), the order rolled by ``shift``."""
    h, w = SIZE
    order = np.random.default_rng(len(values)).permutation(len(values))
    blocks = (h // 4) * (w // 4)
    ids = np.array([values[order[(b + shift) % len(values)]] for b in range(blocks)], np.uint8)
    return np.kron(ids.reshape(h // 4, w // 4), np.ones((4, 4), np.uint8))


# --------------------------------------------------------------------------- Cityscapes
CITIES = {"train": {"aachen": 2, "bochum": 2}, "val": {"frankfurt": 3}}
LABEL_IDS = list(range(34))  # every id a labelIds PNG can hold


def cityscapes(root: Path, cities: dict = CITIES, annotation: str = "gtFine") -> Path:
    """root/leftImg8bit/<split>/<city>/<city>_000000_0000NN_leftImg8bit.png and the matching
    <annotation>/<split>/<city>/..._<annotation>_labelIds.png (ids 0..33, striped)."""
    for split, per_city in cities.items():
        for city, n in per_city.items():
            for k in range(n):
                stem = f"{city}_000000_{k:06d}"
                write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", k)
                label = root / annotation / split / city / f"{stem}_{annotation}_labelIds.png"
                write_mask(label, value_mask(LABEL_IDS, shift=k))
    return root


# --------------------------------------------------------------------------- ADE20K
ADE_VALUES = [0, 1, 2, 75, 149, 150]  # 0 = "other"


def ade20k(root: Path, counts: tuple = (("training", 4), ("validation", 2))) -> Path:
    """root/ADEChallengeData2016/{images,annotations}/<folder>/ADE_<split>_<n>.{jpg,png}."""
    top = root / "ADEChallengeData2016"
    for folder, n in counts:
        tag = "train" if folder == "training" else "val"
        for k in range(1, n + 1):
            stem = f"ADE_{tag}_{k:08d}"
            write_image(top / "images" / folder / f"{stem}.jpg", k)
            write_mask(top / "annotations" / folder / f"{stem}.png", value_mask(ADE_VALUES, k))
    return top


# --------------------------------------------------------------------------- COCO-Stuff
# map values (COCO-Stuff id - 1): things, the unused thing ids 12 and 91, stuff, unlabeled
COCO_VALUES = [0, 11, 12, 90, 91, 181, 255]


def coco_stuff(root: Path, counts: tuple = (("train2017", 4), ("val2017", 2))) -> Path:
    """root/images/<folder>/<12 digits>.jpg + root/annotations/<folder>/<12 digits>.png."""
    for folder, n in counts:
        for k in range(n):
            stem = f"{k + 9 if folder == 'train2017' else k + 139:012d}"
            write_image(root / "images" / folder / f"{stem}.jpg", k)
            write_mask(root / "annotations" / folder / f"{stem}.png", value_mask(COCO_VALUES, k))
    return root


# --------------------------------------------------------------------------- SBD + VOC 2012
VOC_SPLITS = {"train": ["2007_000032", "2008_000002"], "val": ["2007_000033", "2008_000003"]}
SBD_SPLITS = {"train": ["2008_000002", "2008_000010", "2007_000033"], "val": ["2008_000011"]}
SBD_ONLY = ["2008_000010", "2008_000011"]  # masks that only SBD has


def sbd_mask(k: int) -> np.ndarray:
    return value_mask(list(range(21)), shift=k)


def sbd_and_voc(root: Path) -> tuple[Path, Path]:
    """(root/benchmark_RELEASE, root/VOCdevkit): SBD cls/*.mat written with scipy, and VOC 2012
    with JPEGImages for every name, SegmentationClass for VOC train + val (border 255)."""
    from scipy.io import savemat

    sbd = root / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    for split, names in SBD_SPLITS.items():
        (sbd / f"{split}.txt").write_text("\n".join(names) + "\n")
    for k, name in enumerate(sorted({n for v in SBD_SPLITS.values() for n in v})):
        seg = sbd_mask(k)
        gt = {"Segmentation": seg, "Boundaries": np.zeros(1), "CategoriesPresent": np.unique(seg)}
        savemat(sbd / "cls" / f"{name}.mat", {"GTcls": gt})
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split, names in VOC_SPLITS.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            mask = value_mask([0, 15, 255, 7])  # VOC masks mark borders 255
            write_mask(voc / "SegmentationClass" / f"{name}.png", mask)
    every = {n for v in [*VOC_SPLITS.values(), *SBD_SPLITS.values()] for n in v}
    for k, name in enumerate(sorted(every)):
        write_image(voc / "JPEGImages" / f"{name}.jpg", k)
    return root / "benchmark_RELEASE", root / "VOCdevkit"
