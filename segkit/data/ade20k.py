"""ADE20K (the SceneParsing benchmark, ADEChallengeData2016) read in place:
``images/{training,validation}/*.jpg`` with ``annotations/{training,validation}/*.png``.

Annotation values are 0 ("other", not evaluated) and 1..150; with ``reduce_zero_label`` (the
config sets it) 0 is ignored and v becomes class v - 1. `CLASSES` are the first names of the
benchmark's ``objectInfo150.csv`` in id order.
"""

from __future__ import annotations

from pathlib import Path

from segkit.data.base import SegmentationDataset
from segkit.data.layout import find_root, images_annotations_pairs

CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip
SPLITS = {"train": "training", "val": "validation"}  # segkit's split name -> folder
TREE = (
    "  <dataset.root>/                 (ADEChallengeData2016)\n"
    "    images/{training,validation}/ADE_<split>_<n>.jpg\n"
    "    annotations/{training,validation}/ADE_<split>_<n>.png"
)


class ADE20KDataset(SegmentationDataset):
    """ADEChallengeData2016 as unpacked from ADEChallengeData2016.zip; ``split`` is train / val
    (or the folder names training / validation). class_names default to `CLASSES`; the
    remaining keyword arguments go to SegmentationDataset."""

    def __init__(self, root: str | Path, split: str, **common):
        top = find_root(root, ["images", "annotations"], "ADEChallengeData2016", TREE)
        folder = SPLITS.get(split, split)
        fix = f"unpack ADEChallengeData2016.zip whole into {top.parent} (docs/datasets.md)"
        files = images_annotations_pairs(top, folder, list(SPLITS), (".jpg", ".png"), fix)
        common["class_names"] = common.get("class_names") or CLASSES
        self.root, self.split = top, split
        super().__init__(files, **common)
