"""Layers and the base class shared by every segkit model.

Model contract (see `SegmentationModel`): ``forward(x)`` takes float32 ``(N, C_in, H, W)``
normalised images and returns ``{"out": (N, num_classes, H, W) logits}``, plus
``"aux": list[(N, num_classes, h, w) logits]`` only while ``self.training`` and only for models
with auxiliary heads. Logits are raw (no softmax).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvBNReLU",
    "GroupedConv2d",
    "SegmentationModel",
    "StripPooling",
    "check_input",
    "check_train_batch",
    "init_conv_weights",
    "resize_to",
]


class GroupedConv2d(nn.Conv2d):
    """``nn.Conv2d`` for grouped and depthwise convs (``groups > 1``): with a stride it runs in
    float32 on the CPU even under bf16 autocast; otherwise exactly ``nn.Conv2d``.

    oneDNN's bf16 kernels for strided grouped convs are far slower than its float32 ones on the
    CPU (results/performance.md, grouped_conv_bf16) while they do a sliver of the multiply-adds;
    at stride 1 bf16 is as fast or faster, so those stay in bf16. Same parameters and state-dict
    keys as ``nn.Conv2d``; the float32 path returns float32 (the next conv casts back to bf16).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        strided = self.stride != (1, 1)
        if strided and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class ConvBNReLU(nn.Module):
    """``conv (no bias) -> bn -> relu`` with "same" padding; ``act=False`` drops the ReLU.

    Attribute names (``conv``, ``bn``) follow CoinCheung/BiSeNet so its state dicts load. With
    ``stride=2`` the output size is ``ceil(H / 2)``, so pyramids stay aligned for odd inputs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        *,
        groups: int = 1,
        dilation: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        sizes = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        padding = tuple(dilation * (k - 1) // 2 for k in sizes)
        self.conv = (GroupedConv2d if groups > 1 else nn.Conv2d)(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class StripPooling(nn.Module):
    """Strip-pooling attention (Hou et al., "Strip Pooling", CVPR 2020, its SPBlock).

    ``forward(x: (N, C, H, W)) -> (N, C, H, W)``: ``x`` averaged over each row to ``(N, C, H, 1)``
    and over each column to ``(N, C, 1, W)``, a 3x1 and a 1x3 conv (+ bn) on the two strips,
    both expanded back to ``H x W`` and summed, then ReLU, a 1x1 conv and a sigmoid gate on
    ``x``. Every pixel sees its whole row and column: long thin structures (poles, posts)
    gather context along their length that a square window misses.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.rows = ConvBNReLU(channels, channels, (3, 1), act=False)
        self.cols = ConvBNReLU(channels, channels, (1, 3), act=False)
        self.gate = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = self.rows(F.adaptive_avg_pool2d(x, (h, 1))).expand(-1, -1, h, w)
        cols = self.cols(F.adaptive_avg_pool2d(x, (1, w))).expand(-1, -1, h, w)
        return x * torch.sigmoid(self.gate(F.relu(rows + cols)))


def init_conv_weights(module: nn.Module) -> None:
    """Kaiming (fan_out) convs, zero biases, unit BatchNorm: the usual from-scratch init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input(x: torch.Tensor, in_channels: int, model_name: str) -> None:
    """Fail early, with the expected layout, instead of deep inside a conv."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != in_channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{model_name} expects a float tensor of shape (N, {in_channels}, H, W), got {got}; "
            "batch single images with x.unsqueeze(0) and put channels first"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{model_name} expects a floating point input, got {x.dtype}; normalise images "
            "as (img / 255 - mean) / std first"
        )


def check_train_batch(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm over globally pooled features cannot train on one sample; say so clearly."""
    if model.training and x.shape[0] < 2:
        raise ValueError(
            f"{type(model).__name__} needs a batch of at least 2 in training mode (its BatchNorm "
            "layers normalise globally pooled 1x1 features); use batch_size >= 2 with "
            "drop_last=True, or call model.eval() for inference"
        )


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to ``size``; exact identity at the same size.

    No Python test of ``x.shape`` here: traced or exported, it would freeze the branch taken
    at the example's size (see tests/unit/test_export.py)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    """Base class: encoder freezing for the notes' freeze/unfreeze training phases.

    Subclasses implement `encoder_modules` (the pretrained / downsampling part). While the
    encoder is frozen its parameters have ``requires_grad=False`` and its BatchNorm layers stay
    in eval mode even after ``model.train()``, so the running statistics learned on ImageNet are
    not overwritten by small fine-tuning batches.
    """

    def __init__(self) -> None:
        super().__init__()
        self._encoder_frozen = False

    def encoder_modules(self) -> list[nn.Module]:
        raise NotImplementedError(f"{type(self).__name__} must implement encoder_modules()")

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the encoder, each once (for optimizer parameter groups)."""
        seen: set[int] = set()
        for module in self.encoder_modules():
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def freeze_encoder(self, flag: bool = True) -> None:
        """Freeze (``True``) or unfreeze (``False``) the encoder; see the class docstring."""
        self._encoder_frozen = bool(flag)
        for p in self.encoder_parameters():
            p.requires_grad_(not flag)
        self.train(self.training)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self._encoder_frozen:
            for module in self.encoder_modules():
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self
