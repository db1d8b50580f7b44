"""SegFormer (Xie et al., NeurIPS 2021): the Mix Transformer encoder and the all-MLP decoder.

Decoder: each of the four encoder maps is projected to ``decoder_channels`` by a linear layer,
upsampled to the stride-4 map's size, the four are concatenated (deepest first) and fused by a
1x1 conv + BN + ReLU, then dropout and a 1x1 classifier; logits at stride 4 are resized
bilinearly to the input. Names are the official ones (``backbone.*``, ``decode_head.*``), so
official and MMSegmentation checkpoints load as they are and Hugging Face ones through
`segkit.models.weight_names`.

ImageNet weights are read, never downloaded: ``weights_path`` (the official ``mit_b0.pth`` or
a Hugging Face ``model.safetensors`` / ``pytorch_model.bin``), else the Hugging Face cache of
``nvidia/mit-<variant>``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from segkit.errors import CheckpointError
from segkit.io.partial_load import LoadReport, load_weights, read_state_dict
from segkit.models.backbones import adapt_first_conv, hf_cache_files, hf_hub_cache
from segkit.models.blocks import ConvBNReLU, SegmentationModel, check_input, resize_to
from segkit.models.mix_transformer import MixTransformer, mit_variant
from segkit.models.weight_names import segformer_from_hf, segformer_from_official

__all__ = ["AllMLPHead", "SegFormer", "load_segformer_weights", "to_segkit_names"]

log = logging.getLogger(__name__)

_MIN_MATCH = 0.9


class LinearProjection(nn.Module):
    """``(N, C, h, w) -> (N, dim, h, w)`` by one linear layer over the channels."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        y = self.proj(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(n, -1, h, w)


class AllMLPHead(nn.Module):
    """SegFormer's decoder: four maps (strides 4 to 32) -> ``(N, num_classes, h4, w4)`` logits
    at the size of the first (stride-4) map."""

    def __init__(
        self, in_channels: list[int], channels: int, num_classes: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        for i, c in enumerate(in_channels, start=1):
            setattr(self, f"linear_c{i}", LinearProjection(c, channels))
        self.num_maps = len(in_channels)
        self.linear_fuse = ConvBNReLU(len(in_channels) * channels, channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.linear_pred = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        maps = [
            resize_to(getattr(self, f"linear_c{i + 1}")(feats[i]), size)
            for i in reversed(range(self.num_maps))
        ]  # deepest first, as the official head concatenates them
        return self.linear_pred(self.dropout(self.linear_fuse(torch.cat(maps, dim=1))))


class SegFormer(SegmentationModel):
    """SegFormer-``variant`` (``b0`` ... ``b5``).

    Args:
        num_classes: output channels of ``out``.
        variant: the MiT size; also sets the decoder width (256 for b0/b1, 768 for b2-b5)
            unless ``decoder_channels`` is given.
        decoder_channels: width of the all-MLP decoder; None: the official one for ``variant``.
        drop_path_rate: stochastic depth of the encoder (0.1 as in the official training).
        dropout: before the classifier (0.1).
        layer_norm_eps: of the encoder blocks' and stages' LayerNorms (official 1e-6; 1e-5
            reproduces Hugging Face's port exactly).
        pretrained: load ImageNet MiT weights (``weights_path`` or the Hugging Face cache).
        weights_path: an official MiT file or a Hugging Face SegFormer file (any naming).
        in_channels: input channels (the first patch embedding's RGB weights are adapted).

    ``forward(x: (N, in_channels, H, W) float) -> {"out": (N, num_classes, H, W) logits}``; any
    H and W from 32 up (the first stage's keys and values come from an 8x smaller map).
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "b0",
        decoder_channels: int | None = None,
        drop_path_rate: float = 0.1,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-6,
        pretrained: bool = False,
        weights_path: str | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        spec = mit_variant(variant)
        self.in_channels = in_channels
        self.backbone = MixTransformer(variant, 3, drop_path_rate, layer_norm_eps)
        channels = decoder_channels or spec.decoder_channels
        self.decode_head = AllMLPHead(self.backbone.channels, channels, num_classes, dropout)
        if pretrained:
            load_segformer_weights(self.backbone, variant, weights_path)
        adapt_first_conv(self.backbone, in_channels)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(x, self.in_channels, "SegFormer")
        logits = self.decode_head(self.backbone(x))
        return {"out": resize_to(logits, x.shape[-2:])}


def to_segkit_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any published SegFormer / MiT naming (official, MMSegmentation, Hugging Face) ->
    `SegFormer`'s."""
    if any(k.startswith(("segformer.", "decode_head.linear_c.")) for k in state):
        return segformer_from_hf(state)
    return segformer_from_official(state)


def load_segformer_weights(
    backbone: MixTransformer, variant: str, weights_path: str | None
) -> LoadReport:
    """ImageNet MiT weights into ``backbone`` from ``weights_path`` or the Hugging Face cache;
    a CheckpointError names the files to fetch when neither exists."""
    if weights_path and not Path(weights_path).is_file():
        raise FileNotFoundError(f"model.weights_path={weights_path} does not exist")
    cached = hf_cache_files(f"nvidia/mit-{variant}")
    source = Path(weights_path) if weights_path else (cached[0] if cached else None)
    if source is None:
        raise CheckpointError(
            f"pretrained=True needs the ImageNet MiT-{variant.upper()} weights, and segkit never "
            f"downloads while building a model. Either download mit_{variant}.pth of the "
            "official SegFormer release (NVlabs/SegFormer, 'imagenet pretrained weights') and "
            f"set model.weights_path=/path/to/mit_{variant}.pth, or put the Hugging Face model "
            f"nvidia/mit-{variant} in the Hugging Face cache (huggingface-cli download "
            f"nvidia/mit-{variant}; looked in {hf_hub_cache()}), "
            "or set model.pretrained=false."
        )
    state = to_segkit_names(read_state_dict(source))
    encoder = {k.removeprefix("backbone."): v for k, v in state.items()}
    report = load_weights(backbone, encoder, min_match=_MIN_MATCH)
    log.info("MiT-%s ImageNet weights from %s: %s", variant.upper(), source, report)
    return report
