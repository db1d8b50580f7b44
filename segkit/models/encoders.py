"""Multi-scale encoders for the decoders (UNet, DeepLabV3+): an image in, one feature map per
output stride out, shallow to deep.

Every encoder here has ``channels`` and ``strides`` (lists, one entry per map; strides
increase or stay, e.g. ``2, 4, 8, 16, 16`` when dilated) and ``multiple`` (the size an input
is padded to). ``forward(x: (N, C_in, H, W)) -> list[(N, channels[i], H / strides[i], ...)]``.

- `TorchvisionEncoder`: any torchvision classification CNN (see
  `segkit.models.backbones.torchvision_encoder`), optionally dilated to output stride 8 or 16;
- `TimmEncoder`: ``tu-<name>``, any timm model with ``features_only`` (the optional
  ``segkit[timm]`` extra), weights from timm's own caches or a file; never downloads.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from segkit.errors import CheckpointError, ConfigError
from segkit.io.partial_load import load_weights
from segkit.models.backbones import (
    adapt_first_conv,
    hf_cache_files,
    iter_blocks,
    probe_forward,
    torchvision_encoder,
)

__all__ = ["TIMM_PREFIX", "TimmEncoder", "TorchvisionEncoder", "dilate", "timm_cache_files"]

log = logging.getLogger(__name__)

TIMM_PREFIX = "tu-"  # segmentation_models.pytorch's spelling of "a timm encoder"
_MIN_MATCH = 0.9  # an ImageNet file must cover nearly all of the encoder
_PROBE_SIZE = 64  # a multiple of every stride up to 32


def dilate(module: nn.Module, rate: int, name: str) -> None:
    """Stride 1 and dilation ``rate`` for every conv of ``module`` (the atrous trick of
    DeepLab): the map keeps its size, the receptive field grows as if it had shrunk.

    Odd kernels get "same" padding ``rate * (k // 2)``, as in segmentation_models.pytorch (the
    whole stage is dilated, its first block included). Strided pooling or even kernels cannot
    be dilated this way (the map would shrink or shift): a ConfigError says so.
    """
    for sub_name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            if any(k % 2 == 0 for k in m.kernel_size) and m.stride != (1, 1):
                raise ConfigError(
                    f"model.backbone={name!r}: {sub_name} downsamples with a "
                    f"{m.kernel_size[0]}x{m.kernel_size[1]} conv, which cannot be dilated; "
                    f"use model.output_stride=32, or the timm version (model.backbone="
                    f"{TIMM_PREFIX}<name>), which dilates it its own way"
                )
            m.stride = (1, 1)
            m.dilation = (rate, rate)
            m.padding = tuple(rate * (k // 2) for k in m.kernel_size)
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d) and m.stride not in (1, (1, 1)):
            raise ConfigError(
                f"model.backbone={name!r}: {sub_name} downsamples by pooling, which cannot be "
                "dilated; use model.output_stride=32 or another backbone"
            )


class TorchvisionEncoder(nn.Module):
    """A torchvision classification CNN run block by block, tapped at the end of each output
    stride (see `segkit.models.backbones.torchvision_encoder`); ResNet50 gives its stem ReLU
    and layer1..4: channels ``(64, 256, 512, 1024, 2048)``, strides ``(2, 4, 8, 16, 32)``.

    ``output_stride`` 8 or 16 dilates the blocks past that stride (`dilate`, rate = the stride
    they had / ``output_stride``): ResNet50 at 16 gives strides ``(2, 4, 8, 16, 16)``.
    ``body`` holds torchvision's top-level modules under their own names
    (``encoder.body.layer1.0.conv1.weight``, ``encoder.body.features.3...``).
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        pretrained: bool,
        weights_path: str | None,
        weights_tag: str | None,
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        self.body, taps, self.channels, strides = torchvision_encoder(
            name,
            pretrained=pretrained,
            weights_path=weights_path,
            in_channels=in_channels,
            weights_tag=weights_tag,
        )
        blocks = [m for _, m in iter_blocks(self.body)]
        start = 0
        for tap, stride in zip(taps, strides):
            if stride > output_stride:
                for block in blocks[start : tap + 1]:
                    dilate(block, stride // output_stride, name)
            start = tap + 1
        self.strides = [min(s, output_stride) for s in strides]
        self.taps = frozenset(taps)
        self.multiple = self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, (_, block) in enumerate(iter_blocks(self.body)):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


def _import_timm(backbone: str):
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConfigError(
            f"model.backbone={backbone!r} is a timm encoder, and timm is not installed: "
            "pip install 'segkit[timm]' (or pip install timm), or choose a torchvision "
            "backbone such as resnet50"
        ) from None


def timm_cache_files(timm, name: str) -> list[Path]:
    """Where timm's loader would have put ``name``'s pretrained weights and which exist: the
    Hugging Face cache (``timm/<name>.<tag>``), then the torch hub cache (URL-hosted ones)."""
    cfg = timm.models.get_pretrained_cfg(name) if timm.models.is_model(name) else None
    if cfg is None:
        return []
    files = hf_cache_files(cfg.hf_hub_id) if cfg.hf_hub_id else []
    if cfg.url:
        files.append(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url))
    return [f for f in files if f.is_file()]


