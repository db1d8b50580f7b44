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
- ``cityscapes``: Cityscapes read in place, labelIds -> the 19 trainIds by the official table;
- ``ade20k``: ADE20K SceneParsing read in place (150 classes, ``reduce_zero_label``);
- ``voc_aug``: VOC 2012 + SBD trainaug: the SBD ``.mat`` converter, the split, the dataset;
- ``coco_stuff``: COCO-Stuff 164k read in place, the 182 -> 171 id map and names;
- ``layout``: the public datasets' layout checks, one message with the fix per broken layout;
- ``demo``: the embedded synthetic demo dataset;
- ``arguments``: the dataset's constructor arguments, checked;
- ``original_size``: validation samples with their masks at the original resolution;
- ``doctor``: every problem of a train/val pair at once (``scripts/check_dataset.py``);
- ``problems``: what a check can find, in words, with the fix per kind;
- ``stats``: class pixel statistics and class weights.
"""

from segkit.data.ade20k import ADE20KDataset
from segkit.data.arguments import voc_palette
from segkit.data.augment import get_random_data
from segkit.data.base import LabelSpace, SegmentationDataset
from segkit.data.cityscapes import CityscapesDataset
from segkit.data.coco_stuff import COCOStuffDataset
from segkit.data.demo import DemoDataset, make_demo_dataset
from segkit.data.folder import FolderDataset
from segkit.data.io import encode_mask, read_image, read_mask, read_split_file
from segkit.data.transforms import letterbox, normalize
from segkit.data.voc import UnetDataset, VOCDataset
from segkit.data.voc_aug import VOCAugDataset
from segkit.errors import DataError

__all__ = [
    "ADE20KDataset",
    "COCOStuffDataset",
    "CityscapesDataset",
    "DataError",
    "DemoDataset",
    "FolderDataset",
    "LabelSpace",
    "SegmentationDataset",
    "UnetDataset",
    "VOCAugDataset",
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
