"""Segmentation models. Each is a plain class named by ``_target_`` in ``conf/model/*.yaml``.

All return ``{"out": (N, C, H, W) logits}`` plus ``"aux"`` (training only, models with aux
heads); see `segkit.models.blocks.SegmentationModel` for the freeze API. No config code lives
here: ``segkit.run`` builds models from their configs.

- ``blocks``: ``SegmentationModel`` (the contract, freezing) and shared conv blocks;
- ``backbones``: torchvision encoders with their feature taps, and STDC's backbone;
- ``unet``: UNet on any encoder;
- ``encoders``: multi-scale encoders: torchvision CNNs (dilated on request) and timm's;
- ``deeplabv3plus``: DeepLabV3+ (ASPP and the low-level decoder) on any encoder;
- ``mix_transformer``: SegFormer's Mix Transformer encoder, MiT-B0 to B5;
- ``segformer``: SegFormer (MiT and the all-MLP decoder), offline ImageNet MiT weights;
- ``weight_names``: parameter names of published checkpoints (official, HF, SMP) -> segkit's;
- ``bisenetv1``, ``bisenetv2``: BiSeNet V1 and V2;
- ``stdc``: STDC-Seg.
"""

from segkit.models.bisenetv1 import BiSeNetV1
from segkit.models.bisenetv2 import BiSeNetV2
from segkit.models.blocks import SegmentationModel
from segkit.models.deeplabv3plus import DeepLabV3Plus
from segkit.models.segformer import SegFormer
from segkit.models.stdc import STDCSeg
from segkit.models.unet import UNet

__all__ = [
    "BiSeNetV1",
    "BiSeNetV2",
    "DeepLabV3Plus",
    "STDCSeg",
    "SegFormer",
    "SegmentationModel",
    "UNet",
]
