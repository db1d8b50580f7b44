"""Model details: aux heads, the STDC skip decoder and strip pooling, grouped convs under
autocast, frozen BatchNorm, pretrained weights from the hub cache or a file, input errors, UNet
padding; the STDC detail loss. Its torch.export with symbolic sizes:
tests/integration/test_onnx_export.py; the contract over every conf/model/*.yaml:
tests/contracts/test_every_model.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segkit.errors import ConfigError
from segkit.losses.detail import DetailLoss
from segkit.models import BiSeNetV1, BiSeNetV2, UNet
from segkit.models.blocks import GroupedConv2d, StripPooling
from segkit.run import instantiate_model
from tests.conftest import model_from_config, root_error

NUM_CLASSES = 3


def test_aux_false_gives_no_aux():
    model = model_from_config("bisenetv2", "model.aux=false").train()
    assert set(model(torch.randn(2, 3, 32, 32))) == {"out"}


@pytest.mark.parametrize("stride, head_hw", [(4, (17, 24)), (2, (34, 47))])
def test_stdc_skip_decoder_predicts_from_the_quarter_or_half_map(stride, head_hw):
    torch.manual_seed(0)
    model = model_from_config("stdc1", f"model.decoder_stride={stride}")
    sizes = {}
    model.head.register_forward_hook(lambda m, i, o: sizes.update(head=o.shape[-2:]))
    model.train()
    out = model(torch.randn(2, 3, 67, 93))
    assert sizes["head"] == head_hw  # 67x93 -> 34x47 (1/2) -> 17x24 (1/4), not 9x12 (1/8)
    assert out["out"].shape == (2, NUM_CLASSES, 67, 93)
    (out["out"].mean() + out["detail"].mean() + sum(a.mean() for a in out["aux"])).backward()
    assert all(p.grad is not None for p in model.parameters())
    # the stride-4 weights keep their names: stride-4 checkpoints load into the same modules
    names = {k for k in model.state_dict() if k.startswith("head.")}
    assert any(k.startswith("head.fine.") for k in names) == (stride == 2)
    assert {"head.high.conv.weight", "head.low.conv.weight", "head.classifier.weight"} <= names
    with pytest.raises(Exception) as excinfo:
        model_from_config("stdc1", "model.decoder_stride=16")
    err = root_error(excinfo)
    assert isinstance(err, ConfigError) and "model.decoder_stride=16: choose 8, 4 or 2" in str(err)


def test_strip_pooling_sees_exactly_the_neighbouring_rows_and_columns():
    """Output (i, j) depends on rows i-1..i+1 and columns j-1..j+1 in full (the 3x1 / 1x3 convs
    on the row and column means) and on nothing else."""
    torch.manual_seed(0)
    block = StripPooling(4).eval()
    x = torch.randn(1, 4, 9, 11, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out[0, :, 4, 6].sum().backward()
    reached = x.grad[0].abs().sum(0) > 0
    expected = torch.zeros(9, 11, dtype=torch.bool)
    expected[3:6, :] = True
    expected[:, 5:8] = True
    assert torch.equal(reached, expected)
    # the gate lies in (0, 1): the block only attenuates
    assert (out.abs() <= x.abs() + 1e-6).all()


def test_stdc_strip_pool_gates_the_decoder_and_needs_a_skip_decoder():
    torch.manual_seed(0)
    model = model_from_config("stdc1", "model.decoder_stride=4", "model.strip_pool=true").train()
    out = model(torch.randn(2, 3, 67, 93))
    assert out["out"].shape == (2, NUM_CLASSES, 67, 93)
    out["out"].mean().backward()
    strip = [n for n, p in model.named_parameters() if n.startswith("head.strip.")]
    assert strip and all(dict(model.named_parameters())[n].grad is not None for n in strip)
    # without it the stride-4 names are unchanged, so older checkpoints still load
    plain = model_from_config("stdc1", "model.decoder_stride=4")
    assert set(plain.state_dict()) == {
        k for k in model.state_dict() if not k.startswith("head.strip.")
    }
    with pytest.raises(Exception) as excinfo:
        model_from_config("stdc1", "model.strip_pool=true")
    err = root_error(excinfo)
    assert isinstance(err, ConfigError) and "model.decoder_stride=4" in str(err)


def test_strided_grouped_conv_runs_in_float32_under_cpu_autocast():
    """Strided grouped convs leave bf16 autocast on the CPU (its bf16 kernels are slow there):
    the result equals the float32 conv; stride-1 ones and plain calls are nn.Conv2d's."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 11)
    strided = GroupedConv2d(8, 16, 3, 2, 1, groups=8, bias=False)
    reference = nn.Conv2d(8, 16, 3, 2, 1, groups=8, bias=False)
    reference.load_state_dict(strided.state_dict())  # same keys and shapes
    expected = reference(x.bfloat16().float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = strided(x.bfloat16())
        plain = reference(x.bfloat16())
        flat = GroupedConv2d(8, 8, 3, 1, 1, groups=8)(x)
    assert out.dtype == torch.float32 and plain.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(plain.float(), expected)  # bf16 weights: what the cast avoids
    assert flat.dtype == torch.bfloat16  # stride 1: bf16 is as fast there
    assert torch.equal(strided(x), reference(x))  # no autocast: exactly nn.Conv2d
    # the models use it where they have strided grouped convs
    for name in ("stdc1", "bisenetv2"):
        model = model_from_config(name)
        strided_groups = [
            m for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.stride != (1, 1)
        ]  # fmt: skip
        assert strided_groups and all(isinstance(m, GroupedConv2d) for m in strided_groups)


def test_freeze_bn_survives_train_after_eval():
    model = UNet(NUM_CLASSES, base_channels=4)
    model.freeze_encoder(True)
    model.eval().train()
    assert not model.encoder.inc[0].bn.training
    assert model.ups[0].conv[0].bn.training


def test_pretrained_loads_from_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = torchvision.models.resnet18(weights=None).state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    model = BiSeNetV1(NUM_CLASSES, pretrained=True)
    backbone = model.context_path.backbone
    assert torch.equal(backbone.conv1.weight, reference["conv1.weight"])
    assert torch.equal(backbone.layer4[1].bn2.running_var, reference["layer4.1.bn2.running_var"])


def test_pretrained_weights_path_loads_encoder_only(tmp_path):
    source = BiSeNetV2(NUM_CLASSES)
    encoder = {
        k: v for k, v in source.state_dict().items() if k.startswith(("detail.", "segment."))
    }
    torch.save(encoder, tmp_path / "backbone_v2.pth")
    model = BiSeNetV2(NUM_CLASSES, pretrained=True, weights_path=str(tmp_path / "backbone_v2.pth"))
    assert torch.equal(model.detail.S1[0].conv.weight, source.detail.S1[0].conv.weight)
    assert not torch.equal(model.head.conv.conv.weight, source.head.conv.conv.weight)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        BiSeNetV1(NUM_CLASSES, pretrained=True, weights_path=str(tmp_path / "missing.pth"))


def test_bad_inputs_raise_clear_errors():
    model = UNet(NUM_CLASSES, base_channels=4)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="floating point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch of at least 2"):
        BiSeNetV2(NUM_CLASSES).train()(torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match=r"model.backbone='resnet19'.*did you mean resnet18"):
        UNet(NUM_CLASSES, backbone="resnet19")
    with pytest.raises(ConfigError, match="'plain', 'vgg16', or a torchvision"):
        UNet(NUM_CLASSES, backbone="swin_t")  # channels-last transformer: not a CNN family


