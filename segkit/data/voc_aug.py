"""PASCAL VOC 2012 + SBD ("trainaug", 10,582 images): SBD's ``.mat`` masks converted to
VOC-style PNGs, the split that leaves VOC val out, and `VOCAugDataset` reading the result.

`convert_sbd` reads SBD (``benchmark_RELEASE/dataset/{cls/*.mat,train.txt,val.txt}``) and VOC
2012 (``VOCdevkit/VOC2012``) and writes a new folder, never into its inputs::

    <out>/SegmentationClassAug/<name>.png     trainaug + val masks (palette PNG, 255 = border)
    <out>/ImageSets/Segmentation/{trainaug,val}.txt
    <out>/JPEGImages -> <VOCdevkit>/VOC2012/JPEGImages   (a link: the images are not copied)

trainaug = (VOC train | SBD train | SBD val) - VOC val. A name with a VOC mask (VOC train) keeps
it (VOC's masks are finer and mark object borders 255); the others come from SBD's
``GTcls.Segmentation``. The split files are written last: a folder without ``trainaug.txt`` is
an unfinished conversion.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from segkit.data.arguments import voc_palette
from segkit.data.io import read_mask, read_split_file
from segkit.data.layout import LayoutError, listing
from segkit.data.voc import VOCDataset
from segkit.errors import DataError

log = logging.getLogger("segkit.data")

MASK_DIR = "SegmentationClassAug"
SPLIT_DIR = "ImageSets/Segmentation"
CONVERT = "python scripts/convert_sbd.py <benchmark_RELEASE> <VOCdevkit> <out>"


def read_sbd_mat(path: str | Path) -> np.ndarray:
    """(H,W) uint8 class ids 0..20 of an SBD ``cls/<name>.mat`` (its ``GTcls.Segmentation``)."""
    try:
        from scipy.io import loadmat  # optional extra: only the conversion reads .mat files
    except ImportError as e:
        raise DataError("reading SBD .mat files needs scipy: pip install 'segkit[sbd]'") from e
    try:
        gt = loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"]
        seg = np.asarray(gt.Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise DataError(f"{path}: not an SBD GTcls .mat file ({e})") from e
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 20:
        raise DataError(f"{path}: GTcls.Segmentation is not an (H,W) map of ids 0..20")
    return seg.astype(np.uint8)


def trainaug_names(
    voc_train: list[str], voc_val: list[str], sbd_train: list[str], sbd_val: list[str]
) -> list[str]:
    """The standard trainaug split: every annotated name of VOC train and SBD, minus VOC val."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def _palette_png(ids: np.ndarray, dst: Path) -> None:
    image = Image.fromarray(ids)  # mode L; putpalette makes it P and keeps the values
    flat = [v for colour in voc_palette(256) for v in colour]
    flat[-3:] = [224, 224, 192]  # VOC's border colour for 255
    image.putpalette(flat)
    tmp = dst.with_suffix(".tmp.png")
    image.save(tmp)
    os.replace(tmp, dst)  # an interrupted conversion leaves no half-written mask


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _inputs(sbd_root: Path, voc_root: Path) -> tuple[Path, Path]:
    """(SBD's dataset/ folder, VOC2012/) of the two roots (their parents also accepted)."""
    sbd = next((p for p in (sbd_root / "dataset", sbd_root) if (p / "cls").is_dir()), None)
    voc = next((p for p in (voc_root / "VOC2012", voc_root) if (p / SPLIT_DIR).is_dir()), None)
    if sbd is None:
        raise DataError(
            f"{sbd_root}: no SBD cls/ folder (holds {listing(sbd_root)}); pass the "
            "benchmark_RELEASE folder of benchmark.tgz"
        )
    if voc is None:
        raise DataError(
            f"{voc_root}: no VOC2012/{SPLIT_DIR} (holds {listing(voc_root)}); pass the "
            "VOCdevkit folder of VOCtrainval_11-May-2012.tar"
        )
    return sbd, voc


