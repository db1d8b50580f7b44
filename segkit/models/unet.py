"""UNet with a plain, VGG16 or any torchvision CNN encoder (the bubbliiiing/unet-pytorch lineage).

Encoder -> one feature map per output stride; decoder: upsample, concatenate the skip, two 3x3
convs, once per skip; when the shallowest map is not at full resolution (stride 2 for ResNet,
4 for ConvNeXt) one more upsampling stage; a final 1x1 conv to class logits. Inputs of any
size work: the image is zero-padded at the bottom/right to the encoder's total stride (16 for
plain / VGG16, 32 for the torchvision CNNs) and the logits are cropped back, so ``out`` always
has the input's H and W. The padding amounts are computed from the shape every time (no Python
test of the size), so a traced or ``torch.export``-ed model is right at every size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.errors import ConfigError
from segkit.models.backbones import check_encoder_name, load_encoder_weights, vgg16_features
from segkit.models.blocks import (
    ConvBNReLU,
    SegmentationModel,
    check_input,
    init_conv_weights,
)
from segkit.models.encoders import TIMM_PREFIX, TimmEncoder, TorchvisionEncoder

__all__ = ["TorchvisionEncoder", "UNet"]  # TorchvisionEncoder: its old home

_OWN_ENCODERS = ("plain", "vgg16")


class DoubleConv(nn.Sequential):
    """Two 3x3 convs + ReLU; with BatchNorm (plain UNet) or with bias only (bubbliiiing)."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True) -> None:
        if norm:
            super().__init__(
                ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels)
            )
        else:
            super().__init__(
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(out_channels, out_channels, 3, padding=1),
                nn.ReLU(inplace=True),
            )