def test_unet_pads_to_multiple_and_crops_back():
    # Zero padding at the bottom/right: the top-left logits of a 17x17 input equal those of
    # the same image zero-padded to 32x32 by hand.
    torch.manual_seed(0)
    model = UNet(NUM_CLASSES, base_channels=4).eval()
    x = torch.randn(1, 3, 17, 17)
    padded = torch.nn.functional.pad(x, (0, 15, 0, 15))
    with torch.no_grad():
        assert torch.allclose(model(x)["out"], model(padded)["out"][..., :17, :17], atol=1e-5)


# ---- STDC detail loss: boundary target and loss values computed by hand -------------------
def halves_label() -> torch.Tensor:
    """8x8: columns 0-3 class 0, columns 4-7 class 1."""
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[..., 4:] = 1
    return label


def test_detail_boundary_target_by_hand():
    # stride 1: |laplacian| > 0 at columns 3 and 4; stride 2 (centres 0,2,4,6): column 4 ->
    # upsampled columns 4-5; stride 4 (centres 0,4): column 4 -> columns 4-7. Fused
    # 0.6 b1 + 0.3 b2 + 0.1 b4 > 0.1: columns 3 (0.6), 4 (1.0), 5 (0.4); 6 and 7 (0.1) are not.
    target = DetailLoss().boundary_target(halves_label())
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., 3:6] = 1
    assert torch.equal(target, expected)


