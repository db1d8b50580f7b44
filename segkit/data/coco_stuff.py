"""COCO-Stuff 164k read in place: ``images/{train2017,val2017}/*.jpg`` (COCO 2017) with
``annotations/{train2017,val2017}/*.png`` (stuffthingmaps_trainval2017.zip).

The maps hold COCO-Stuff id - 1: 0..90 things (COCO's 91 thing ids, 11 of them never used),
91..181 stuff, 255 unlabeled. `label_map` keeps the 171 used ids, in order, as classes 0..170
(the 11 unused values are ignored); `CLASSES` are their names (cocostuff ``labels.txt``).
"""

from __future__ import annotations

from pathlib import Path

from segkit.data.base import SegmentationDataset
from segkit.data.layout import find_root, images_annotations_pairs

THINGS = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip
STUFF = [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]  # fmt: skip
CLASSES = THINGS + STUFF
# COCO thing ids (1-based) that no image is annotated with (COCO has 80 of its 91 in use)
UNUSED_THING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
NUM_IDS = 182  # COCO-Stuff ids 1..182 (183 "other" is 255 in the stuffthingmaps)
SPLITS = {"train": "train2017", "val": "val2017"}
TREE = (
    "  <dataset.root>/\n"
    "    images/{train2017,val2017}/<12-digit id>.jpg          (COCO train2017.zip, val2017.zip)\n"
    "    annotations/{train2017,val2017}/<12-digit id>.png     (stuffthingmaps_trainval2017.zip)"
)


def label_map(ignore_index: int = 255) -> dict[int, int]:
    """Map value (COCO-Stuff id - 1) -> class 0..170; the unused thing values -> ignore."""
    used = [i for i in range(1, NUM_IDS + 1) if i not in UNUSED_THING_IDS]
    table = {i - 1: ignore_index for i in UNUSED_THING_IDS}
    return table | {coco_id - 1: k for k, coco_id in enumerate(used)}


class COCOStuffDataset(SegmentationDataset):
    """COCO-Stuff 164k; ``split`` is train / val (or the folder names train2017 / val2017).
    class_names and label_map default to `CLASSES` and `label_map`; the remaining keyword
    arguments go to SegmentationDataset."""

    def __init__(self, root: str | Path, split: str, **common):
        top = find_root(root, ["images", "annotations"], "COCO-Stuff 164k", TREE)
        folder = SPLITS.get(split, split)
        fix = (
            f"unpack {folder}.zip into {top / 'images'} and stuffthingmaps_trainval2017.zip "
            f"into {top / 'annotations'} (docs/datasets.md)"
        )
        files = images_annotations_pairs(top, folder, list(SPLITS), (".jpg", ".png"), fix)
        common["class_names"] = common.get("class_names") or CLASSES
        common["label_map"] = common.get("label_map") or label_map(common.get("ignore_index", 255))
        self.root, self.split = top, split
        super().__init__(files, **common)
