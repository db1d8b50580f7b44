"""Segmentation losses: ``forward(outputs: dict | Tensor, target: (N,H,W) int64) -> scalar``.

- ``base``: ``SegLoss`` (main + aux heads), target checks, resizing logits to the target;
- ``ce``: cross-entropy with class weights and label smoothing;
- ``focal``: focal loss over the valid pixels;
- ``dice``: soft Dice;
- ``lovasz``: Lovasz-softmax, and cross-entropy + Lovasz;
- ``ohem``: online hard example mining cross-entropy;
- ``combo``: cross-entropy + Dice;
- ``detail``: STDC's detail-guidance loss combined with the others.
"""

from segkit.losses.base import SegLoss, check_target, resize_to_target
from segkit.losses.ce import CrossEntropyLoss
from segkit.losses.combo import CEDiceLoss
from segkit.losses.detail import (
    CEDetailLoss,
    CEDiceDetailLoss,
    CELovaszDetailLoss,
    OhemDetailLoss,
)
from segkit.losses.dice import DiceLoss
from segkit.losses.focal import FocalLoss
from segkit.losses.lovasz import CELovaszLoss, LovaszSoftmaxLoss
from segkit.losses.ohem import OhemCrossEntropyLoss

__all__ = [
    "CEDetailLoss",
    "CEDiceDetailLoss",
    "CEDiceLoss",
    "CELovaszDetailLoss",
    "CELovaszLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropyLoss",
    "OhemDetailLoss",
    "SegLoss",
    "check_target",
    "resize_to_target",
]
