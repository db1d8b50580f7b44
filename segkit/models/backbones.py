"""torchvision encoders and offline-safe loading of their ImageNet weights.

Nothing here downloads. With ``pretrained=True`` the weights come from ``weights_path`` when
given, else from torchvision's cache file ``torch.hub.get_dir()/checkpoints/<name>.pth`` (the
file ``torchvision.models.<arch>(weights=...)`` would have downloaded); when neither exists a
RuntimeError says which file to fetch and where to put it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import ResNet18_Weights, ResNet50_Weights, VGG16_Weights, WeightsEnum

from segkit.models.blocks import init_conv_weights
from segkit.weights import LoadReport, load_weights

__all__ = [
    "hub_cache_file",
    "load_encoder_weights",
    "load_torchvision_weights",
    "resnet",
    "vgg16_features",
]

log = logging.getLogger(__name__)

# ImageNet weights of the bubbliiiing / BiSeNet lineage (torchvision's V1 recipes).
_RESNETS = {
    "resnet18": (tvm.resnet18, ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, ResNet50_Weights.IMAGENET1K_V1),
}
# A backbone state dict must cover nearly all of the encoder, or something is wrong.
_MIN_MATCH = 0.9


def hub_cache_file(weights: WeightsEnum) -> Path:
    """Where torchvision caches ``weights``: ``<torch hub dir>/checkpoints/<url basename>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_torchvision_weights(
    module: nn.Module, weights: WeightsEnum, weights_path: str | None, arch: str
) -> LoadReport:
    """Load ImageNet weights into a torchvision ``module`` from ``weights_path`` or the cache."""
    source = Path(weights_path) if weights_path else hub_cache_file(weights)
    if not source.is_file():
        if weights_path:
            raise FileNotFoundError(f"model.weights_path={weights_path} does not exist")
        raise RuntimeError(
            f"pretrained=True needs torchvision's ImageNet weights for {arch}, but {source} does "
            "not exist and segkit never downloads while building a model. Download "
            f"{weights.url} and save it as {source} (the torch hub cache; set $TORCH_HOME to "
            "move it), or set model.weights_path=/path/to/"
            f"{os.path.basename(weights.url)}, or set model.pretrained=false."
        )
    report = load_weights(module, source, min_match=_MIN_MATCH)
    log.info("%s ImageNet weights from %s: %s", arch, source, report)
    return report


def load_encoder_weights(
    module: nn.Module, weights_path: str | None, model_name: str
) -> LoadReport:
    """For encoders torchvision has no weights for: ``weights_path`` is required."""
    if not weights_path:
        raise RuntimeError(
            f"pretrained=True: torchvision ships no ImageNet weights for the {model_name} "
            "encoder, so set model.weights_path to a state dict whose keys match the encoder "
            f"({type(module).__name__}), or set model.pretrained=false."
        )
    report = load_weights(module, weights_path, min_match=_MIN_MATCH)
    log.info("%s encoder weights from %s: %s", model_name, weights_path, report)
    return report


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Replace an RGB stem conv by one taking ``in_channels`` (ImageNet weights then skip it)."""
    if in_channels == conv.in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )


def resnet(
    name: str, *, pretrained: bool = False, weights_path: str | None = None, in_channels: int = 3
) -> tvm.ResNet:
    """torchvision ``resnet18`` / ``resnet50`` without ``fc``, for IntermediateLayerGetter.

    ``fc`` is deleted before loading so a backbone-only state dict matches fully, while a full
    torchvision file loads with ``fc.*`` reported as unexpected.
    """
    if name not in _RESNETS:
        raise ValueError(f"backbone={name!r} is not supported; choose one of {sorted(_RESNETS)}")
    build, weights = _RESNETS[name]
    net = build(weights=None)
    del net.avgpool, net.fc
    if pretrained:
        load_torchvision_weights(net, weights, weights_path, name)
    net.conv1 = _adapt_first_conv(net.conv1, in_channels)
    return net


# torchvision's VGG16 "D" layout; building it ourselves skips VGG's 120M-parameter classifier.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def vgg16_features(
    *, pretrained: bool = False, weights_path: str | None = None, in_channels: int = 3
) -> nn.Sequential:
    """torchvision VGG16 ``features[:30]`` (no BatchNorm, no last pool), as in bubbliiiing.

    Layer indices equal torchvision's, so its ``features.*`` weights load; the stride is 16.
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = item
    holder = nn.Module()  # gives the keys torchvision's "features." prefix
    holder.features = nn.Sequential(*layers)
    init_conv_weights(holder)
    if pretrained:
        load_torchvision_weights(holder, VGG16_Weights.IMAGENET1K_V1, weights_path, "vgg16")
    return holder.features