class PlainEncoder(nn.Module):
    """Ronneberger's down path with BatchNorm: widths ``base * (1, 2, 4, 8, 16)``, strides
    ``(1, 2, 4, 8, 16)``."""

    multiple = 16
    strides = [1, 2, 4, 8, 16]

    def __init__(self, in_channels: int, base_channels: int) -> None:
        super().__init__()
        self.channels = [base_channels * 2**i for i in range(5)]
        self.inc = DoubleConv(in_channels, self.channels[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_out))
            for c_in, c_out in zip(self.channels[:-1], self.channels[1:])
        )
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.inc(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats


class VGG16Encoder(nn.Module):
    """torchvision VGG16 ``features[:30]``, tapped before each max-pool (bubbliiiing's
    feat1..feat5): channels ``(64, 128, 256, 512, 512)``, strides ``(1, 2, 4, 8, 16)``."""

    multiple = 16
    channels = [64, 128, 256, 512, 512]
    strides = [1, 2, 4, 8, 16]
    _taps = (3, 8, 15, 22, 29)  # ReLU outputs right before the pools at 4, 9, 16, 23

    def __init__(
        self, in_channels: int, pretrained: bool, weights_path: str | None, weights_tag: str | None
    ) -> None:
        super().__init__()
        self.features = vgg16_features(
            pretrained=pretrained,
            weights_path=weights_path,
            in_channels=in_channels,
            weights_tag=weights_tag,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                feats.append(x)
        return feats


class UpBlock(nn.Module):
    """bubbliiiing's ``unetUp``: upsample the deeper map to the skip's size, concat, 2 convs."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, norm)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # always resized (never a Python test of the size, see pad_to_stride)
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, up], dim=1))


class UNet(SegmentationModel):
    """UNet for semantic segmentation.

    Args:
        num_classes: output channels of ``out``.
        backbone: ``"plain"`` (BatchNorm everywhere, width ``base_channels``), ``"vgg16"``
            (bubbliiiing's VGG16, stride 16) or any torchvision classification CNN by name:
            ``resnet18`` ... ``resnet152``, ``resnext50_32x4d``, ``wide_resnet50_2``,
            ``mobilenet_v2``, ``mobilenet_v3_large|small``, ``efficientnet_b0`` ... ``b7``,
            ``efficientnet_v2_s|m|l``, ``regnet_[xy]_*``, ``convnext_tiny|small|base|large``,
            ``vgg11|13|19[_bn]``, ``vgg16_bn``, ``shufflenet_v2_*``, ``mnasnet*`` (see
            `segkit.models.backbones.encoder_names`), or ``tu-<timm name>`` (any timm model
            with ``features_only``; the ``segkit[timm]`` extra). Non-plain encoders get
            bubbliiiing's decoder without BatchNorm.
        base_channels: width of the plain UNet's first stage (ignored by the other backbones).
        pretrained: load ImageNet encoder weights (torch hub cache or ``weights_path``; never
            downloads). The plain encoder has no public weights and needs ``weights_path``.
        weights_path: local encoder state dict; read only when ``pretrained``.
        weights_tag: which member of torchvision's weights enum the encoder loads
            (``IMAGENET1K_V1``, ``IMAGENET1K_V2`` where published, ``DEFAULT``); None:
            ``IMAGENET1K_V1`` where torchvision has it, else ``DEFAULT``.
        in_channels: input channels; when not 3 the stem's RGB weights are adapted (sum over
            RGB for 1 channel, tiled and scaled by 3 / k for k channels).
        decoder_channels: widths of the decoder stages, shallow to deep, one per skip
            (``len(strides) - 1``); default: the plain encoder's own widths, else
            ``64, 128, 256, 512`` (capped at 512) as in bubbliiiing.

    ``forward(x: (N, in_channels, H, W) float) -> {"out": (N, num_classes, H, W) logits}``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "plain",
        base_channels: int = 32,
        pretrained: bool = False,
        weights_path: str | None = None,
        in_channels: int = 3,
        weights_tag: str | None = None,
        decoder_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = _build_encoder(
            backbone, base_channels, pretrained, weights_path, in_channels, weights_tag
        )
        enc, norm = self.encoder.channels, backbone == "plain"
        dec = _decoder_widths(enc, norm, decoder_channels)
        last = len(dec) - 1
        self.ups = nn.ModuleList(
            UpBlock(enc[i] + (enc[i + 1] if i == last else dec[i + 1]), dec[i], norm)
            for i in range(len(dec))
        )
        # The shallowest map at stride s > 1 (ResNet 2, ConvNeXt 4): upsample by s to full size.
        first = self.encoder.strides[0]
        self.up_conv = None
        if first > 1:
            self.up_conv = nn.Sequential(
                nn.Upsample(scale_factor=first, mode="bilinear", align_corners=False),
                DoubleConv(dec[0], dec[0], norm),
            )
        self.classifier = nn.Conv2d(dec[0], num_classes, 1)
        for module in (self.ups, self.up_conv, self.classifier):
            if module is not None:
                init_conv_weights(module)  # encoders init themselves (or hold ImageNet weights)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(x, self.in_channels, "UNet")
        # always padded (by 0 when aligned) and cropped: exports stay right at every size
        h, w = x.shape[-2:]
        x = pad_to_stride(x, self.encoder.multiple)
        feats = self.encoder(x)
        y = feats[-1]
        for i in reversed(range(len(self.ups))):
            y = self.ups[i](feats[i], y)
        if self.up_conv is not None:
            y = self.up_conv(y)
        return {"out": crop_to(self.classifier(y), h, w)}


def pad_to_stride(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` at the bottom/right to ``ceil(H / m) * m`` by ``ceil(W / m) * m``.

    Always padded (by 0 when aligned), never a Python test of the size. Written as
    ``ceil(H / m) * m - H`` rather than ``-H % m``: the same numbers, but ``torch.export``
    derives the padded size's range (e.g. >= 2m for H > m) and so needs no guard on it. Zero
    padding works for any size; on normalised inputs zero is the dataset mean colour.
    """
    h, w = x.shape[-2:]
    pad_h = (h + multiple - 1) // multiple * multiple - h
    pad_w = (w + multiple - 1) // multiple * multiple - w
    return F.pad(x, (0, pad_w, 0, pad_h))


def crop_to(x: torch.Tensor, h: int | torch.SymInt, w: int | torch.SymInt) -> torch.Tensor:
    """The top-left ``(h, w)`` of ``(N, C, H, W)`` (``h <= H``, ``w <= W``), as a new tensor.

    A negative ``F.pad`` rather than ``x[..., :h, :w]``: the slice is a strided view whose
    contiguity ``torch.export`` can only decide by guarding on ``W == w`` (true at some sizes,
    not at others), which fails a dynamic-shape export; the pad has no such branch.
    """
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def _decoder_widths(
    enc: Sequence[int], norm: bool, decoder_channels: Sequence[int] | None
) -> list[int]:
    """One decoder width per skip connection (all encoder maps but the deepest)."""
    n = len(enc) - 1
    if decoder_channels is None:
        return list(enc[:n]) if norm else [min(64 * 2**i, 512) for i in range(n)]
    widths = [int(c) for c in decoder_channels]
    if len(widths) != n or min(widths) < 1:
        raise ConfigError(
            f"model.decoder_channels={list(decoder_channels)}: this encoder gives {len(enc)} "
            f"feature maps, hence {n} skip connections: give {n} positive widths, shallow to "
            "deep, or null for the default"
        )
    return widths


def _build_encoder(
    backbone: str,
    base_channels: int,
    pretrained: bool,
    weights_path: str | None,
    in_ch: int,
    weights_tag: str | None,
) -> nn.Module:
    if backbone.startswith(TIMM_PREFIX):
        return TimmEncoder(backbone, in_ch, pretrained, weights_path)
    check_encoder_name(backbone, _OWN_ENCODERS)
    if backbone == "vgg16":
        return VGG16Encoder(in_ch, pretrained, weights_path, weights_tag)
    if backbone != "plain":
        return TorchvisionEncoder(backbone, in_ch, pretrained, weights_path, weights_tag)
    encoder = PlainEncoder(in_ch, base_channels)
    if pretrained:
        load_encoder_weights(encoder, weights_path, "plain UNet")
    return encoder