def convert_sbd(sbd_root: str | Path, voc_root: str | Path, out: str | Path) -> dict[str, int]:
    """Write the trainaug dataset to ``out`` (see the module docstring); -> samples per split.
    DataError when an input is missing or ``out`` lies inside an input folder."""
    roots = Path(sbd_root).expanduser(), Path(voc_root).expanduser()
    sbd, voc = _inputs(*roots)
    out = Path(out).expanduser()
    for folder in roots:
        if _inside(out, folder):
            raise DataError(f"out={out} is inside the input {folder}; choose a new folder")
    voc_split = voc / SPLIT_DIR
    voc_train, voc_val = (read_split_file(voc_split / f"{s}.txt") for s in ("train", "val"))
    sbd_train, sbd_val = (read_split_file(sbd / f"{s}.txt") for s in ("train", "val"))
    splits = {"trainaug": trainaug_names(voc_train, voc_val, sbd_train, sbd_val), "val": voc_val}
    _write_masks(sorted(set(splits["trainaug"]) | set(voc_val)), sbd, voc, out / MASK_DIR)
    link = out / "JPEGImages"
    if not link.exists():
        link.symlink_to((voc / "JPEGImages").resolve(), target_is_directory=True)
    (out / SPLIT_DIR).mkdir(parents=True, exist_ok=True)
    for split, names in splits.items():
        (out / SPLIT_DIR / f"{split}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return {split: len(names) for split, names in splits.items()}


def _write_masks(names: list[str], sbd: Path, voc: Path, out: Path) -> None:
    """One palette PNG per name: VOC's own mask where it has one, else SBD's .mat."""
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        voc_mask = voc / "SegmentationClass" / f"{name}.png"
        if voc_mask.is_file():
            ids = read_mask(voc_mask)
        else:
            ids = read_sbd_mat(sbd / "cls" / f"{name}.mat")
        _palette_png(ids, out / f"{name}.png")
        if (i + 1) % 1000 == 0:
            log.info("%d of %d masks written", i + 1, len(names))


def check_converted(root: str | Path) -> None:
    """LayoutError unless ``root`` is `convert_sbd`'s output: ``unconverted_sbd`` when it is
    the SBD or VOC folder itself (or an unfinished conversion), else ``wrong_root``."""
    root = Path(root).expanduser()
    if (root / SPLIT_DIR / "trainaug.txt").is_file() and (root / MASK_DIR).is_dir():
        return
    raw_sbd = (root / "dataset" / "cls").is_dir() or (root / "cls").is_dir()
    raw_voc = (root / "VOC2012").is_dir() or (root / "SegmentationClass").is_dir()
    if raw_sbd or raw_voc or (root / MASK_DIR).is_dir():
        what = "SBD" if raw_sbd else "VOC" if raw_voc else "an unfinished conversion's"
        raise LayoutError(
            "unconverted_sbd",
            f"dataset.root={root} is {what} folder, not the converted trainaug set (no "
            f"{SPLIT_DIR}/trainaug.txt). Fix: {CONVERT}, then dataset.root=<out>",
        )
    raise LayoutError(
        "wrong_root",
        f"dataset.root={root} holds {listing(root)}, not the trainaug set ({MASK_DIR}/, "
        f"{SPLIT_DIR}/trainaug.txt, JPEGImages/). Fix: set dataset.root to the output folder "
        f"of {CONVERT}",
    )


class VOCAugDataset(VOCDataset):
    """The output folder of `convert_sbd` (splits trainaug, val): a `VOCDataset` whose root
    is that folder, masks from SegmentationClassAug. Keyword arguments as VOCDataset's."""

    def __init__(self, root: str | Path, split: str, **kwargs):
        check_converted(root)
        kwargs.setdefault("mask_dir", MASK_DIR)
        super().__init__(root, split, **kwargs)
