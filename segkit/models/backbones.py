"""torchvision encoders and offline-safe loading of their ImageNet weights.

Nothing here downloads. With ``pretrained=True`` the weights come from ``weights_path`` when
given, else from torchvision's cache file ``torch.hub.get_dir()/checkpoints/<name>.pth`` (the
file ``torchvision.models.<arch>(weights=...)`` would have downloaded); when neither exists a
CheckpointError says which file to fetch and where to put it.

Any torchvision classification CNN of the families in :data:`FAMILIES` becomes an encoder with
:func:`torchvision_encoder`: the classifier head is dropped and the stages are found by output
stride with one probe forward (the last top-level block at each stride; the probe also checks
that the model's forward runs those blocks in sequence, so the encoder runs them the same way
and forward hooks on any block work). An input with other than 3 channels adapts the stem's
(pretrained) RGB weights (:func:`adapt_input_weight`).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import ResNet18_Weights, ResNet50_Weights, WeightsEnum

from segkit.errors import CheckpointError, ConfigError
from segkit.io.partial_load import LoadReport, load_weights
from segkit.models.blocks import init_conv_weights

__all__ = [
    "FAMILIES",
    "adapt_first_conv",
    "adapt_input_weight",
    "check_encoder_name",
    "encoder_names",
    "find_stages",
    "iter_blocks",
    "hf_cache_files",
    "hf_hub_cache",
    "hub_cache_file",
    "load_encoder_weights",
    "load_torchvision_weights",
    "resnet",
    "torchvision_encoder",
    "torchvision_weights",
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
# torchvision model-name prefixes whose models are plain NCHW CNNs with a global-pool head:
# their forward runs the top-level blocks in order (find_stages checks it on every build).
FAMILIES = (
    "resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet",
    "regnet", "convnext", "vgg", "shufflenet_v2", "mnasnet",
)  # fmt: skip
# the children torchvision names the classifier head (pooling, flatten, linear layers)
_HEAD_NAMES = ("avgpool", "fc", "classifier", "head")
_PROBE_SIZE = 64  # a multiple of the deepest stride (32): every stage's size divides it


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``), where timm and transformers keep downloaded weights."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def hf_cache_files(repo_id: str) -> list[Path]:
    """The weight files of Hugging Face model ``repo_id`` in the hub cache, newest first by
    name order of their snapshots (``model.safetensors`` before ``pytorch_model.bin``)."""
    snapshots = hf_hub_cache() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return [
        f
        for name in ("model.safetensors", "pytorch_model.bin")
        for f in sorted(snapshots.glob(f"*/{name}"))
        if f.is_file()
    ]


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
        raise CheckpointError(
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
        raise CheckpointError(
            f"pretrained=True: torchvision ships no ImageNet weights for the {model_name} "
            "encoder, so set model.weights_path to a state dict whose keys match the encoder "
            f"({type(module).__name__}), or set model.pretrained=false."
        )
    report = load_weights(module, weights_path, min_match=_MIN_MATCH)
    log.info("%s encoder weights from %s: %s", model_name, weights_path, report)
    return report


def adapt_input_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem weights ``(O, 3, kh, kw)`` -> ``(O, in_channels, kh, kw)``.

    One channel: the sum over RGB, so a grey image ``g`` gets exactly the response the RGB
    image ``(g, g, g)`` had. ``k`` channels: the RGB filters tiled to ``k`` and scaled by
    ``3 / k`` (timm's rule), which keeps the response's scale; for ``k`` a multiple of 3 an
    image with ``k`` equal channels gets the RGB response exactly.
    """
    rgb = weight.shape[1]
    if in_channels == rgb:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    tiled = weight.repeat(1, math.ceil(in_channels / rgb), 1, 1)[:, :in_channels]
    return tiled * (rgb / in_channels)


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the model's first ``nn.Conv2d`` (its stem) by one with ``in_channels`` inputs
    whose weights are :func:`adapt_input_weight` of the current ones (pretrained or not)."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    if in_channels < 1:
        raise ConfigError(f"model.in_channels must be >= 1, got {in_channels}")
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_weight(conv.weight, in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


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
    adapt_first_conv(net, in_channels)
    return net


# torchvision's VGG16 "D" layout; building it ourselves skips VGG's 120M-parameter classifier.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def vgg16_features(
    *,
    pretrained: bool = False,
    weights_path: str | None = None,
    in_channels: int = 3,
    weights_tag: str | None = None,
) -> nn.Sequential:
    """torchvision VGG16 ``features[:30]`` (no BatchNorm, no last pool), as in bubbliiiing.

    Layer indices equal torchvision's, so its ``features.*`` weights load; the stride is 16.
    """
    layers: list[nn.Module] = []
    c_in = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = item
    holder = nn.Module()  # gives the keys torchvision's "features." prefix
    holder.features = nn.Sequential(*layers)
    init_conv_weights(holder)
    weights = torchvision_weights("vgg16", weights_tag)  # checked even when not loaded
    if pretrained:
        load_torchvision_weights(holder, weights, weights_path, "vgg16")
    adapt_first_conv(holder, in_channels)
    return holder.features


