"""STDC-Seg (Fan et al., CVPR 2021): BiSeNet-style segmentation on an STDC backbone, with
detail guidance during training.

The STDC backbone (short-term dense concatenation) replaces ResNet; its 1/8 map replaces the
spatial path, and a detail head on that map learns Laplacian-derived boundaries (training
only, output key ``"detail"``; the loss is `segkit.losses.detail.DetailLoss`). Names follow
MichaelFan01/STDC-Seg (``features``, ``conv_list``, ``avd_layer``) so the authors' ImageNet
backbone state dicts load through ``weights_path``.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.errors import ConfigError
from segkit.models.backbones import load_encoder_weights
from segkit.models.bisenetv1 import BiSeNetOutput, ContextPath, FeatureFusionModule
from segkit.models.blocks import (
    ConvBNReLU,
    GroupedConv2d,
    SegmentationModel,
    StripPooling,
    check_input,
    check_train_batch,
    init_conv_weights,
    resize_to,
)

__all__ = ["CatBottleneck", "SkipDecoder", "STDCNet", "STDCSeg"]

_VARIANTS = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}  # STDCNet813 / STDCNet1446 stage depths


class CatBottleneck(nn.Module):
    """STDC module: 1x1 conv to C/2, then 3x3 convs halving the width; all outputs concatenated
    to ``out_channels``. With ``stride=2`` a depthwise strided conv ("avd") downsamples the first
    branch input and the 1x1 output is average-pooled to match."""

    def __init__(self, in_channels: int, out_channels: int, block_num: int = 4, stride: int = 1):
        super().__init__()
        if block_num < 2:
            raise ValueError(f"block_num must be >= 2, got {block_num}")
        half = out_channels // 2
        self.stride = stride
        if stride == 2:
            self.avd_layer = nn.Sequential(
                GroupedConv2d(half, half, 3, 2, 1, groups=half, bias=False), nn.BatchNorm2d(half)
            )
            self.skip = nn.AvgPool2d(3, 2, 1)
        widths = [half] + [out_channels // 2 ** (i + 1) for i in range(1, block_num - 1)]
        widths.append(widths[-1])  # the last two branches have the same width
        self.conv_list = nn.ModuleList([ConvBNReLU(in_channels, half, 1)])
        self.conv_list.extend(ConvBNReLU(c_in, c_out) for c_in, c_out in zip(widths, widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv_list[0](x)
        out = self.avd_layer(first) if self.stride == 2 else first
        outs = []
        for conv in self.conv_list[1:]:
            out = conv(out)
            outs.append(out)
        return torch.cat([self.skip(first) if self.stride == 2 else first, *outs], dim=1)


class STDCNet(nn.Module):
    """STDC backbone without its ImageNet head.

    ``forward(x) -> {"feat2", "feat4", "feat8", "feat16", "feat32"}`` with channels
    ``(base/2, base, 4 base, 8 base, 16 base)`` at strides 2..32.
    """

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2), base: int = 64, block_num: int = 4):
        super().__init__()
        blocks: list[nn.Module] = [
            ConvBNReLU(3, base // 2, 3, 2),
            ConvBNReLU(base // 2, base, 3, 2),
        ]
        c_in = base
        for stage, depth in enumerate(layers):
            c_out = base * 4 * 2**stage
            for j in range(depth):
                stride = 2 if j == 0 else 1
                blocks.append(CatBottleneck(c_in if j == 0 else c_out, c_out, block_num, stride))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        # features index where each stride ends: 2, 4, 8, 16, 32
        ends = [1, 2, 2 + layers[0], 2 + layers[0] + layers[1], 2 + sum(layers)]
        self._ends = dict(zip(ends, ("feat2", "feat4", "feat8", "feat16", "feat32")))
        self.channels = {
            "feat2": base // 2,
            "feat4": base,
            "feat8": base * 4,
            "feat16": base * 8,
            "feat32": base * 16,
        }
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {}
        for i, block in enumerate(self.features, start=1):
            x = block(x)
            if i in self._ends:
                feats[self._ends[i]] = x
        return feats


class SkipDecoder(nn.Module):
    """Stride-4 (or stride-2) decoder, DeepLabV3+ style, for thin classes that a 1/8 map cannot
    resolve.

    ``forward(high: (N, C_high, H/8, W/8), low: (N, C_low, H/4, W/4), fine: (N, C_fine, H/2,
    W/2) | None) -> (N, classes, H/4 or H/2, W/4 or W/2)``: the 1/8 features reduced by a 3x3
    conv, upsampled, concatenated with a 1x1 projection of the 1/4 backbone map, then two 3x3
    convs. With ``fine_channels`` the result is reduced to ``mid/2`` channels, upsampled again
    and fused with a 1x1 projection of the 1/2 map by one 3x3 conv (stride 2); a 1x1 classifier
    ends both. At 64 channels it costs less than the 256-channel 1/8 head it replaces; the
    stride-2 step adds 12% to STDC1's multiply-adds at 240x320. ``strip_pool`` gates the 1/4
    features with `StripPooling` (whole rows and columns of context) before the classifier
    (or the stride-2 step).
    """

    def __init__(
        self,
        high_channels: int,
        low_channels: int,
        num_classes: int,
        mid: int = 64,
        fine_channels: int | None = None,
        strip_pool: bool = False,
    ) -> None:
        super().__init__()
        self.high = ConvBNReLU(high_channels, mid, 3)
        self.strip = StripPooling(mid) if strip_pool else None
        self.low = ConvBNReLU(low_channels, mid // 2, 1)
        self.fuse = nn.Sequential(ConvBNReLU(mid + mid // 2, mid, 3), ConvBNReLU(mid, mid, 3))
        self.fine: nn.ModuleDict | None = None
        if fine_channels is not None:
            self.fine = nn.ModuleDict(
                {
                    "reduce": ConvBNReLU(mid, mid // 2, 1),
                    "low": ConvBNReLU(fine_channels, mid // 4, 1),
                    "fuse": ConvBNReLU(mid // 2 + mid // 4, mid // 2, 3),
                }
            )
        self.classifier = nn.Conv2d(mid if self.fine is None else mid // 2, num_classes, 1)

    def forward(
        self, high: torch.Tensor, low: torch.Tensor, fine: torch.Tensor | None = None
    ) -> torch.Tensor:
        high = resize_to(self.high(high), low.shape[-2:])
        x = self.fuse(torch.cat([high, self.low(low)], dim=1))
        if self.strip is not None:
            x = self.strip(x)
        if self.fine is not None:
            if fine is None:
                raise ValueError("SkipDecoder with fine_channels needs the 1/2 map")
            x = resize_to(self.fine["reduce"](x), fine.shape[-2:])
            x = self.fine["fuse"](torch.cat([x, self.fine["low"](fine)], dim=1))
        return self.classifier(x)


class STDCSeg(SegmentationModel):
    """STDC-Seg.

    Args:
        num_classes: output channels.
        variant: ``"stdc1"`` (STDCNet813) or ``"stdc2"`` (STDCNet1446).
        aux: two context-path auxiliary heads, as BiSeNetV1 (training only).
        detail: the detail head on the 1/8 backbone map (training only, key ``"detail"``,
            ``(N, 1, H/8, W/8)`` boundary logits for `DetailLoss`).
        decoder_stride: 8 (the paper: logits from the 1/8 fused map), 4 (`SkipDecoder` adds
            the 1/4 backbone map; poles, signs and other thin classes) or 2 (it adds the 1/2
            map as well).
        strip_pool: `StripPooling` on the decoder's 1/4 features (``decoder_stride`` 4 or 2).
        pretrained: no torchvision weights exist; needs ``weights_path``.
        weights_path: STDC ImageNet backbone state dict (``features.*``, e.g. the authors'
            ``STDCNet813M_73.91.tar``); read only when ``pretrained``.

    ``forward(x: (N, 3, H, W)) -> {"out": (N, C, H, W)}`` (+ ``"aux"``, ``"detail"`` in training).
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "stdc1",
        aux: bool = True,
        detail: bool = True,
        decoder_stride: int = 8,
        strip_pool: bool = False,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ConfigError(f"model.variant={variant!r}: choose one of {sorted(_VARIANTS)}")
        if decoder_stride not in (2, 4, 8):
            raise ConfigError(f"model.decoder_stride={decoder_stride!r}: choose 8, 4 or 2")
        if strip_pool and decoder_stride == 8:
            raise ConfigError(
                "model.strip_pool=true works in the skip decoder, but model.decoder_stride=8 has"
                " none: set model.decoder_stride=4 (or 2), or model.strip_pool=false"
            )
        backbone = STDCNet(_VARIANTS[variant])
        if pretrained:
            load_encoder_weights(backbone, weights_path, f"STDCSeg ({variant})")
        ch = backbone.channels
        self.context_path = ContextPath(backbone, ch["feat16"], ch["feat32"])
        self.ffm = FeatureFusionModule(ch["feat8"] + 128, 256)
        self.head: nn.Module = (
            BiSeNetOutput(256, 256, num_classes)
            if decoder_stride == 8
            else SkipDecoder(
                256,
                ch["feat4"],
                num_classes,
                fine_channels=ch["feat2"] if decoder_stride == 2 else None,
                strip_pool=strip_pool,
            )
        )
        self.aux_heads = (
            nn.ModuleList([BiSeNetOutput(128, 64, num_classes) for _ in range(2)]) if aux else None
        )
        self.detail_head = BiSeNetOutput(ch["feat8"], 64, 1) if detail else None
        for module in (self.ffm, self.head, self.aux_heads, self.detail_head):
            if module is not None:
                init_conv_weights(module)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.context_path.backbone]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        check_input(x, 3, "STDCSeg")
        check_train_batch(self, x)
        feat8_cp, feat16_cp, feats = self.context_path(x)
        fused = self.ffm(feats["feat8"], feat8_cp)
        if isinstance(self.head, SkipDecoder):
            logits = self.head(fused, feats["feat4"], feats["feat2"])
        else:
            logits = self.head(fused)
        outputs: dict = {"out": resize_to(logits, x.shape[-2:])}
        if self.training and self.aux_heads is not None:
            outputs["aux"] = [h(f) for h, f in zip(self.aux_heads, (feat8_cp, feat16_cp))]
        if self.training and self.detail_head is not None:
            outputs["detail"] = self.detail_head(feats["feat8"])
        return outputs
