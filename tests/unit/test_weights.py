"""Tolerant weight loading: wrapper prefixes, partial loads, reports, loud failures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segkit.io.partial_load import UnsafeCheckpointError, load_weights, normalize_key


def net(out_classes: int = 2) -> nn.Sequential:
    # params: conv 3*4*9 + 4 = 112, bn 4 + 4 = 8, head 4*C + C (C=2: 10) -> 130 in total
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, out_classes, 1))


def trained(out_classes: int = 2) -> nn.Sequential:
    torch.manual_seed(1)
    model = net(out_classes)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.add_(1)  # make every tensor differ from a fresh init (incl. BN buffers)
    return model


def assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_normalize_key():
    assert normalize_key("module.0.weight") == "0.weight"
    assert normalize_key("_orig_mod.0.weight") == "0.weight"
    assert normalize_key("module._orig_mod.encoder.module_x.w") == "encoder.module_x.w"


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapped_state_dict_loads_fully(prefix):
    source = trained()
    state = {prefix + k: v for k, v in source.state_dict().items()}
    target = net()
    report = load_weights(target, state)
    assert_same(target, source)
    assert len(report.loaded) == 9 and not report.missing and not report.unexpected
    assert report.matched_fraction == 1.0


def test_load_into_dataparallel_wrapped_model():
    source, target = trained(), nn.DataParallel(net())
    load_weights(target, source.state_dict())
    assert_same(target.module, source)


def test_checkpoint_file_with_model_and_config(tmp_path):
    source = trained()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "config": {"model": {"_target_": "x"}}}, path)
    target = net()
    load_weights(target, path)
    assert_same(target, source)
    state_path = tmp_path / "sd.pth"
    torch.save(
        {"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, state_path
    )
    target = net()
    load_weights(target, str(state_path))
    assert_same(target, source)


def test_shape_mismatch_is_skipped_and_reported():
    source = trained(out_classes=5)  # another num_classes: the head does not fit
    target = net(out_classes=2)
    head_before = target[2].weight.clone()
    report = load_weights(target, source.state_dict())
    assert [k for k, *_ in report.skipped_shape] == ["2.weight", "2.bias"]
    assert report.skipped_shape[0] == ("2.weight", (5, 4, 1, 1), (2, 4, 1, 1))
    assert report.missing == ["2.weight", "2.bias"]
    assert report.matched_fraction == pytest.approx(120 / 130)
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[2].weight, head_before)
    text = str(report)
    assert "2.weight" in text and "[5, 4, 1, 1]" in text and "skipped 2" in text


def test_non_strict_shapes_reshapes_equal_numel():
    linear = nn.Linear(4, 2)
    conv = nn.Conv2d(4, 2, 1)
    load_weights(conv, {"weight": linear.weight, "bias": linear.bias}, strict_shapes=False)
    assert torch.equal(conv.weight.view(2, 4), linear.weight)
    with pytest.raises(RuntimeError):  # strict (default): nothing fits
        load_weights(nn.Conv2d(4, 2, 1), {"weight": linear.weight, "bias": linear.bias})


def test_total_mismatch_raises():
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(RuntimeError, match=r"(?s)only 0\.0% .*same architecture"):
        load_weights(net(), other.state_dict())
    # partial (only the BN, 8 of 130 params) is below the default min_match 0.5
    bn_only = {k: v for k, v in trained().state_dict().items() if k.startswith("1.")}
    with pytest.raises(RuntimeError, match="6.2%"):
        load_weights(net(), bn_only)
    report = load_weights(net(), bn_only, min_match=0.0)
    assert len(report.loaded) == 5


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(net(), tmp_path / "nope.pth")


def test_pickled_module_is_refused_and_points_at_the_conversion(tmp_path):
    source = trained()
    path = tmp_path / "whole_model.pth"
    torch.save(source, path)  # the notes' torch.save(model, ...)
    target = net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    message = r"(?s)torch\.nn\.modules.*arbitrary code.*convert_checkpoint\.py .*--trust"
    with pytest.raises(UnsafeCheckpointError, match=message):
        load_weights(target, path)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_safetensors_state_dict_loads(tmp_path):
    from safetensors.torch import save_file

    source = trained()
    path = tmp_path / "weights.safetensors"
    save_file({"module." + k: v for k, v in source.state_dict().items()}, str(path))
    target = net()
    load_weights(target, path)
    assert_same(target, source)
