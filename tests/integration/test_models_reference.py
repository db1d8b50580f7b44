"""Independent references on the same (random) weights, loaded through segkit's key mapping:
segmentation_models.pytorch's DeepLabV3Plus and transformers' SegFormer give segkit's outputs
to 1e-5; the published key names (Hugging Face files as ``save_pretrained`` writes them, the
official MiT names as SMP's copy of the official encoder spells them) load with nothing
missing. The references are test-only extras (``segkit[test]``): skipped where absent."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from torch import nn

from segkit.io.partial_load import read_state_dict
from segkit.models import DeepLabV3Plus, SegFormer
from segkit.models.mix_transformer import MIT_VARIANTS, MixTransformer
from segkit.models.segformer import load_segformer_weights, to_segkit_names
from segkit.models.weight_names import smp_deeplabv3plus

NUM_CLASSES = 5


def with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms: a wrong mapping cannot hide behind
    identity BatchNorms (the same values reach both models through the state dict)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


# ------------------------------------------------------------------ DeepLabV3+ vs SMP
@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplabv3plus_matches_smp_on_the_same_weights(output_stride):
    smp = pytest.importorskip("segmentation_models_pytorch", reason="SMP: pip install segkit[test]")
    torch.manual_seed(0)
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    reference = smp.DeepLabV3Plus(
        encoder_name="resnet18",
        encoder_weights=None,
        encoder_output_stride=output_stride,
        decoder_atrous_rates=rates,
        classes=NUM_CLASSES,
    )
    reference = with_statistics(reference)
    ours = DeepLabV3Plus(
        NUM_CLASSES, backbone="resnet18", output_stride=output_stride, align_corners=True
    ).eval()
    mapped = smp_deeplabv3plus(reference.state_dict())
    ours.load_state_dict(mapped, strict=True)  # every name maps, nothing left over
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = reference(x), ours(x)["out"]
    assert got.shape == expected.shape == (2, NUM_CLASSES, 64, 96)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert expected.abs().max() > 0.1  # a real signal, not zeros on both sides


# ------------------------------------------------------------------ SegFormer vs transformers
def hf_config(variant: str, num_labels: int = NUM_CLASSES):
    transformers = pytest.importorskip("transformers", reason="pip install segkit[test]")
    spec = MIT_VARIANTS[variant]
    return transformers.SegformerConfig(
        num_labels=num_labels,
        hidden_sizes=list(spec.dims),
        depths=list(spec.depths),
        decoder_hidden_size=spec.decoder_channels,
    )


def published_state(model, tmp_path) -> dict[str, torch.Tensor]:
    """The file a user downloads: ``save_pretrained`` writes the published key names."""
    model.save_pretrained(tmp_path)
    return safetensors.torch.load_file(tmp_path / "model.safetensors")


def test_segformer_b0_matches_transformers_on_the_same_weights(tmp_path):
    transformers = pytest.importorskip("transformers", reason="pip install segkit[test]")
    torch.manual_seed(0)
    reference = transformers.SegformerForSemanticSegmentation(hf_config("b0"))
    reference = with_statistics(reference)
    state = published_state(reference, tmp_path)
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in state  # published names
    ours = SegFormer(NUM_CLASSES, "b0", layer_norm_eps=1e-5).eval()  # HF's LayerNorm eps
    ours.load_state_dict(to_segkit_names(state), strict=True)
    for h, w in ((64, 96), (67, 93)):
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            logits = reference(pixel_values=x).logits  # stride 4
            got = ours(x)["out"]
        expected = nn.functional.interpolate(logits, size=(h, w), mode="bilinear")
        assert got.shape == (2, NUM_CLASSES, h, w)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert expected.abs().max() > 0.1


@pytest.mark.parametrize("variant", ["b1", "b2"])
def test_wider_segformers_have_the_published_names_and_shapes(variant):
    """B1 (wide MiT, 256 decoder) and B2 (deeper, 768 decoder): transformers' model under the
    names its files carry maps one to one onto segkit's names and shapes, with equal parameter
    counts (meta device). B3-B5 only add blocks: their sizes are checked against the published
    counts in test_models_segformer.py; B0's numbers are checked above."""
    transformers = pytest.importorskip("transformers", reason="pip install segkit[test]")
    with torch.device("meta"):
        reference = transformers.SegformerForSemanticSegmentation(hf_config(variant))
        ours = SegFormer(NUM_CLASSES, variant)
    mapped = to_segkit_names(published_names(reference))
    expected = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in reference.parameters())


def published_names(model) -> dict[str, torch.Tensor]:
    """The state dict under the names ``save_pretrained`` writes (transformers >= 5 renames
    on load and reverts on save; older versions keep the published names in memory)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return model.state_dict()
    return revert_weight_conversion(model, model.state_dict())


# ------------------------------------------------------------------ published MiT files
def test_official_mit_names_are_segkits(tmp_path):
    """SMP ships the official MiT encoder code: its names and shapes are segkit's (the other
    sizes differ in block counts only: checked against transformers above); an official
    ImageNet file (those names plus the classifier ``head``) loads with nothing missing."""
    pytest.importorskip("segmentation_models_pytorch", reason="pip install segkit[test]")
    from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders

    torch.manual_seed(0)
    entry = mix_transformer_encoders["mit_b0"]
    official = entry["encoder"](**entry["params"])
    ours = MixTransformer("b0")
    assert {k: v.shape for k, v in official.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    state = {k: v for k, v in official.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.randn(1000, 256), torch.zeros(1000)
    torch.save(state, tmp_path / "mit_b0.pth")
    backbone = MixTransformer("b0")
    report = load_segformer_weights(backbone, "b0", str(tmp_path / "mit_b0.pth"))
    assert report.missing == [] and sorted(report.unexpected) == ["head.bias", "head.weight"]
    assert torch.equal(backbone.block4[1].attn.kv.weight, state["block4.1.attn.kv.weight"])


def test_hugging_face_imagenet_file_loads_from_the_cache(tmp_path, monkeypatch):
    """``nvidia/mit-b0`` (SegformerForImageClassification) in the HF cache: found without a
    path, nothing missing, only the classifier unexpected, key + value joined into ``kv``."""
    transformers = pytest.importorskip("transformers", reason="pip install segkit[test]")
    torch.manual_seed(0)
    reference = transformers.SegformerForImageClassification(hf_config("b0", num_labels=10))
    snapshot = tmp_path / "models--nvidia--mit-b0" / "snapshots" / "0123abc"
    state = published_state(reference, snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    model = SegFormer(NUM_CLASSES, "b0", pretrained=True)
    mapped = read_state_dict(snapshot / "model.safetensors")
    assert mapped.keys() == state.keys()
    key = state["segformer.encoder.block.2.1.attention.self.key.weight"]
    value = state["segformer.encoder.block.2.1.attention.self.value.weight"]
    assert torch.equal(model.backbone.block3[1].attn.kv.weight, torch.cat([key, value]))
    report = load_segformer_weights(MixTransformer("b0"), "b0", None)
    assert report.missing == []
    assert sorted(report.unexpected) == ["classifier.bias", "classifier.weight"]
