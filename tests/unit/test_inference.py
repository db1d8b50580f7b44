"""Evaluation modes (whole, sliding window, test-time augmentation) and listing the inputs of
predict (predict and eval.py on the user's own files: tests/e2e/test_predict_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segkit.data.io import list_inputs
from segkit.errors import ConfigError, DataError
from segkit.evaluation.predictors import (
    TTA,
    SlidingWindow,
    blend_weight,
    make_predictor,
    predictor_for,
    window_starts,
)
from segkit.models import UNet


class Pointwise(nn.Module):
    """A 1x1 conv: every output pixel depends on its input pixel only (no border effects)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


class WindowMean(nn.Module):
    """Each window's output is one constant: the mean of its input (shows how windows blend)."""

    def forward(self, x):
        return {"out": x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])}


def tiny_unet(symmetric: bool = False) -> nn.Module:
    """A random plain UNet with non-trivial BatchNorm statistics; ``symmetric``: every conv
    kernel mirror-symmetric left-right, which makes the whole net flip-equivariant at widths
    that are multiples of 16 (no padding, aligned pooling)."""
    torch.manual_seed(0)
    model = UNet(3, base_channels=4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
        if symmetric and isinstance(m, nn.Conv2d):
            m.weight.data = (m.weight.data + m.weight.data.flip(-1)) / 2
    return model.eval()


# --------------------------------------------------------------------------- sliding window
def test_window_starts_cover_the_border():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # the last window ends at the border
    assert window_starts(4, 8, 2) == [0]  # window larger than the image: one (clipped)
    for size, win, stride in ((57, 16, 8), (100, 33, 20), (16, 16, 4)):
        covered = np.zeros(size, bool)
        for s in window_starts(size, win, stride):
            assert 0 <= s <= size - min(win, size)
            covered[s : s + win] = True
        assert covered.all()


def test_blend_weight_is_smooth_and_positive():
    w = blend_weight(9, 16)
    assert w.shape == (9, 16) and float(w.min()) >= 1e-6
    # separable Gaussian, sigma = 1/8 of the side: the centre row at 2 px from the centre of
    # the 9 px side is exp(-0.5 * (2 / 1.125)^2) = 0.2059 of the centre
    centre = w[4, 7:9].mean()
    assert float(w[2, 7:9].mean() / centre) == pytest.approx(np.exp(-0.5 * (2 / 1.125) ** 2))
    assert torch.all(w[:4, 8] <= w[1:5, 8])  # rises to the centre, no flat plateau


def test_sliding_window_equal_to_image_is_whole_inference():
    model = tiny_unet()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        whole = model(x)["out"]
        slid = SlidingWindow(model, window=(40, 56), stride=(20, 28))(x)["out"]
        larger = SlidingWindow(model, window=(64, 64), stride=(32, 32))(x)["out"]
    torch.testing.assert_close(slid, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(larger, whole, atol=1e-5, rtol=1e-5)


def test_sliding_window_places_and_normalises_windows_exactly():
    """A pointwise model gives every window the same logits as the whole image: any wrong
    offset, missing border or un-normalised blend would show."""
    model = Pointwise()
    x = torch.randn(2, 3, 37, 61)
    with torch.no_grad():
        whole = model(x)["out"]
        slid = SlidingWindow(model, window=(16, 24), stride=(8, 10), batch=5)(x)["out"]
    torch.testing.assert_close(slid, whole, atol=1e-5, rtol=1e-5)


def test_sliding_window_weights_window_centres_over_their_edges():
    """Windows at x = 0, 6, 12 (width 12) over a ramp: pixel 6 is the centre of window 0's right
    half and the very edge of window 1, so it takes (almost) window 0's value; a flat average
    would give the mean of both."""
    x = torch.arange(24, dtype=torch.float32).expand(1, 3, 8, 24).contiguous()
    blended = SlidingWindow(WindowMean(), window=(8, 12), stride=(8, 6))(x)["out"][0, 0]
    v0, v1 = 5.5, 11.5  # the means of columns 0..11 and 6..17
    for out in blended[[0, 4]]:  # the border row blends like the middle one
        assert abs(float(out[6]) - v0) < 0.01 * (v1 - v0)
        assert float(out[0]) == pytest.approx(v0) and float(out[23]) == pytest.approx(17.5)
        assert torch.all(out[1:] >= out[:-1])  # blends monotonically, no seam


# --------------------------------------------------------------------------- TTA
def test_flip_tta_on_a_mirror_symmetric_input_equals_no_tta():
    model = tiny_unet(symmetric=True)
    half = torch.randn(1, 3, 32, 24)
    x = torch.cat([half, half.flip(-1)], dim=-1)  # (1,3,32,48), mirror-symmetric
    with torch.no_grad():
        plain = model(x)["out"]
        tta = TTA(model, flip=True)(x)["out"]
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=1e-5)


def test_flip_tta_runs_the_mirrored_view():
    """On any input and model, flip TTA = (m(x) + mirror(m(mirror(x)))) / 2, which differs from
    m(x) for a model that is not mirror-symmetric."""
    model = tiny_unet()
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        plain = model(x)["out"]
        expected = (plain + model(x.flip(-1))["out"].flip(-1)) / 2
        tta = TTA(model, flip=True)(x)["out"]
    torch.testing.assert_close(tta, expected, atol=1e-5, rtol=1e-5)
    assert (tta - plain).abs().max() > 1e-3


def test_multiscale_tta_averages_resized_logits():
    model = Pointwise()
    x = torch.randn(1, 3, 20, 30)
    with torch.no_grad():
        out = TTA(model, flip=False, scales=(0.5, 1.0))(x)["out"]
        small = nn.functional.interpolate(x, size=(10, 15), mode="bilinear", align_corners=False)
        back = nn.functional.interpolate(
            model(small)["out"], size=(20, 30), mode="bilinear", align_corners=False
        )
        expected = (back + model(x)["out"]) / 2
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_make_predictor_builds_each_mode():
    model = tiny_unet()
    assert make_predictor(model) is model
    slide = make_predictor(model, "slide", window=(32, 48), overlap=0.25)
    assert isinstance(slide, SlidingWindow) and slide.stride == (24, 36)
    tta = make_predictor(model, "slide", window=(32, 32), flip=True, scales=(0.75, 1.25))
    assert isinstance(tta, TTA) and isinstance(tta.predictor, SlidingWindow)
    assert tta.scales == (0.75, 1.25) and tta.flip and not tta.training
    with torch.no_grad():
        assert tta(torch.randn(1, 3, 40, 50))["out"].shape == (1, 3, 40, 50)
    with pytest.raises(ConfigError, match="mode='tiles'"):
        make_predictor(model, "tiles")
    with pytest.raises(ConfigError, match="needs a window"):
        make_predictor(model, "slide")
    with pytest.raises(ConfigError, match="overlap=1"):
        make_predictor(model, "slide", window=(8, 8), overlap=1)


def test_predictor_for_names_modes():
    model = tiny_unet()
    assert predictor_for("whole", model) is model
    p = predictor_for("slide+flip+ms", model, window=(16, 16), scales=(0.5, 1.0))
    assert isinstance(p, TTA) and p.flip and p.scales == (0.5, 1.0)
    assert isinstance(p.predictor, SlidingWindow) and p.predictor.window == (16, 16)
    p = predictor_for("whole+ms", model)
    assert not p.flip and p.scales == (0.75, 1.0, 1.25) and p.predictor is model
    for bad in ("tiles", "whole+flop"):
        with pytest.raises(ConfigError, match="expected whole or slide"):
            predictor_for(bad, model)


def test_list_inputs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.png", "clip.mp4", ".hidden/d.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    files, roots = list_inputs(str(tmp_path))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a.JPG",
        "b.png",
        "clip.mp4",
        "sub/c.png",
    ]
    assert roots == [tmp_path]
    files, roots = list_inputs(f"{tmp_path}/**/*.png")
    assert sorted(f.name for f in files) == ["b.png", "c.png"]
    assert roots == [tmp_path, tmp_path / "sub"]
    with pytest.raises(DataError, match="no such file or folder"):
        list_inputs(str(tmp_path / "nope"))
