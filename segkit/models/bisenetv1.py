"""BiSeNet V1 (Yu et al., ECCV 2018), module names after the paper.

Spatial path (three stride-2 convs, 1/8 resolution, 128 channels) + context path (torchvision
ResNet18 layer3/layer4 through ``IntermediateLayerGetter``, attention refinement modules and a
global-average "global context" branch) fused by the feature fusion module; two auxiliary heads
supervise the context path during training.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from segkit.models.backbones import resnet
from segkit.models.blocks import (
    ConvBNReLU,
    SegmentationModel,
    check_input,
    check_train_batch,
    init_conv_weights,
    resize_to,
)

__all__ = [
    "AttentionRefinementModule",
    "BiSeNetOutput",
    "BiSeNetV1",
    "ContextPath",
    "FeatureFusionModule",
    "SpatialPath",
]

# (layer3, layer4) output channels of the supported torchvision backbones.
_BACKBONE_CHANNELS = {"resnet18": (256, 512), "resnet50": (1024, 2048)}


class SpatialPath(nn.Sequential):
    """Three stride-2 ConvBNReLU + 1x1 projection: ``(N, 3, H, W) -> (N, 128, H/8, W/8)``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128) -> None:
        super().__init__(
            ConvBNReLU(in_channels, 64, 7, 2),
            ConvBNReLU(64, 64, 3, 2),
            ConvBNReLU(64, 64, 3, 2),
            ConvBNReLU(64, out_channels, 1),
        )


class AttentionRefinementModule(nn.Module):
    """ARM: 3x3 conv, then channel attention from global pooling (1x1 conv, BN, sigmoid)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * self.attention(feat)


class ContextPath(nn.Module):
    """Backbone 1/16 and 1/32 maps refined by ARMs, plus the global context (pooled 1/32).

    ``backbone(x)`` must return a dict with ``"feat16"`` (``channels16``) and ``"feat32"``
    (``channels32``) maps, as ``IntermediateLayerGetter`` does. ``forward(x, size8)`` returns
    ``(feat8, feat16, backbone_feats)``: 128-channel maps at ``size8`` (1/8; default: the size of
    the backbone's ``"feat8"``) and at the 1/16 size, and the backbone's dict.
    """

    def __init__(
        self, backbone: nn.Module, channels16: int, channels32: int, out_channels: int = 128
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.global_context = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvBNReLU(channels32, out_channels, 1)
        )
        self.arm32 = AttentionRefinementModule(channels32, out_channels)
        self.arm16 = AttentionRefinementModule(channels16, out_channels)
        self.refine32 = ConvBNReLU(out_channels, out_channels, 3)
        self.refine16 = ConvBNReLU(out_channels, out_channels, 3)
        for module in (self.global_context, self.arm32, self.arm16, self.refine32, self.refine16):
            init_conv_weights(module)  # the backbone keeps its own init or pretrained weights

    def forward(
        self, x: torch.Tensor, size8: tuple[int, int] | torch.Size | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.backbone(x)
        size8 = feats["feat8"].shape[-2:] if size8 is None else size8
        feat16, feat32 = feats["feat16"], feats["feat32"]
        # (N, C, 1, 1) broadcast == upsampling the pooled vector to the 1/32 size.
        feat32 = self.arm32(feat32) + self.global_context(feat32)
        up32 = self.refine32(resize_to(feat32, feat16.shape[-2:]))
        up16 = self.refine16(resize_to(self.arm16(feat16) + up32, size8))
        return up16, up32, feats


class FeatureFusionModule(nn.Module):
    """FFM: concat, 1x1 ConvBNReLU, then ``feat + feat * channel_attention(feat)``."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fuse = ConvBNReLU(in_channels, out_channels, 1)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_channels, out_channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels // reduction, out_channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.fuse(torch.cat([spatial, context], dim=1))
        return feat + feat * self.attention(feat)


class BiSeNetOutput(nn.Sequential):
    """3x3 ConvBNReLU + 1x1 conv to ``num_classes`` logits, at the input feature's size."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, mid_channels, 3), nn.Conv2d(mid_channels, num_classes, 1)
        )


class BiSeNetV1(SegmentationModel):
    """BiSeNet V1.

    Args:
        num_classes: output channels.
        backbone: context-path backbone, ``"resnet18"`` (paper) or ``"resnet50"``.
        pretrained: ImageNet weights for the backbone from the torch hub cache or
            ``weights_path`` (never downloads).
        weights_path: local torchvision ResNet state dict; read only when ``pretrained``.
        aux: build the two context-path auxiliary heads (used only in training mode).

    ``forward(x: (N, 3, H, W)) -> {"out": (N, C, H, W)}`` and, in training mode with ``aux``,
    ``"aux": [(N, C, H/8, W/8), (N, C, H/16, W/16)]`` logits. Training needs ``N >= 2``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        pretrained: bool = False,
        weights_path: str | None = None,
        aux: bool = True,
    ) -> None:
        super().__init__()
        if backbone not in _BACKBONE_CHANNELS:
            raise ValueError(
                f"model.backbone={backbone!r} is not supported by BiSeNetV1; "
                f"choose one of {sorted(_BACKBONE_CHANNELS)}"
            )
        net = resnet(backbone, pretrained=pretrained, weights_path=weights_path)
        self.spatial_path = SpatialPath()
        self.context_path = ContextPath(
            IntermediateLayerGetter(net, {"layer3": "feat16", "layer4": "feat32"}),
            *_BACKBONE_CHANNELS[backbone],
        )
        self.ffm = FeatureFusionModule(256, 256)
        self.head = BiSeNetOutput(256, 256, num_classes)
        self.aux_heads = None
        if aux:
            self.aux_heads = nn.ModuleList(
                [BiSeNetOutput(128, 64, num_classes), BiSeNetOutput(128, 64, num_classes)]
            )
        for module in (self.spatial_path, self.ffm, self.head, self.aux_heads):
            if module is not None:
                init_conv_weights(module)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.context_path.backbone]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        check_input(x, 3, "BiSeNetV1")
        check_train_batch(self, x)
        spatial = self.spatial_path(x)
        feat8, feat16, _ = self.context_path(x, spatial.shape[-2:])
        outputs: dict = {"out": resize_to(self.head(self.ffm(spatial, feat8)), x.shape[-2:])}
        if self.training and self.aux_heads is not None:
            outputs["aux"] = [head(f) for head, f in zip(self.aux_heads, (feat8, feat16))]
        return outputs
