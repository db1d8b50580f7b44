"""UNet with a plain, VGG16 or ResNet50 encoder (the bubbliiiing/unet-pytorch lineage).

Encoder -> five feature maps; decoder: upsample x2, concatenate the skip, two 3x3 convs, four
times; final 1x1 conv to class logits. Inputs of any size work: the image is zero-padded at the
bottom/right to the encoder's total stride (16 for plain / VGG16, 32 for ResNet50) and the logits
are cropped back, so ``out`` always has the input's H and W.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from segkit.models.backbones import load_encoder_weights, resnet, vgg16_features
from segkit.models.blocks import (
    ConvBNReLU,
    SegmentationModel,
    check_input,
    init_conv_weights,
    pad_to_multiple,
    resize_to,
)

__all__ = ["UNet"]

_DECODER_CHANNELS = (64, 128, 256, 512)  # bubbliiiing's out_filters for VGG16 / ResNet50


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
    _taps = (3, 8, 15, 22, 29)  # ReLU outputs right before the pools at 4, 9, 16, 23

    def __init__(self, in_channels: int, pretrained: bool, weights_path: str | None) -> None:
        super().__init__()
        self.features = vgg16_features(
            pretrained=pretrained, weights_path=weights_path, in_channels=in_channels
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                feats.append(x)
        return feats


class ResNet50Encoder(nn.Module):
    """torchvision ResNet50 stem ReLU and layer1..4: channels ``(64, 256, 512, 1024, 2048)``,
    strides ``(2, 4, 8, 16, 32)``."""

    multiple = 32
    channels = [64, 256, 512, 1024, 2048]

    def __init__(self, in_channels: int, pretrained: bool, weights_path: str | None) -> None:
        super().__init__()
        net = resnet(
            "resnet50", pretrained=pretrained, weights_path=weights_path, in_channels=in_channels
        )
        layers = {"relu": "0", "layer1": "1", "layer2": "2", "layer3": "3", "layer4": "4"}
        self.body = IntermediateLayerGetter(net, return_layers=layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).values())


class UpBlock(nn.Module):
    """bubbliiiing's ``unetUp``: upsample the deeper map to the skip's size, concat, 2 convs."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, norm)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, resize_to(x, skip.shape[-2:])], dim=1))


class UNet(SegmentationModel):
    """UNet for semantic segmentation.

    Args:
        num_classes: output channels of ``out``.
        backbone: ``"plain"`` (BatchNorm everywhere, width ``base_channels``), ``"vgg16"`` or
            ``"resnet50"`` (torchvision encoders, bubbliiiing's decoder without BatchNorm).
        base_channels: width of the plain UNet's first stage (ignored by the other backbones).
        pretrained: load ImageNet encoder weights (torch hub cache or ``weights_path``; never
            downloads). The plain encoder has no public weights and needs ``weights_path``.
        weights_path: local encoder state dict; read only when ``pretrained``.
        in_channels: input channels (torchvision stems are rebuilt when not 3).

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
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = _build_encoder(
            backbone, base_channels, pretrained, weights_path, in_channels
        )
        enc, norm = self.encoder.channels, backbone == "plain"
        dec = enc[:4] if norm else list(_DECODER_CHANNELS)
        self.ups = nn.ModuleList(
            UpBlock(enc[i] + (enc[i + 1] if i == 3 else dec[i + 1]), dec[i], norm) for i in range(4)
        )
        # ResNet's first map is at stride 2: one more upsampling stage back to full size.
        self.up_conv = None
        if isinstance(self.encoder, ResNet50Encoder):
            self.up_conv = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
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
        x, (h, w) = pad_to_multiple(x, self.encoder.multiple)
        feats = self.encoder(x)
        y = feats[-1]
        for i in reversed(range(4)):
            y = self.ups[i](feats[i], y)
        if self.up_conv is not None:
            y = self.up_conv(y)
        return {"out": self.classifier(y)[..., :h, :w]}


def _build_encoder(
    backbone: str, base_channels: int, pretrained: bool, weights_path: str | None, in_ch: int
) -> nn.Module:
    if backbone == "vgg16":
        return VGG16Encoder(in_ch, pretrained, weights_path)
    if backbone == "resnet50":
        return ResNet50Encoder(in_ch, pretrained, weights_path)
    if backbone != "plain":
        raise ValueError(
            f"model.backbone={backbone!r} is not a UNet backbone; "
            "use 'plain', 'vgg16' or 'resnet50'"
        )
    encoder = PlainEncoder(in_ch, base_channels)
    if pretrained:
        load_encoder_weights(encoder, weights_path, "plain UNet")
    return encoder