def _timm_weights_source(timm, name: str, weights_path: str | None) -> Path:
    if weights_path:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"model.weights_path={weights_path} does not exist")
        return Path(weights_path)
    found = timm_cache_files(timm, name)
    if found:
        return found[0]
    cfg = timm.models.get_pretrained_cfg(name)
    where = f"the Hugging Face model {cfg.hf_hub_id}" if cfg and cfg.hf_hub_id else "its weights"
    raise CheckpointError(
        f"pretrained=True needs timm's ImageNet weights for {name}, and none are cached "
        "(segkit never downloads while building a model). Fetch "
        f"{where} once (python -c \"import timm; timm.create_model('{name}', pretrained=True)\" "
        "on a machine with internet, then copy the Hugging Face cache), or set "
        "model.weights_path=/path/to/model.safetensors, or set model.pretrained=false."
    )


class TimmEncoder(nn.Module):
    """``tu-<name>``: timm model ``name`` with ``features_only=True``.

    ``output_stride`` 8 or 16 is timm's own dilation (models that support it). Pretrained
    weights come from ``weights_path`` or timm's caches (`timm_cache_files`), loaded into the
    RGB model before the stem is adapted to ``in_channels`` (segkit's rule,
    `segkit.models.backbones.adapt_input_weight`). State-dict keys are timm's under
    ``encoder.model.`` (``encoder.model.layer1.0.conv1.weight``). Strides and channels come
    from one no-grad probe forward, so they are what the model really produces.
    """

    def __init__(
        self,
        backbone: str,
        in_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | None = None,
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        timm = _import_timm(backbone)
        name = backbone.removeprefix(TIMM_PREFIX)
        if not timm.models.is_model(name):
            raise ConfigError(
                f"model.backbone={backbone!r}: timm has no model {name!r}; list them with "
                "python -c \"import timm; print(timm.list_models('resnet*'))\""
            )
        extra = {} if output_stride == 32 else {"output_stride": output_stride}
        self.model = timm.create_model(name, pretrained=False, features_only=True, **extra)
        if pretrained:
            source = _timm_weights_source(timm, name, weights_path)
            report = load_weights(self.model, source, min_match=_MIN_MATCH)
            log.info("%s ImageNet weights from %s: %s", backbone, source, report)
        adapt_first_conv(self.model, in_channels)
        self.channels, self.strides = _probe_maps(self.model, in_channels)
        self.multiple = max(32 if output_stride == 32 else output_stride, self.strides[-1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))


def _probe_maps(model: nn.Module, in_channels: int) -> tuple[list[int], list[int]]:
    """(channels, strides) of the maps ``model`` returns for a zero image, without gradients,
    in eval mode (BatchNorm statistics are not touched)."""
    _, maps = probe_forward(model, in_channels, _PROBE_SIZE)
    return [m.shape[1] for m in maps], [_PROBE_SIZE // m.shape[-1] for m in maps]
