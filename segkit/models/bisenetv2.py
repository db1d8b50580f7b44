"""BiSeNet V2 (Yu et al., IJCV 2021), module names after the paper.

Detail branch (wide, shallow, 1/8) and semantic branch (StemBlock -> gather-and-expand layers ->
context embedding, 1/32) merged by the bilateral guided aggregation layer; four auxiliary
SegmentHeads on the semantic stages during training. Submodule names follow CoinCheung/BiSeNet
(``detail.S1``, ``segment.S1S2`` ...) so its ImageNet ``backbone_v2.pth`` loads via
``weights_path``. Every stride-2 layer maps H to ceil(H / 2), so any input size works.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.backbones import load_encoder_weights
from segkit.models.blocks import (
    ConvBNReLU,
    GroupedConv2d,
    SegmentationModel,
    check_input,
    check_train_batch,
    init_conv_weights,
    resize_to,
)

__all__ = [
    "BGALayer",
    "BiSeNetV2",
    "CEBlock",
    "DetailBranch",
    "GELayerS1",
    "GELayerS2",
    "SegmentBranch",
    "SegmentHead",
    "StemBlock",
]


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = GroupedConv2d if groups > 1 else nn.Conv2d
    return [conv(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out)]  # fmt: skip


class DetailBranch(nn.Module):
    """``(N, 3, H, W) -> (N, 128, H/8, W/8)``: three stages of plain 3x3 ConvBNReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.S1 = nn.Sequential(ConvBNReLU(3, 64, 3, 2), ConvBNReLU(64, 64))
        self.S2 = nn.Sequential(ConvBNReLU(64, 64, 3, 2), ConvBNReLU(64, 64), ConvBNReLU(64, 64))
        self.S3 = nn.Sequential(
            ConvBNReLU(64, 128, 3, 2), ConvBNReLU(128, 128), ConvBNReLU(128, 128)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.S3(self.S2(self.S1(x)))


class StemBlock(nn.Module):
    """``(N, 3, H, W) -> (N, 16, H/4, W/4)``: conv, then strided conv || max-pool, fused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBNReLU(3, 16, 3, 2)
        self.left = nn.Sequential(ConvBNReLU(16, 8, 1), ConvBNReLU(8, 16, 3, 2))
        self.right = nn.MaxPool2d(3, 2, 1)
        self.fuse = ConvBNReLU(32, 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.right(x)], dim=1))


class CEBlock(nn.Module):
    """Context embedding: global-pooled (BN, 1x1 conv) context added back, then a 3x3 conv."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv_gap = ConvBNReLU(channels, channels, 1)
        self.conv_last = ConvBNReLU(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.conv_gap(self.bn(x.mean(dim=(2, 3), keepdim=True)))
        return self.conv_last(x + context)


class GELayerS1(nn.Module):
    """Gather-and-expand layer, stride 1: 3x3 conv, depthwise expand x6, 1x1 project, residual."""

    def __init__(self, in_channels: int, out_channels: int, expand: int = 6) -> None:
        super().__init__()
        mid = in_channels * expand
        self.conv1 = ConvBNReLU(in_channels, in_channels, 3)
        self.dwconv = nn.Sequential(*_conv_bn(in_channels, mid, 3, groups=in_channels), nn.ReLU())
        self.conv2 = nn.Sequential(*_conv_bn(mid, out_channels, 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.dwconv(self.conv1(x))) + x)


class GELayerS2(nn.Module):
    """Gather-and-expand layer, stride 2, with a depthwise-separable strided shortcut."""

    def __init__(self, in_channels: int, out_channels: int, expand: int = 6) -> None:
        super().__init__()
        mid = in_channels * expand
        self.conv1 = ConvBNReLU(in_channels, in_channels, 3)
        self.dwconv1 = nn.Sequential(*_conv_bn(in_channels, mid, 3, 2, groups=in_channels))
        self.dwconv2 = nn.Sequential(*_conv_bn(mid, mid, 3, groups=mid), nn.ReLU())
        self.conv2 = nn.Sequential(*_conv_bn(mid, out_channels, 1))
        self.shortcut = nn.Sequential(
            *_conv_bn(in_channels, in_channels, 3, 2, groups=in_channels),
            *_conv_bn(in_channels, out_channels, 1),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv2(self.dwconv2(self.dwconv1(self.conv1(x))))
        return self.relu(feat + self.shortcut(x))


class SegmentBranch(nn.Module):
    """Semantic branch. ``forward`` returns the maps at 1/4 (16 ch), 1/8 (32), 1/16 (64),
    1/32 (128, before CE) and 1/32 (128, after CE)."""

    def __init__(self) -> None:
        super().__init__()
        self.S1S2 = StemBlock()
        self.S3 = nn.Sequential(GELayerS2(16, 32), GELayerS1(32, 32))
        self.S4 = nn.Sequential(GELayerS2(32, 64), GELayerS1(64, 64))
        self.S5_4 = nn.Sequential(
            GELayerS2(64, 128), GELayerS1(128, 128), GELayerS1(128, 128), GELayerS1(128, 128)
        )
        self.S5_5 = CEBlock(128)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.S1S2(x)]
        for stage in (self.S3, self.S4, self.S5_4, self.S5_5):
            feats.append(stage(feats[-1]))
        return feats


class BGALayer(nn.Module):
    """Bilateral guided aggregation: each branch gates the other at its own resolution.

    ``forward(detail (N,128,h8,w8), semantic (N,128,h32,w32)) -> (N,128,h8,w8)``.
    """

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        c = channels
        self.left1 = nn.Sequential(*_conv_bn(c, c, 3, groups=c), nn.Conv2d(c, c, 1, bias=False))
        self.left2 = nn.Sequential(*_conv_bn(c, c, 3, 2), nn.AvgPool2d(3, 2, 1))
        self.right1 = nn.Sequential(*_conv_bn(c, c, 3))
        self.right2 = nn.Sequential(*_conv_bn(c, c, 3, groups=c), nn.Conv2d(c, c, 1, bias=False))
        self.conv = nn.Sequential(*_conv_bn(c, c, 3), nn.ReLU(inplace=True))

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        size = detail.shape[-2:]
        left = self.left1(detail) * torch.sigmoid(resize_to(self.right1(semantic), size))
        right = self.left2(detail) * torch.sigmoid(self.right2(semantic))
        return self.conv(left + resize_to(right, size))


class SegmentHead(nn.Module):
    """3x3 ConvBNReLU, dropout, (aux heads: x2 upsample + ConvBNReLU to ``up_factor**2``
    channels, as CoinCheung), 1x1 conv to logits at the feature's (x2 for aux) resolution."""

    def __init__(
        self, in_channels: int, mid_channels: int, num_classes: int, up_factor: int = 8,
        aux: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels, 3)
        self.drop = nn.Dropout(0.1)
        out_mid = up_factor * up_factor if aux else mid_channels
        expand = (
            nn.Sequential(nn.Upsample(scale_factor=2), ConvBNReLU(mid_channels, out_mid, 3))
            if aux
            else nn.Identity()
        )
        self.conv_out = nn.Sequential(expand, nn.Conv2d(out_mid, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.drop(self.conv(x)))


class BiSeNetV2(SegmentationModel):
    """BiSeNet V2.

    Args:
        num_classes: output channels.
        aux: build the four auxiliary heads on semantic stages 1/4, 1/8, 1/16, 1/32 (used only
            in training mode; logits at twice their stage's resolution).
        pretrained: torchvision has no BiSeNetV2 weights, so this needs ``weights_path``.
        weights_path: ImageNet state dict of the two branches (``detail.*`` / ``segment.*``,
            e.g. CoinCheung's ``backbone_v2.pth``); read only when ``pretrained``.

    ``forward(x: (N, 3, H, W)) -> {"out": (N, C, H, W), "aux": [...] (training only)}``.
    Training needs ``N >= 2`` (BatchNorm on the globally pooled context).
    """

    def __init__(
        self,
        num_classes: int,
        aux: bool = True,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.detail = DetailBranch()
        self.segment = SegmentBranch()
        self.bga = BGALayer(128)
        self.head = SegmentHead(128, 1024, num_classes, up_factor=8, aux=False)
        self.aux_heads = None
        if aux:
            self.aux_heads = nn.ModuleList(
                SegmentHead(c, 128, num_classes, up_factor=f, aux=True)
                for c, f in ((16, 4), (32, 8), (64, 16), (128, 32))
            )
        self._init_weights()
        if pretrained:
            load_encoder_weights(self._encoder_view(), weights_path, "BiSeNetV2")

    def _init_weights(self) -> None:
        init_conv_weights(self)
        for m in self.modules():  # residual branches start as identity (zero last BN)
            if isinstance(m, GELayerS1 | GELayerS2):
                nn.init.zeros_(m.conv2[1].weight)

    def _encoder_view(self) -> nn.Module:
        """A container holding only ``detail`` and ``segment`` under their own names."""
        view = nn.Module()
        view.detail, view.segment = self.detail, self.segment
        return view

    def encoder_modules(self) -> list[nn.Module]:
        return [self.detail, self.segment]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        check_input(x, 3, "BiSeNetV2")
        check_train_batch(self, x)
        semantic = self.segment(x)
        fused = self.bga(self.detail(x), semantic[-1])
        outputs: dict = {"out": resize_to(self.head(fused), x.shape[-2:])}
        if self.training and self.aux_heads is not None:
            outputs["aux"] = [head(f) for head, f in zip(self.aux_heads, semantic[:4])]
        return outputs
