"""torchvision encoders in the UNet: stages by stride, torchvision's own blocks, 1-channel input
adapting pretrained weights, offline weight files, and the old state-dict layouts. Every family
and every name: tests/contracts/test_every_encoder.py."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torchvision
from torch import nn

from segkit.errors import CheckpointError, ConfigError
from segkit.models import UNet
from segkit.models.backbones import (
    adapt_input_weight,
    find_stages,
    torchvision_encoder,
)
from segkit.reporting.feature_maps import FeatureRecorder

NUM_CLASSES = 3


def test_encoder_runs_torchvisions_own_blocks():
    # same weights: the deepest map is torchvision's features(x); every block is a real module
    # call, so forward hooks on any of them (feature-map recording) fire
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small().eval()
    model = UNet(NUM_CLASSES, backbone="mobilenet_v3_small").eval()
    body = {k: v for k, v in reference.state_dict().items() if not k.startswith("classifier")}
    model.encoder.body.load_state_dict(body, strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), FeatureRecorder(model, ["encoder.body.features.3"]) as rec:
        feats = model.encoder(x)
        assert torch.equal(feats[-1], reference.features(x))
        assert torch.equal(rec.features["encoder.body.features.3"], feats[2])


def test_find_stages_refuses_a_forward_that_is_not_sequential():
    class Shuffled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.stage = nn.Conv2d(8, 8, 3, stride=2, padding=1)

        def forward(self, x):
            return self.stage(self.stem(x)) + self.stem(x)[:, :, ::2, ::2]  # stem runs twice

    with pytest.raises(ConfigError, match="one after the other"):
        find_stages(Shuffled(), 3, "shuffled")
    sequential = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
    holder = nn.Module()
    holder.features = sequential
    holder.forward = sequential.forward
    assert find_stages(holder, 3, "toy") == [(1, 2, 8), (2, 4, 8)]


# ---- input channels: the stem's RGB weights are adapted -------------------------------------
def test_adapted_stem_gives_the_rgb_response_of_a_grey_image():
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 5, 3, bias=False)
    grey = torch.randn(2, 1, 8, 8)
    one = adapt_input_weight(rgb.weight, 1)
    assert torch.allclose(
        nn.functional.conv2d(grey, one), rgb(grey.expand(-1, 3, -1, -1)), atol=1e-6
    )
    six = adapt_input_weight(rgb.weight, 6)  # tiled twice, halved
    assert torch.allclose(six[:, 3:], rgb.weight / 2) and torch.allclose(six[:, :3], six[:, 3:])
    assert torch.allclose(
        nn.functional.conv2d(grey.expand(-1, 6, -1, -1), six),
        rgb(grey.expand(-1, 3, -1, -1)),
        atol=1e-6,
    )
    four = adapt_input_weight(rgb.weight, 4)
    assert torch.allclose(four[:, 3], rgb.weight[:, 0] * 3 / 4)


def test_pretrained_weights_path_loads_and_adapts_the_first_conv(tmp_path):
    torch.manual_seed(1)
    saved = torchvision.models.mobilenet_v3_small().state_dict()  # a full file, with classifier
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(saved, path)
    kwargs = {"backbone": "mobilenet_v3_small", "pretrained": True, "weights_path": str(path)}
    grey = UNet(NUM_CLASSES, in_channels=1, **kwargs).encoder.body
    stem = saved["features.0.0.weight"]
    assert grey.features[0][0].weight.shape == (16, 1, 3, 3)
    assert torch.allclose(grey.features[0][0].weight, stem.sum(dim=1, keepdim=True))
    last = "features.12.0.weight"
    assert torch.equal(grey.state_dict()[last], saved[last])
    rgb = UNet(NUM_CLASSES, in_channels=3, **kwargs).encoder.body
    assert torch.equal(rgb.features[0][0].weight, stem)


def test_pretrained_from_the_hub_cache_for_resnet18_grey(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    saved = torchvision.models.resnet18().state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(saved, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    body = UNet(NUM_CLASSES, backbone="resnet18", pretrained=True, in_channels=1).encoder.body
    assert torch.allclose(body.conv1.weight, saved["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(body.layer4[1].bn2.running_var, saved["layer4.1.bn2.running_var"])
    # VGG16 (bubbliiiing's) adapts its first conv the same way
    layers = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # features
    vgg = {f"features.{k}": v for k, v in layers.state_dict().items()}
    torch.save(vgg, tmp_path / "checkpoints" / "vgg16-397923af.pth")
    features = UNet(NUM_CLASSES, backbone="vgg16", pretrained=True, in_channels=1).encoder.features
    assert torch.allclose(features[0].weight, vgg["features.0.weight"].sum(dim=1, keepdim=True))


def test_weights_tag_picks_the_file_and_bad_tags_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        torchvision_encoder("resnet50", pretrained=True, weights_tag="IMAGENET1K_V2")
    assert str(tmp_path / "checkpoints" / "resnet50-11ad3fa6.pth") in str(err.value)
    assert "model.weights_path" in str(err.value)
    for pretrained in (True, False):  # a typo is reported even while nothing is loaded
        with pytest.raises(ConfigError, match=r"weights_tag='V3'.*IMAGENET1K_V1"):
            torchvision_encoder("resnet50", pretrained=pretrained, weights_tag="V3")


def test_decoder_channels_option_and_its_check():
    model = UNet(NUM_CLASSES, backbone="mobilenet_v3_small", decoder_channels=[8, 16, 24, 32])
    assert [up.conv[0].out_channels for up in model.ups] == [8, 16, 24, 32]
    assert model.classifier.in_channels == 8
    with pytest.raises(ConfigError, match=r"decoder_channels=\[8, 16\].*give 3"):
        UNet(NUM_CLASSES, backbone="convnext_tiny", decoder_channels=[8, 16])


# ---- checkpoints saved before the generic encoders still load --------------------------------
# sha256 of "key:[shape]" lines (sorted) of UNet(3, backbone=..., base_channels=8), taken from
# the commit before this change (plain encoder, bubbliiiing VGG16, IntermediateLayerGetter
# ResNet50): a saved state dict of these models loads only while the layout is the same.
OLD_LAYOUTS = {
    "plain": "5a8f3e6bbe3a9e7802ccf80df859a7bbcecffb89723eddbbd5eb6b9783c50efe",
    "vgg16": "e94d16f74d0ca13b2e42318cf90c5eb37e4586c89f1bf2bd5bec33721046e90b",
    "resnet50": "0d0ac42d669ab2eb47a740fc6f4d4fb0f0a74432c36d848a4a434865de2f72d1",
}


@pytest.mark.parametrize("backbone", sorted(OLD_LAYOUTS))
def test_state_dict_layout_of_the_shipped_unets_is_unchanged(backbone):
    state = UNet(NUM_CLASSES, backbone=backbone, base_channels=8).state_dict()
    text = "\n".join(f"{k}:{list(v.shape)}" for k, v in sorted(state.items()))
    assert hashlib.sha256(text.encode()).hexdigest() == OLD_LAYOUTS[backbone]
    if backbone == "resnet50":
        assert "encoder.body.layer4.2.conv3.weight" in state and "up_conv.1.0.weight" in state


def test_grey_unet_trains_a_step():
    torch.manual_seed(0)
    model = UNet(NUM_CLASSES, backbone="mobilenet_v3_small", in_channels=1).train()
    x, y = torch.randn(2, 1, 45, 61), torch.randint(0, NUM_CLASSES, (2, 45, 61))
    loss = nn.functional.cross_entropy(model(x)["out"], y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
