"""DeepLabV3+ on torchvision encoders: dilation to output stride 16 / 8 for every family that
allows it (shapes on the meta device), a clear refusal where it cannot, and the ASPP's image
pooling branch. Numbers against SMP: tests/integration/test_models_reference.py."""

from __future__ import annotations

import pytest
import torch

from segkit.errors import ConfigError
from segkit.models import DeepLabV3Plus
from segkit.models.deeplabv3plus import ASPP

NUM_CLASSES = 3


@pytest.mark.parametrize(
    "backbone, output_stride",
    [("resnet50", 16), ("resnet50", 8), ("mobilenet_v3_large", 16), ("efficientnet_b0", 8)],
)
def test_dilated_encoders_keep_the_map_at_the_output_stride(backbone, output_stride):
    with torch.device("meta"):
        model = DeepLabV3Plus(NUM_CLASSES, backbone=backbone, output_stride=output_stride)
    strides = model.encoder.strides
    assert strides[-1] == output_stride and 4 in strides
    x = torch.zeros(2, 3, 67, 93, device="meta")
    padded = (80, 96) if output_stride == 16 else (72, 96)  # next multiples of the stride
    feats = model.encoder(torch.zeros(2, 3, *padded, device="meta"))
    for f, s, c in zip(feats, strides, model.encoder.channels):
        assert tuple(f.shape[1:]) == (c, padded[0] // s, padded[1] // s)
    assert model.eval()(x)["out"].shape == (2, NUM_CLASSES, 67, 93)


def test_an_encoder_that_cannot_be_dilated_says_what_to_do():
    with pytest.raises(ConfigError, match="output_stride=32") as excinfo:
        DeepLabV3Plus(NUM_CLASSES, backbone="convnext_tiny", output_stride=16)
    assert "tu-" in str(excinfo.value)
    with torch.device("meta"):
        model = DeepLabV3Plus(NUM_CLASSES, backbone="convnext_tiny", output_stride=32)
    assert model.encoder.strides == [4, 8, 16, 32]
    with pytest.raises(ConfigError, match="model.output_stride=4"):
        DeepLabV3Plus(NUM_CLASSES, backbone="resnet18", output_stride=4)


def test_image_pooling_branch_sees_the_whole_image():
    """Changing one far pixel changes every output pixel only through the pooling branch:
    with the other branches' 3x3 reach, a pixel 30 px away is outside them."""
    torch.manual_seed(0)
    aspp = ASPP(4, 8, (1, 2, 3)).eval()
    x = torch.randn(1, 4, 40, 40)
    far = x.clone()
    far[0, :, 39, 39] += 5.0
    with torch.no_grad():
        a, b = aspp(x), aspp(far)
        aspp.pooling.conv.weight.zero_()
        c, d = aspp(x), aspp(far)
    assert not torch.allclose(a[0, :, 0, 0], b[0, :, 0, 0])
    torch.testing.assert_close(c[0, :, 0, 0], d[0, :, 0, 0])


def test_training_needs_two_images_for_the_pooling_branch():
    model = DeepLabV3Plus(NUM_CLASSES, backbone="resnet18").train()
    with pytest.raises(ValueError, match="batch of at least 2"):
        model(torch.randn(1, 3, 32, 32))
