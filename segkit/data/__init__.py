"""Data: file reading, transforms, the segmentation datasets (VOC layout, folders, demo)."""

from segkit.data.base import SegmentationDataset, unet_dataset_collate, voc_palette
from segkit.data.demo import DemoDataset, make_demo_dataset
from segkit.data.folder import FolderDataset
from segkit.data.io import DataError, encode_mask, read_image, read_mask, read_split_file
from segkit.data.transforms import get_random_data, letterbox, normalize
from segkit.data.voc import UnetDataset

__all__ = [
    "DataError",
    "DemoDataset",
    "FolderDataset",
    "SegmentationDataset",
    "UnetDataset",
    "encode_mask",
    "get_random_data",
    "letterbox",
    "make_demo_dataset",
    "normalize",
    "read_image",
    "read_mask",
    "read_split_file",
    "unet_dataset_collate",
    "voc_palette",
]
