"""Every model config (``conf/model/*.yaml``; of SegFormer the B0, whose B1-B5 add blocks, not
operations): shapes at odd sizes, aux only in training, backward, encoder freezing, offline
pretrained handling, ONNX export parity at sizes other than the export size, and one parameter
group per parameter with its rate."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segkit.dist import DistInfo
from segkit.evaluation.onnx import OnnxModel, export_onnx, parity_check
from segkit.run import build_model, build_optimizer
from tests.conftest import MODEL_NAMES, compose_train, model_from_config, root_error
from tests.onnx_parity import EXPORT_HW, LABELS, SIZES, demo_images, with_statistics

NUM_CLASSES = 3


def encoder_batchnorms(model) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for enc in model.encoder_modules()
        for m in enc.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


@pytest.fixture(scope="module", params=MODEL_NAMES)
def built(request) -> tuple[str, nn.Module]:
    """``(name, model)``: each model config built once (random init, seed 0) for the tests
    below, which take a copy (:func:`fresh`). Module scope: pytest runs every test of one
    model before building the next, so one model is held at a time."""
    torch.manual_seed(0)
    return request.param, model_from_config(request.param)


def fresh(built: tuple[str, nn.Module]) -> nn.Module:
    """A copy of the built model, for a test to change (copying costs less than building)."""
    return copy.deepcopy(built[1])


def test_every_model_config_is_tested():
    shipped = {"unet", "unet_vgg16", "unet_resnet50", "unet_resnet18", "unet_mobilenetv3"}
    shipped |= {"unet_efficientnet_b0", "unet_convnext_tiny", "unet_regnet"}
    shipped |= {"deeplabv3plus", "segformer_b0"}
    assert shipped | {"bisenetv1", "bisenetv2"} <= set(MODEL_NAMES)


def test_output_contract_and_backward(built):
    torch.manual_seed(0)
    model = fresh(built)
    model.eval()
    with torch.no_grad():
        for h, w in ((67, 93), (64, 64)):
            out = model(torch.randn(1, 3, h, w))
            assert set(out) == {"out"}, "eval mode must return only 'out'"
            assert out["out"].shape == (1, NUM_CLASSES, h, w)
            assert out["out"].dtype == torch.float32
    model.train()
    out = model(torch.randn(2, 3, 67, 93))
    assert out["out"].shape == (2, NUM_CLASSES, 67, 93)
    has_aux = getattr(model, "aux_heads", None) is not None
    assert ("aux" in out) == has_aux
    for logits in out.get("aux", []):
        assert logits.ndim == 4 and logits.shape[:2] == (2, NUM_CLASSES)
    assert set(out) <= {"out", "aux", "detail"}
    loss = out["out"].mean() + sum(a.mean() for a in out.get("aux", []))
    if "detail" in out:
        loss = loss + out["detail"].mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_freeze_encoder_keeps_bn_stats_and_grads(built):
    torch.manual_seed(0)
    model = fresh(built)
    enc_params = {id(p) for p in model.encoder_parameters()}
    assert 0 < len(enc_params) < len(list(model.parameters()))
    model.freeze_encoder(True)
    model.train()
    bns = encoder_batchnorms(model)
    before = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
    model(torch.randn(2, 3, 32, 32) * 3 + 1)  # stats far from the init (0, 1)
    assert all(not bn.training for bn in bns)
    for bn, (mean, var) in zip(bns, before):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in enc_params)
    decoder_bns = [
        m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m not in set(bns)
    ]
    assert all(m.training for m in decoder_bns)
    model.freeze_encoder(False)
    assert all(p.requires_grad for p in model.parameters())
    assert all(bn.training for bn in bns)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pretrained_offline_raises_helpful_error(name, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("a model tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(Exception) as excinfo:
        model_from_config(name, "model.pretrained=true")
    err = root_error(excinfo)
    assert isinstance(err, RuntimeError)
    assert "model.weights_path" in str(err)
    if name == "bisenetv1" or (name.startswith("unet_")):
        # torchvision encoders: says which file to put where
        assert str(tmp_path / "checkpoints") in str(err)
        assert ".pth" in str(err) and "download.pytorch.org" in str(err)


def test_every_model_exports_right_at_every_size(built, tmp_path):
    """Every ``conf/model/*.yaml`` (of SegFormer the B0: B1-B5 add blocks, not operations).
    The legacy (tracing) exporter: fast, and just as prone to freezing Python shape tests as
    torch.export. The plain UNet at 4 base channels: its width changes no operation."""
    name = built[0]
    model = model_from_config(name, "model.base_channels=4") if name == "unet" else fresh(built)
    model = with_statistics(model)
    path = export_onnx(model, tmp_path / "m.onnx", EXPORT_HW, exporter="legacy")
    report = parity_check(model, OnnxModel(path), demo_images(), SIZES, LABELS)
    assert report.passed, report.format()
    assert [r.size for r in report.rows] == SIZES
    # float32 rounding only: far inside the tolerance (a frozen branch gives ~1e-1)
    assert all(r.relative < 2e-5 for r in report.rows), report.format()


# --------------------------------------------------------------------------- parameter groups
FINE_TUNE = (
    "optimizer.param_groups.rules=[{match: encoder, lr_mult: 0.1},"
    "{match: '*head*', lr_mult: 10, decay_mult: 0.5}]"
)


def _expected(model: nn.Module, name: str, p: nn.Parameter, lr: float, wd: float):
    """What the rules above ask for, worked out apart from ParamGroups: the encoder's
    parameters at lr x0.1, other names containing 'head' at x10 with half the decay; no
    decay on norm layers' parameters, biases and 1-D tensors."""
    encoder = {id(q) for m in model.encoder_modules() for q in m.parameters()}
    norm_types = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
    norms = {id(q) for m in model.modules() if isinstance(m, norm_types) for q in m.parameters()}
    exempt = id(p) in norms or name.endswith(".bias") or p.ndim <= 1
    if id(p) in encoder:
        return lr * 0.1, 0.0 if exempt else wd
    if "head" in name:
        return lr * 10, 0.0 if exempt else wd * 0.5
    return lr, 0.0 if exempt else wd


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_parameter_of_every_model_is_in_one_group_with_its_rate(name, caplog):
    cfg = compose_train(f"model={name}", "model.pretrained=false", "optimizer=sgd", FINE_TUNE)
    model = build_model(cfg, DistInfo())
    caplog.set_level("INFO")
    opt = build_optimizer(cfg, model)
    lr, wd = cfg.optimizer.lr, cfg.optimizer.weight_decay
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each exactly once
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    for pname, p in model.named_parameters():
        group = group_of[id(p)]
        assert (group["lr"], group["weight_decay"]) == pytest.approx(
            _expected(model, pname, p, lr, wd)
        ), pname
    assert "optimizer parameter groups" in caplog.text and "encoder" in caplog.text


# --------------------------------------------------------------------------- launch options
def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten(), dim=0).item()


def test_channels_last_gives_the_same_logits(built):
    """``trainer.channels_last`` on every model: channels-last weights and input give the
    logits of the contiguous model, to float rounding (other conv algorithms)."""
    torch.manual_seed(0)
    model = with_statistics(fresh(built))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)["out"]
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))["out"]
    assert (out - ref).abs().max() <= 1e-3 * ref.abs().max()


# DeepLabV3+ on the ResNet-18: the same head and encoder code as the ResNet-50, a third the trace
@pytest.mark.parametrize(
    ("name", "overrides"),
    [("deeplabv3plus", ["model.backbone=resnet18"]), ("segformer_b0", []), ("unet", [])],
)
def test_bf16_compiled_and_two_ddp_steps(name, overrides, tmp_path):
    """The launch options on the new models (and the UNet): under bf16 autocast the fp32 logits
    to bf16's precision; ``launch.compile`` as one graph (fullgraph) giving the eager logits;
    DDP (one gloo rank, in this process): two training steps, so a parameter without gradient
    would fail the second (DDP's unused-parameter error), and the weights move."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = with_statistics(model_from_config(name, *overrides))
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = model(x)["out"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _cosine(model(x)["out"], ref) > 0.99
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x)["out"], ref)
    torch._dynamo.reset()
    store = tdist.FileStore(str(tmp_path / "store"), 1)
    tdist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = DDP(model.train())
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for _ in range(2):
            out = ddp(torch.randn(2, 3, 32, 48))
            loss = out["out"].mean() + sum(a.mean() for a in out.get("aux", []))
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert all(p.grad is not None for p in model.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    finally:
        tdist.destroy_process_group()
