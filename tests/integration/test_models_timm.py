"""timm encoders (``model.backbone=tu-<name>``, the ``segkit[timm]`` extra) in UNet and
DeepLabV3+: timm's own feature maps, weights from timm's caches (never downloaded), grey
inputs, and a clear message without timm."""

from __future__ import annotations

import importlib

import pytest
import safetensors.torch
import torch

from segkit.errors import CheckpointError, ConfigError
from segkit.models import DeepLabV3Plus, UNet


@pytest.fixture(autouse=True)
def timm():
    """Every test here needs the timm extra (imported per test, not at collection)."""
    return pytest.importorskip("timm", reason="the timm extra: pip install segkit[timm]")


NUM_CLASSES = 3


def test_unet_runs_timms_own_features(timm):
    torch.manual_seed(0)
    model = UNet(NUM_CLASSES, backbone="tu-resnet18").eval()
    assert model.encoder.channels == [64, 64, 128, 256, 512]
    assert model.encoder.strides == [2, 4, 8, 16, 32]
    reference = timm.create_model("resnet18", features_only=True).eval()
    reference.load_state_dict(model.encoder.model.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(model.encoder(x), reference(x)):
            assert torch.equal(ours, theirs)
        assert model(torch.randn(1, 3, 67, 93))["out"].shape == (1, NUM_CLASSES, 67, 93)


def test_deeplabv3plus_uses_timms_dilation():
    with torch.device("meta"):
        model = DeepLabV3Plus(NUM_CLASSES, backbone="tu-resnet18", output_stride=8)
    assert model.encoder.strides == [2, 4, 8, 8, 8]
    out = model.eval()(torch.zeros(2, 3, 67, 93, device="meta"))["out"]
    assert out.shape == (2, NUM_CLASSES, 67, 93)


def _cache_weights(root, repo: str) -> dict[str, torch.Tensor]:
    """A timm ImageNet file where timm's Hugging Face download would have put it."""
    import timm

    torch.manual_seed(1)
    state = timm.create_model("resnet18").state_dict()  # classifier ``fc`` included
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / "0a1b2c"
    snapshot.mkdir(parents=True)
    safetensors.torch.save_file(state, snapshot / "model.safetensors")
    return state


def test_pretrained_weights_come_from_timms_cache_only(timm, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    with pytest.raises(CheckpointError) as excinfo:
        UNet(NUM_CLASSES, backbone="tu-resnet18", pretrained=True)
    assert "timm/resnet18.a1_in1k" in str(excinfo.value)
    assert "model.weights_path" in str(excinfo.value)
    state = _cache_weights(tmp_path, "timm/resnet18.a1_in1k")
    model = UNet(NUM_CLASSES, backbone="tu-resnet18", pretrained=True)
    assert torch.equal(model.encoder.model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    grey = UNet(NUM_CLASSES, backbone="tu-resnet18", pretrained=True, in_channels=1)
    stem = grey.encoder.model.conv1.weight
    torch.testing.assert_close(stem, state["conv1.weight"].sum(1, keepdim=True))


def test_unknown_name_and_missing_timm_say_what_to_do(monkeypatch):
    with pytest.raises(ConfigError, match="timm has no model 'resnet_nope'"):
        UNet(NUM_CLASSES, backbone="tu-resnet_nope")
    real = importlib.import_module

    def without_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_timm)
    with pytest.raises(ConfigError, match=r"pip install 'segkit\[timm\]'"):
        DeepLabV3Plus(NUM_CLASSES, backbone="tu-resnet18")