def encoder_names() -> list[str]:
    """Every torchvision classification model usable as an encoder (those of FAMILIES)."""
    return sorted(n for n in tvm.list_models(module=tvm) if n.startswith(FAMILIES))


def check_encoder_name(name: str, extra: tuple[str, ...] = ()) -> None:
    """ConfigError naming ``model.backbone``, the closest valid names and the families."""
    names = [*extra, *encoder_names()]
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    own = "".join(f"{n!r}, " for n in extra)
    raise ConfigError(
        f"model.backbone={name!r} is not a known encoder{hint}; use {own}or a torchvision "
        f"classification model of the families {', '.join(FAMILIES)}, e.g. resnet18, "
        "resnext50_32x4d, mobilenet_v3_large, efficientnet_b0, regnet_y_400mf, convnext_tiny "
        "(all: segkit.models.backbones.encoder_names())"
    )


def torchvision_weights(name: str, tag: str | None = None) -> WeightsEnum:
    """torchvision's weights enum member ``tag`` (e.g. ``IMAGENET1K_V2``, ``DEFAULT``) of
    model ``name``; None: ``IMAGENET1K_V1`` (the classic recipes) where published, else
    ``DEFAULT``."""
    enum = tvm.get_model_weights(name)
    if tag is None:
        tag = "IMAGENET1K_V1" if "IMAGENET1K_V1" in enum.__members__ else "DEFAULT"
    try:
        return enum[tag]
    except KeyError:
        tags = [w.name for w in enum]
        raise ConfigError(
            f"model.weights_tag={tag!r}: torchvision has no such weights for {name}; "
            f"choose one of {tags} or DEFAULT"
        ) from None


def _strip_head(model: nn.Module) -> None:
    """The classifier head becomes identities: forward still runs, its weights are gone (a
    full torchvision file then loads with the head's keys reported as unexpected)."""
    for name in _HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            setattr(model, name, nn.Identity())


