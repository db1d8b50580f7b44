"""torch.export with symbolic height and width (the exporter ``scripts/export.py`` uses by default):
the UNet's program is right at other sizes, and the parity check catches a model whose Python
shape test the export froze (the legacy exporter and the checks around it:
tests/unit/test_export.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkit.evaluation.onnx import OnnxModel, export_onnx, parity_check
from segkit.models import UNet
from tests.onnx_parity import EXPORT_HW, LABELS, SIZES, demo_images

NUM_CLASSES = 3


class OldPadUNet(nn.Module):
    """A small net with the bug the issue reported: it pads only when the size needs it, a
    Python-level test of the shape that the exporter freezes at the export size."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % 16, (-w) % 16
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        y = F.interpolate(self.head(torch.relu(self.down(x))), scale_factor=2.0, mode="bilinear")
        return {"out": y[..., :h, :w]}


@pytest.mark.parametrize("backbone", ["resnet18"])  # the decoder is the same on every encoder
def test_unet_exports_with_dynamic_height_and_width(backbone):
    """torch.export at 67x93 with symbolic H and W: the program is right at other sizes too,
    aligned (no padding) or not (the padding and crop are computed, not branched on)."""
    from torch.export import Dim, export

    torch.manual_seed(0)
    model = UNet(NUM_CLASSES, backbone=backbone, base_channels=4).eval()
    dims = {2: Dim("h", min=33, max=1024), 3: Dim("w", min=33, max=1024)}
    program = export(model, (torch.randn(2, 3, 67, 93),), dynamic_shapes={"x": dims})
    exported = program.module()
    for h, w in ((64, 96), (45, 130)):
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            got, want = exported(x)["out"], model(x)["out"]
        assert got.shape == (2, NUM_CLASSES, h, w)
        assert torch.allclose(got, want, atol=1e-5), (h, w)


def test_parity_fails_on_a_python_shape_branch(tmp_path):
    pytest.importorskip("onnxruntime")  # the export extra
    pytest.importorskip("onnx")
    model = OldPadUNet().eval()
    path = export_onnx(model, tmp_path / "m.onnx", EXPORT_HW)  # torch.export, dynamic shapes
    report = parity_check(model, OnnxModel(path), demo_images(), SIZES, LABELS, export_hw=EXPORT_HW)
    assert not report.passed
    ok = {r.size: report.row_ok(r) for r in report.rows}
    assert ok[EXPORT_HW] and ok[(96, 80)]  # multiples of 16: the frozen branch happens to fit
    assert not ok[(50, 75)] and not ok[(37, 29)]
    bad = report.rows[1]
    assert bad.max_abs > 1e-2 and bad.argmax_share > 1e-3
    assert "FAIL" in report.format() and "(export size)" in report.format()
