"""Every torchvision encoder name builds a UNet (shapes on the meta device), and one small variant
per family runs the decoder at odd sizes with 1 and 3 input channels."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.regnet import BlockParams

from segkit.models import UNet
from segkit.models.backbones import encoder_names

NUM_CLASSES = 3


# (channels, strides) per family's small variant, from the architectures' papers / torchvision
EXPECTED = {
    "resnet18": ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    "resnext50_32x4d": ([64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    "mobilenet_v2": ([16, 24, 32, 96, 1280], [2, 4, 8, 16, 32]),
    "mobilenet_v3_small": ([16, 16, 24, 48, 576], [2, 4, 8, 16, 32]),
    "mobilenet_v3_large": ([16, 24, 40, 112, 960], [2, 4, 8, 16, 32]),
    "efficientnet_b0": ([16, 24, 40, 112, 1280], [2, 4, 8, 16, 32]),
    "regnet_x_400mf": ([32, 32, 64, 160, 400], [2, 4, 8, 16, 32]),
    "regnet_y_400mf": ([32, 48, 104, 208, 440], [2, 4, 8, 16, 32]),
    "convnext_tiny": ([96, 192, 384, 768], [4, 8, 16, 32]),
    "vgg11_bn": ([64, 128, 256, 512, 512, 512], [1, 2, 4, 8, 16, 32]),
    "vgg16": ([64, 128, 256, 512, 512], [1, 2, 4, 8, 16]),  # bubbliiiing's, stride 16
    "shufflenet_v2_x0_5": ([24, 24, 48, 96, 1024], [2, 4, 8, 16, 32]),
    "mnasnet0_5": ([8, 16, 24, 48, 1280], [2, 4, 8, 16, 32]),
}


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("backbone", sorted(EXPECTED))
def test_every_family_builds_a_unet_at_odd_sizes(backbone, in_channels):
    torch.manual_seed(0)
    model = UNet(NUM_CLASSES, backbone=backbone, in_channels=in_channels).eval()
    channels, strides = EXPECTED[backbone]
    assert (model.encoder.channels, model.encoder.strides) == (channels, strides)
    with torch.no_grad():
        for h, w in ((67, 93), (33, 47)):
            out = model(torch.randn(1, in_channels, h, w))
            assert set(out) == {"out"} and out["out"].shape == (1, NUM_CLASSES, h, w)
            assert torch.isfinite(out["out"]).all()
    with pytest.raises(ValueError, match=rf"\(N, {in_channels}, H, W\)"):
        model(torch.randn(1, 4 - in_channels, 32, 32))


def _regnet_params_on_cpu(monkeypatch) -> None:
    """torchvision's RegNet builders compute their widths with tensors (.tolist()), which the
    meta device cannot do: compute those on the CPU, build the modules on meta."""
    compute = BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return compute(cls, *args, **kwargs)

    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))


@pytest.mark.parametrize("backbone", encoder_names())
def test_every_torchvision_encoder_name_builds_on_meta(backbone, monkeypatch):
    """Every name (ResNet 18-152, ResNeXt, Wide ResNet, MobileNetV2/V3, EfficientNet B0-B7 and
    V2, RegNet X/Y, ConvNeXt, VGG, ShuffleNetV2, MNASNet): shapes only, on the meta device.
    Building runs the encoder once (its stages are found by a probe forward); the decoder on
    those stages runs at odd sizes per family in the test above."""
    _regnet_params_on_cpu(monkeypatch)
    with torch.device("meta"):
        model = UNet(NUM_CLASSES, backbone=backbone, in_channels=1)
    strides, channels = model.encoder.strides, model.encoder.channels
    assert strides[-1] in (16, 32) and all(b == 2 * a for a, b in zip(strides, strides[1:]))
    assert len(model.ups) == len(strides) - 1 and len(channels) == len(strides)
    first = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1
