"""DeepLabV3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution", ECCV 2018).

Encoder (any torchvision CNN, dilated to output stride 16 or 8, or a ``tu-`` timm encoder)
-> ASPP on the deepest map (a 1x1 branch, three atrous 3x3 branches, image pooling; projected
to 256) -> upsampled to the stride-4 map, concatenated with its 48-channel projection, one 3x3
conv -> 1x1 classifier at stride 4 -> bilinear to the input size. Separable (depthwise +
pointwise) 3x3 convs by default, as in the paper's Xception model, segmentation_models.pytorch
and MMSegmentation; ``segkit.models.weight_names.smp_deeplabv3plus`` maps SMP's parameter
names to these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.errors import ConfigError
from segkit.models.backbones import check_encoder_name
from segkit.models.blocks import (
    ConvBNReLU,
    SegmentationModel,
    check_input,
    check_train_batch,
    init_conv_weights,
)
from segkit.models.encoders import TIMM_PREFIX, TimmEncoder, TorchvisionEncoder
from segkit.models.unet import crop_to, pad_to_stride

__all__ = ["ASPP", "DeepLabV3Plus", "SeparableConvBNReLU"]

# the paper's rates: output stride 16 -> (6, 12, 18); 8 -> twice those; 32 -> half
_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


class SeparableConvBNReLU(nn.Module):
    """Depthwise ``k x k`` (dilated) conv -> pointwise 1x1 conv -> bn -> relu, no biases."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=dilation, dilation=dilation,
            groups=in_channels, bias=False,
        )  # fmt: skip
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.pointwise(self.depthwise(x))))


def _conv3x3(in_channels: int, out_channels: int, dilation: int, separable: bool) -> nn.Module:
    if separable:
        return SeparableConvBNReLU(in_channels, out_channels, dilation)
    return ConvBNReLU(in_channels, out_channels, 3, dilation=dilation)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``(N, C_in, h, w) -> (N, channels, h, w)``.

    Branches: a 1x1 conv, one 3x3 conv per rate in ``rates`` and the image-pooling branch (the
    global mean, a 1x1 conv, spread back over ``h x w``), concatenated and projected by a 1x1
    conv, then dropout.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        rates: Sequence[int],
        *,
        separable: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(in_channels, channels, 1)])
        self.branches.extend(_conv3x3(in_channels, channels, r, separable) for r in rates)
        self.pooling = ConvBNReLU(in_channels, channels, 1)
        self.project = ConvBNReLU((len(rates) + 2) * channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = self.pooling(x.mean((2, 3), keepdim=True)).expand(-1, -1, h, w)
        y = torch.cat([b(x) for b in self.branches] + [pooled], dim=1)
        return self.dropout(self.project(y))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deep map, fused with the stride-4 map: ``(deep, low) -> (N, channels, *low)``."""

    def __init__(
        self,
        deep_channels: int,
        low_channels: int,
        channels: int,
        rates: Sequence[int],
        *,
        low_level_channels: int = 48,
        separable: bool = True,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(deep_channels, channels, rates, separable=separable, dropout=dropout)
        self.aspp_conv = _conv3x3(channels, channels, 1, separable)
        self.low_level = ConvBNReLU(low_channels, low_level_channels, 1)
        self.fuse = _conv3x3(channels + low_level_channels, channels, 1, separable)
        self.align_corners = align_corners

    def forward(self, deep: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        y = self.aspp_conv(self.aspp(deep))
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.fuse(torch.cat([y, self.low_level(low)], dim=1))


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ on any segkit encoder.

    Args:
        num_classes: output channels of ``out``.
        backbone: a torchvision CNN by name (``resnet50``, ``resnet101``, ``mobilenet_v3_large``,
            ``efficientnet_b0``, ``regnet_y_400mf``, ... as for `segkit.models.UNet`) or
            ``tu-<timm name>`` (the ``segkit[timm]`` extra).
        output_stride: 16 (the paper's training setting) or 8 (finer, ~4x the encoder's late
            FLOPs): the encoder's stages past it are dilated. 32: no dilation (encoders that
            downsample with 2x2 convs or pooling, e.g. torchvision's ConvNeXt).
        atrous_rates: the ASPP's three 3x3 dilations; None: (6, 12, 18) at output stride 16,
            (12, 24, 36) at 8.
        decoder_channels: width of the ASPP and the decoder (256 in the paper).
        low_level_channels: width the stride-4 map is projected to (48 in the paper).
        separable: depthwise-separable 3x3 convs in the ASPP and decoder (paper, SMP, mmseg).
        dropout: after the ASPP projection.
        align_corners: of the two bilinear upsamplings. True reproduces SMP's and the TF
            original's resampling (their trained weights then give their exact outputs).
        pretrained, weights_path, weights_tag, in_channels: as for `segkit.models.UNet`.

    ``forward(x: (N, in_channels, H, W) float) -> {"out": (N, num_classes, H, W) logits}``;
    any H and W (zero-padded to the encoder's output stride, cropped back). Training needs a
    batch of at least 2 (the image-pooling branch normalises 1x1 maps).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        output_stride: int = 16,
        atrous_rates: Sequence[int] | None = None,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        separable: bool = True,
        dropout: float = 0.1,
        align_corners: bool = False,
        pretrained: bool = False,
        weights_path: str | None = None,
        weights_tag: str | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if output_stride not in _RATES:
            raise ConfigError(f"model.output_stride={output_stride}: choose 16, 8 or 32")
        self.in_channels = in_channels
        self.encoder = _build_encoder(
            backbone, in_channels, pretrained, weights_path, weights_tag, output_stride
        )
        self.low_index = _stride4_index(self.encoder.strides, backbone)
        rates = _RATES[output_stride] if atrous_rates is None else tuple(atrous_rates)
        self.decoder = DeepLabV3PlusDecoder(
            self.encoder.channels[-1],
            self.encoder.channels[self.low_index],
            decoder_channels,
            rates,
            low_level_channels=low_level_channels,
            separable=separable,
            dropout=dropout,
            align_corners=align_corners,
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.align_corners = align_corners
        init_conv_weights(self.decoder)
        init_conv_weights(self.classifier)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(x, self.in_channels, "DeepLabV3Plus")
        check_train_batch(self, x)
        h, w = x.shape[-2:]
        x = pad_to_stride(x, self.encoder.multiple)  # always (by 0 when aligned): exports
        feats = self.encoder(x)
        logits = self.classifier(self.decoder(feats[-1], feats[self.low_index]))
        logits = F.interpolate(
            logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )
        return {"out": crop_to(logits, h, w)}


def _stride4_index(strides: Sequence[int], backbone: str) -> int:
    if 4 not in strides:
        raise ConfigError(
            f"model.backbone={backbone!r} gives maps at strides {list(strides)}; DeepLabV3+ "
            "needs one at stride 4 for its decoder"
        )
    return list(strides).index(4)


def _build_encoder(
    backbone: str,
    in_channels: int,
    pretrained: bool,
    weights_path: str | None,
    weights_tag: str | None,
    output_stride: int,
) -> nn.Module:
    if backbone.startswith(TIMM_PREFIX):
        return TimmEncoder(backbone, in_channels, pretrained, weights_path, output_stride)
    check_encoder_name(backbone)
    return TorchvisionEncoder(
        backbone, in_channels, pretrained, weights_path, weights_tag, output_stride
    )