def iter_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks an encoder runs in sequence: top-level children before the head, with a
    plain ``nn.Sequential`` (``features``, ``layer1``, ``trunk_output``) opened one level."""
    blocks = []
    for name, child in model.named_children():
        if name in _HEAD_NAMES:
            break
        if type(child) is nn.Sequential:
            blocks += [(f"{name}.{sub}", m) for sub, m in child.named_children()]
        else:
            blocks.append((name, child))
    return blocks


def _record(calls: list, name: str, module: nn.Module, args: tuple, output: object) -> None:
    calls.append((name, args[0] if args else None, output))


def _probe(model: nn.Module, in_channels: int) -> tuple[torch.Tensor, list[tuple]]:
    """One eval-mode, no-grad forward of a zero image; ``(input, [(block, in, out), ...])``."""
    calls: list[tuple] = []
    hooks = [m.register_forward_hook(partial(_record, calls, n)) for n, m in iter_blocks(model)]
    try:
        x, _ = probe_forward(model, in_channels)
    finally:
        for hook in hooks:
            hook.remove()
    return x, calls


def probe_forward(
    model: nn.Module, in_channels: int, size: int = _PROBE_SIZE
) -> tuple[torch.Tensor, object]:
    """``(x, model(x))`` for a zero image ``(1, in_channels, size, size)`` on the model's device
    and dtype, in eval mode without gradients (BatchNorm statistics untouched; the model's
    train/eval mode is restored)."""
    param = next(model.parameters())
    x = torch.zeros(1, in_channels, size, size, dtype=param.dtype, device=param.device)
    was_training = model.training
    try:
        with torch.no_grad():
            return x, model.eval()(x)
    finally:
        model.train(was_training)


def find_stages(model: nn.Module, in_channels: int, name: str) -> list[tuple[int, int, int]]:
    """``[(block index, output stride, channels), ...]`` by increasing stride: for each stride
    the LAST block of :func:`iter_blocks` producing an NCHW map at that stride.

    Found with one forward of a ``(1, in_channels, 64, 64)`` zero image in eval mode without
    gradients, on the model's device (BatchNorm statistics do not change; a model on the meta
    device costs nothing). The same forward proves that the model's own ``forward`` runs the
    blocks in order, each on the previous one's output, so running them in sequence computes
    what the model computes; a ConfigError says so when it does not.
    """
    x, calls = _probe(model, in_channels)
    names = [n for n, _ in iter_blocks(model)]
    previous, order = x, [block for block, _, _ in calls]
    for _, block_in, block_out in calls:
        if order != names or block_in is not previous:
            raise ConfigError(
                f"model.backbone={name!r}: torchvision's forward does not run its blocks "
                f"{names} one after the other (ran {order}), so it cannot be cut into "
                "encoder stages; choose another backbone"
            )
        previous = block_out
    stages: dict[int, tuple[int, int]] = {}
    for i, (_, _, out) in enumerate(calls):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        if len(shape) == 4 and shape[-1] == shape[-2] and _PROBE_SIZE % shape[-1] == 0:
            stages[_PROBE_SIZE // shape[-1]] = (i, shape[1])
    return [(i, stride, ch) for stride, (i, ch) in sorted(stages.items())]


def _truncate(model: nn.Module, num_blocks: int) -> nn.ModuleDict:
    """The first ``num_blocks`` of :func:`iter_blocks` as a ModuleDict of the model's top-level
    children (a Sequential cut with its indices kept), so state-dict keys stay torchvision's."""
    body, left = nn.ModuleDict(), num_blocks
    for name, child in model.named_children():
        if left <= 0 or name in _HEAD_NAMES:
            break
        if type(child) is nn.Sequential:
            body[name], left = child[:left], left - len(child)
        else:
            body[name], left = child, left - 1
    return body


def torchvision_encoder(
    name: str,
    *,
    pretrained: bool = False,
    weights_path: str | None = None,
    in_channels: int = 3,
    weights_tag: str | None = None,
) -> tuple[nn.ModuleDict, list[int], list[int], list[int]]:
    """torchvision classification model ``name`` as a multi-scale encoder.

    Returns ``(body, taps, channels, strides)``: running the blocks of ``iter_blocks(body)``
    in sequence on ``(N, in_channels, H, W)`` (H and W multiples of ``strides[-1]``), the
    output of block ``taps[i]`` is the map at stride ``strides[i]`` with ``channels[i]``
    channels; strides increase (typically 2, 4, 8, 16, 32). ``body``'s state-dict keys are
    torchvision's (``conv1.weight``, ``features.0.0.weight``, ...). ``pretrained`` loads
    ``weights_tag`` (see :func:`torchvision_weights`) from the hub cache or ``weights_path``.
    """
    check_encoder_name(name)
    weights = torchvision_weights(name, weights_tag)  # checked even when not loaded
    net = tvm.get_model(name, weights=None)
    _strip_head(net)
    if pretrained:
        load_torchvision_weights(net, weights, weights_path, name)
    adapt_first_conv(net, in_channels)
    stages = find_stages(net, in_channels, name)
    taps = [i for i, _, _ in stages]
    body = _truncate(net, taps[-1] + 1)
    return body, taps, [c for _, _, c in stages], [s for _, s, _ in stages]