def test_detail_loss_values_by_hand():
    loss = DetailLoss()
    label = halves_label()
    # zero logits: BCE = ln 2; dice = 1 - (2 * 0.5 * 24 + 1) / (0.5 * 64 + 24 + 1)
    zero = torch.zeros(1, 1, 4, 4)
    expected = math.log(2) + 1 - 25 / 57
    assert loss({"detail": zero}, label).item() == pytest.approx(expected, rel=1e-5)
    # ignore column 0: valid pixels 56; column 1 now borders the ignore band -> boundary too
    label[..., 0] = 255
    expected = math.log(2) + 1 - (2 * 0.5 * 32 + 1) / (0.5 * 56 + 32 + 1)
    assert loss(zero, label).item() == pytest.approx(expected, rel=1e-5)
    # confident and right: ~0
    perfect = (loss.boundary_target(label) * 2 - 1) * 30
    assert loss(perfect, label).item() < 1e-3
    with pytest.raises(KeyError, match="detail"):
        loss({"out": zero}, label)


def test_detail_guided_loss_adds_detail_only_when_present():
    from segkit.losses import CrossEntropyLoss

    label = halves_label()
    logits = torch.zeros(1, NUM_CLASSES, 8, 8)
    detail = torch.zeros(1, 1, 8, 8)
    ce = CrossEntropyLoss(ignore_index=255)
    main = ce({"out": logits, "detail": detail}, label)  # main losses ignore extra keys
    assert main.item() == pytest.approx(math.log(NUM_CLASSES), rel=1e-5)
    from segkit.losses import CEDetailLoss

    guided = CEDetailLoss(detail_weight=0.5, ignore_index=255)
    with_detail = guided({"out": logits, "detail": detail}, label)
    extra = 0.5 * DetailLoss()(detail, label)
    assert with_detail.item() == pytest.approx(main.item() + extra.item(), rel=1e-5)
    assert guided({"out": logits}, label).item() == pytest.approx(main.item())


def test_ohem_detail_loss_is_ohem_plus_the_detail_term():
    """STDC's own loss: OHEM over the segmentation heads (confidently right pixels dropped),
    plus the weighted detail term when the outputs carry it."""
    from segkit.losses import OhemDetailLoss

    label = halves_label()
    logits = torch.zeros(1, NUM_CLASSES, 8, 8)
    logits[0, 0][label[0] == 0] = 10.0  # class-0 pixels: confidently right, easy
    detail = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    loss = OhemDetailLoss(detail_weight=0.5, thresh=0.7, min_kept=0, ignore_index=255)
    hard = label[0] != 0  # the only pixels OHEM keeps: uniform logits, CE = log C each
    assert hard.any() and (~hard).any()
    seg = loss({"out": logits}, label)
    assert seg.item() == pytest.approx(math.log(NUM_CLASSES), rel=1e-5)
    extra = 0.5 * DetailLoss()(detail, label)
    total = loss({"out": logits, "detail": detail}, label)
    assert total.item() == pytest.approx(seg.item() + extra.item(), rel=1e-5)


def test_loss_ohem_detail_trains_the_stdc_detail_head():
    from hydra.utils import instantiate

    from segkit.losses import OhemDetailLoss
    from segkit.run.building import unused_heads
    from tests.conftest import compose_train

    cfg = compose_train("model=stdc1", "model.pretrained=false", "loss=ohem_detail")
    loss = instantiate(cfg.loss)
    assert isinstance(loss, OhemDetailLoss) and (loss.thresh, loss.min_kept) == (0.7, 100000)
    model = instantiate_model(cfg.model)
    assert not unused_heads(model, loss)
    assert unused_heads(model, instantiate(compose_train("model=stdc1", "loss=ohem").loss))
