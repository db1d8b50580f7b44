"""Forward-hook feature recording, PNG grids, TensorBoard logging and the feature_maps script."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segkit.models import UNet
from segkit.reporting.feature_maps import (
    FeatureRecorder,
    feature_grid,
    log_feature_maps,
    save_feature_maps,
)

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_recorder_stores_outputs_and_removes_hooks():
    model = tiny()
    x = torch.randn(1, 3, 8, 8)
    with FeatureRecorder(model, ["0", "2"]) as rec:
        assert len(model[0]._forward_hooks) == 1
        y = model(x)
    assert not model[0]._forward_hooks and not model[2]._forward_hooks
    assert torch.equal(rec.features["0"], model[0](x))
    assert torch.equal(rec.features["2"], y)
    assert not rec.features["2"].requires_grad


def test_recorded_output_survives_inplace_activation():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
    with FeatureRecorder(model, ["0"]) as rec:
        model(torch.randn(1, 3, 8, 8))
    assert rec.features["0"].min() < 0  # the conv output, not the ReLU-ed tensor


def test_hooks_removed_when_forward_raises():
    model = tiny()
    with pytest.raises(RuntimeError), FeatureRecorder(model, ["0"]):
        model(torch.randn(1, 5, 8, 8))  # wrong channel count
    assert not model[0]._forward_hooks


def test_unknown_layer_lists_close_names():
    model = UNet(3, base_channels=4)
    with pytest.raises(KeyError, match=r"encoder\.downs\.0"):
        FeatureRecorder(model, ["encoder.down.0"])
    with pytest.raises(KeyError, match="top-level modules"):
        FeatureRecorder(model, ["zzz"])


def test_dict_outputs_are_stored_per_key():
    model = UNet(3, base_channels=4).eval()
    with FeatureRecorder(model, [""]) as rec, torch.no_grad():  # "" is the model itself
        model(torch.randn(1, 3, 16, 16))
    assert rec.features["[out]"].shape == (1, 3, 16, 16)


def test_feature_grid_layout_and_normalisation():
    feature = torch.zeros(1, 5, 4, 4)
    feature[0, 0] = torch.arange(16.0).view(4, 4)  # per-channel min-max -> 0..255
    feature[0, 1] = 7.0  # constant channel -> 0
    grid = feature_grid(feature, max_channels=16, min_tile=8)
    # 5 tiles -> 3 columns x 2 rows of 8x8 tiles (4x4 enlarged x2) with 2-pixel gaps
    assert grid.shape == (2 * 8 + 2, 3 * 8 + 2 * 2) and grid.dtype == np.uint8
    assert grid[0, 0] == 0 and grid[7, 7] == 255
    assert grid[:8, 10:18].max() == 0
    assert feature_grid(feature, max_channels=1, min_tile=8).shape == (8, 8)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        feature_grid(torch.zeros(4, 4))


def test_save_feature_maps_writes_pngs(tmp_path):
    model = tiny()
    with FeatureRecorder(model, ["0", "2"]) as rec:
        model(torch.randn(1, 3, 8, 8))
    paths = save_feature_maps(rec.features, tmp_path / "maps", max_channels=16)
    assert [p.name for p in paths] == ["0.png", "2.png"]
    image = cv2.imread(str(paths[0]))
    # 4 channels of 8x8 enlarged to 64x64 -> 2x2 grid with a 2-pixel gap
    assert image.shape == (130, 130, 3)


def test_log_feature_maps_adds_images():
    calls = []

    class Writer:
        def add_image(self, tag, img, global_step=None, dataformats="CHW"):
            calls.append((tag, img.shape, global_step, dataformats))

    log_feature_maps(Writer(), {"enc": torch.rand(2, 4, 8, 8)}, step=3)
    assert calls == [("features/enc", (130, 130), 3, "HW")]


def test_feature_maps_script(tmp_path, monkeypatch, capsys):
    model_cfg = {"_target_": "segkit.models.UNet", "num_classes": 3, "base_channels": 4,
                 "pretrained": False, "weights_path": None}  # fmt: skip
    model = UNet(3, base_channels=4)
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "config": {"model": model_cfg}}, ckpt)
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8))
    out = tmp_path / "maps"
    argv = ["feature_maps.py", "--ckpt", str(ckpt), "--image", str(image),
            "--layers", "encoder.inc", "encoder.downs.3", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPTS / "feature_maps.py"), run_name="__main__")
    assert sorted(p.name for p in out.iterdir()) == ["encoder.downs.3.png", "encoder.inc.png"]
