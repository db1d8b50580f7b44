"""Cityscapes read in place: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
``gtFine/<split>/<city>/*_gtFine_labelIds.png`` (or ``gtCoarse``), labelIds -> the 19 trainIds.

`LABELS` is the official table of ``cityscapesscripts/helpers/labels.py`` (name, id, trainId,
colour) for the ids a labelIds PNG can hold (0..33; "license plate", id -1, is never drawn).
Where every sample of a split has a ``*_labelTrainIds.png`` (``createTrainIdLabelImgs``), those
are read as they are.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from segkit.data.base import SegmentationDataset
from segkit.data.layout import LayoutError, find_root, missing_labels, split_folder
from segkit.errors import ConfigError

log = logging.getLogger("segkit.data")


class Label(NamedTuple):
    name: str
    id: int  # the value in *_labelIds.png
    train_id: int  # 255: ignored
    color: tuple[int, int, int]


LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
)
TRAIN_LABELS = sorted((lb for lb in LABELS if lb.train_id != 255), key=lambda lb: lb.train_id)
CLASSES = [lb.name for lb in TRAIN_LABELS]  # the 19 evaluated classes, by trainId
PALETTE = [list(lb.color) for lb in TRAIN_LABELS]
MAX_LABEL_ID = max(lb.id for lb in LABELS)

ANNOTATIONS = ("gtFine", "gtCoarse")
SPLITS = {"gtFine": ("train", "val", "test"), "gtCoarse": ("train", "train_extra", "val")}
IMAGE_SUFFIX = "_leftImg8bit.png"
TREE = (
    "  <dataset.root>/\n"
    "    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
    "    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png\n"
    "    gtCoarse/{train,train_extra,val}/<city>/..._gtCoarse_labelIds.png  (optional)"
)


def label_id_map(ignore_index: int = 255) -> dict[int, int]:
    """labelId -> trainId for every id 0..33 (ignored ids -> ``ignore_index``)."""
    return {lb.id: ignore_index if lb.train_id == 255 else lb.train_id for lb in LABELS}


def city_pairs(image_city: Path, label_city: Path, annotation: str, kind: str) -> list:
    """(image, mask) paths of one city folder; ``kind`` is labelIds or labelTrainIds."""
    stems = sorted(p.name[: -len(IMAGE_SUFFIX)] for p in image_city.glob(f"*{IMAGE_SUFFIX}"))
    return [
        (str(image_city / f"{s}{IMAGE_SUFFIX}"), str(label_city / f"{s}_{annotation}_{kind}.png"))
        for s in stems
    ]


class CityscapesDataset(SegmentationDataset):
    """Cityscapes as unpacked from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip
    (``annotation="gtCoarse"``: gtCoarse.zip, splits train / train_extra / val).

    Masks: ``*_labelTrainIds.png`` where every sample of the split has one, else
    ``*_labelIds.png`` through `label_id_map`. class_names / palette / label_map default to the
    official ones. The remaining keyword arguments go to SegmentationDataset.
    """

    def __init__(self, root: str | Path, split: str, *, annotation: str = "gtFine", **common):
        if annotation not in ANNOTATIONS:
            raise ConfigError(f"dataset.annotation={annotation!r}: expected one of {ANNOTATIONS}")
        top = find_root(root, ["leftImg8bit", annotation], "Cityscapes", TREE)
        fix = f"unpack {annotation} of the '{split}' split into {top} (docs/datasets.md)"
        images = split_folder(top / "leftImg8bit" / split, split, SPLITS[annotation], fix)
        labels = top / annotation / split
        files, self.train_ids = self._pairs(images, labels, annotation)
        if not files:
            raise LayoutError(
                "missing_split", f"{images} holds no city folder with *{IMAGE_SUFFIX} files"
            )
        common["class_names"] = common.get("class_names") or CLASSES
        common["palette"] = common.get("palette") or PALETTE
        if not self.train_ids and not common.get("label_map"):
            common["label_map"] = label_id_map(common.get("ignore_index", 255))
        self.root, self.split, self.annotation = top, split, annotation
        super().__init__(files, **common)

    @staticmethod
    def _pairs(images: Path, labels: Path, annotation: str) -> tuple[list, bool]:
        """Pairs of every city, and whether they are labelTrainIds files; a city without any
        label file is a LayoutError naming it."""
        cities = sorted(p for p in images.iterdir() if p.is_dir())
        train_ids = [city_pairs(c, labels / c.name, annotation, "labelTrainIds") for c in cities]
        if all(Path(m).is_file() for pairs in train_ids for _, m in pairs):
            return [p for pairs in train_ids for p in pairs], True
        if any(Path(m).is_file() for pairs in train_ids for _, m in pairs):
            log.info("%s: some *_labelTrainIds.png missing; reading *_labelIds.png", labels)
        files = []
        for city in cities:
            pairs = city_pairs(city, labels / city.name, annotation, "labelIds")
            fix = (
                f"unpack the {annotation} archive (it holds {annotation}/{labels.name}/"
                f"{city.name}/) into {labels.parent.parent}, or move {city} out of the split"
            )
            error = missing_labels(pairs, city, fix)
            if error is not None:
                raise error
            files += pairs
        return files, False

    def encode(self, raw: np.ndarray, path: str = "") -> np.ndarray:
        """labelIds -> trainIds; values above 33 in a labelIds file mean it holds something
        else (trainIds written over it): mapping them again would mislabel silently."""
        if not self.train_ids and raw.ndim == 2 and raw.size and int(raw.max()) > MAX_LABEL_ID:
            found = sorted(int(v) for v in np.unique(raw) if v > MAX_LABEL_ID)
            raise LayoutError(
                "converted_label_ids",
                f"{path} holds values {found[:8]}, but labelIds go up to {MAX_LABEL_ID}: the file "
                "was already converted (trainIds, 255 = ignore). Fix: restore the original "
                "*_labelIds.png, or save converted masks as *_labelTrainIds.png (read as they are)",
            )
        return super().encode(raw, path)
