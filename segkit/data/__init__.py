"""Data: file reading, transforms, the segmentation datasets (VOC layout, folders, demo).

Checks before training are in `segkit.data.doctor`, class statistics and weights in
`segkit.data.stats`.
"""

from segkit.data.arguments import voc_palette
from segkit.data.base import LabelSpace, SegmentationDataset
from segkit.data.demo import DemoDataset, make_demo_dataset
from segkit.data.folder import FolderDataset
from segkit.data.io import encode_mask, read_image, read_mask, read_split_file
from segkit.data.transforms import get_random_data, letterbox, normalize
from segkit.data.voc import UnetDataset, VOCDataset
from segkit.errors import DataError

__all__ = [
    "DataError",
    "DemoDataset",
    "FolderDataset",
    "LabelSpace",
    "SegmentationDataset",
    "UnetDataset",
    "VOCDataset",
    "encode_mask",
    "get_random_data",
    "letterbox",
    "make_demo_dataset",
    "normalize",
    "read_image",
    "read_mask",
    "read_split_file",
    "voc_palette",
]
