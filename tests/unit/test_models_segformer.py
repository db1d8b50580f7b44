"""SegFormer: every size B0-B5 composes from its config and has the published size (built on
the meta device), the maps' sizes, the missing-weights message, and grey inputs. Numbers
against transformers: tests/integration/test_models_reference.py."""

from __future__ import annotations

import pytest
import torch

from segkit.errors import CheckpointError, ConfigError
from segkit.models import SegFormer
from segkit.run import compose_model_config, instantiate_model

# Parameters (millions) of SegFormer-B0..B5 on ADE20K (150 classes), the paper's Table 1 /
# the official model zoo; the encoder alone (MiT) is the rest minus the all-MLP decoder.
PUBLISHED_M = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@pytest.mark.parametrize("variant", sorted(PUBLISHED_M))
def test_every_size_composes_and_has_the_published_parameter_count(variant):
    cfg = compose_model_config(f"segformer_{variant}", 150, ["model.pretrained=false"])
    assert cfg["variant"] == variant
    with torch.device("meta"):
        model = instantiate_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 1) == PUBLISHED_M[variant]
    widths = [model.backbone.get_submodule(f"norm{i}").normalized_shape[0] for i in range(1, 5)]
    assert widths == ([32, 64, 160, 256] if variant == "b0" else [64, 128, 320, 512])


def test_maps_at_strides_4_to_32_rounding_up():
    torch.manual_seed(0)
    model = SegFormer(3, "b0").eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 67, 93))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (32, 17, 24), (64, 9, 12), (160, 5, 6), (256, 3, 3)
    ]  # fmt: skip


def test_missing_weights_name_both_published_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError) as excinfo:
        SegFormer(3, "b2", pretrained=True)
    message = str(excinfo.value)
    assert "mit_b2.pth" in message and "nvidia/mit-b2" in message
    assert str(tmp_path) in message and "model.weights_path" in message
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        SegFormer(3, "b0", pretrained=True, weights_path=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="model.variant='b9'"):
        SegFormer(3, "b9")


def test_grey_input_gets_the_rgb_response_of_the_grey_image():
    """in_channels=1 sums the first patch embedding over RGB (the pretrained filters kept)."""
    torch.manual_seed(0)
    rgb = SegFormer(3, "b0").eval()
    grey = SegFormer(3, "b0", in_channels=1).eval()
    state = rgb.state_dict()
    state["backbone.patch_embed1.proj.weight"] = state["backbone.patch_embed1.proj.weight"].sum(
        1, keepdim=True
    )
    grey.load_state_dict(state)
    g = torch.randn(1, 1, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(grey(g)["out"], rgb(g.expand(-1, 3, -1, -1))["out"])
    assert grey.backbone.patch_embed1.proj.in_channels == 1
