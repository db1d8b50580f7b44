"""Data: file reading, transforms, the segmentation datasets, and their checks.

- ``io``: reading images, masks and split files; raw masks -> class ids; listing inputs;
- ``transforms``: image/mask primitives (resize, flip, paste, letterbox), uint8 -> tensors;
- ``augment``: ``dataset.augment`` step lists -> checked pipelines; the default list;
- ``geometric_steps``: resize, crop, flip, rotation and letterbox steps;
- ``pixel_steps``: colour, photometric distortion, blur, noise, cutout and copy-paste steps;
- ``torchvision_steps``: ``torchvision.transforms.v2`` transforms as steps, mask-checked;
- ``base``: ``SegmentationDataset`` and its ``LabelSpace``;
- ``voc``: the VOC layout (``VOCDataset``, the notes' ``UnetDataset``);
- ``folder``: images and masks read in place from two folders;
- ``demo``: the embedded synthetic demo dataset;
- ``arguments``: the dataset's constructor arguments, checked;
- ``original_size``: validation samples with their masks at the original resolution;
- ``doctor``: every problem of a train/val pair at once (``scripts/check_dataset.py``);
- ``problems``: what a check can find, in words, with the fix per kind;
- ``stats``: class pixel statistics and class weights.
"""

from segkit.data.arguments import voc_palette
from segkit.data.augment import get_random_data
from segkit.data.base import LabelSpace, SegmentationDataset
from segkit.data.demo import DemoDataset, make_demo_dataset
from segkit.data.folder import FolderDataset
from segkit.data.io import encode_mask, read_image, read_mask, read_split_file
from segkit.data.transforms import letterbox, normalize
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
