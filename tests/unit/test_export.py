"""ONNX export with a parity check: the check catches a static export; calibrated models,
opsets, the CLI's pieces. A Python-level shape branch frozen by torch.export:
tests/integration/test_onnx_export.py; every model config at every size:
tests/contracts/test_every_model.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from segkit.evaluation.onnx import OnnxModel, export_onnx, parity_check
from segkit.io.checkpoint import save_atomic
from segkit.models import UNet
from segkit.run import compose_model_config, instantiate_model
from tests.conftest import load_script
from tests.onnx_parity import EXPORT_HW, LABELS, SIZES, demo_images, with_statistics

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _onnx_installed() -> None:
    """Every test here needs the export extra (imported per test, not at collection)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")


def test_a_calibrated_model_exports_with_its_logit_biases(tmp_path):
    """A calibrated checkpoint loads as ``LogitBias(model)``: the biases are part of the graph,
    so ONNX Runtime (predict with ``ckpt=model.onnx``) gives the calibrated logits."""
    from segkit.evaluation.logit_bias import LogitBias

    bias = [2.0, -1.5, 0.25]
    raw = with_statistics(
        instantiate_model(compose_model_config("unet", 3, ["model.base_channels=4"]))
    )
    model = LogitBias(raw, bias).eval()
    path = export_onnx(model, tmp_path / "m.onnx", EXPORT_HW, exporter="legacy")
    report = parity_check(model, OnnxModel(path), demo_images(), SIZES, LABELS)
    assert report.passed, report.format()
    x = torch.randn(1, 3, *EXPORT_HW)
    with torch.no_grad():
        shift = OnnxModel(path)(x)["out"] - raw(x)["out"]
    assert shift.mean((0, 2, 3)).tolist() == pytest.approx(bias, abs=1e-4)


def test_parity_fails_on_a_static_export(tmp_path):
    model = with_statistics(UNet(3, base_channels=4))
    path = export_onnx(model, tmp_path / "m.onnx", EXPORT_HW, exporter="legacy", dynamic=False)
    report = parity_check(model, OnnxModel(path), demo_images(), SIZES, LABELS)
    assert not report.passed
    assert report.row_ok(report.rows[0]) and report.rows[0].max_abs < 1e-4
    assert all("cannot run at this size" in r.error for r in report.rows[1:])


def test_export_command_takes_the_input_channels_of_the_checkpoint(tmp_path):
    """A gray run (``dataset.in_channels=1``): ``scripts/export.py``'s ``export`` traces and
    checks at 1 channel; the parity images (colour files) are turned gray as in training."""
    model_cfg = compose_model_config("unet", 3, ["model.base_channels=4"], in_channels=1)
    model = with_statistics(instantiate_model(model_cfg))
    gray = {**LABELS.to_dict(), "mean": [0.5], "std": [0.25]}
    dataset = {"_target_": "segkit.data.demo.DemoDataset", "num_classes": 3, "in_channels": 1}
    ckpt = {
        "model": model.state_dict(),
        "config": {"model": model_cfg, "dataset": {**dataset, "input_shape": [32, 32]}},
        "labels": gray,
    }
    save_atomic(ckpt, tmp_path / "gray.pt")
    images = tmp_path / "images"
    images.mkdir()
    for i, picture in enumerate(demo_images()):
        Image.fromarray(picture).save(images / f"{i}.png")
    out = tmp_path / "gray.onnx"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "export",
            [f"ckpt={tmp_path / 'gray.pt'}", f"out={out}", "exporter=legacy",
             f"parity.images={images}", "parity.sizes=[[32,32],[37,29]]"],
        )  # fmt: skip
    assert load_script("export").export(cfg) == 0
    exported = OnnxModel(out)
    assert exported.session.get_inputs()[0].shape[1] == 1
    assert exported.labels.in_channels == 1 and exported.window == (32, 32)  # slide default
    x = torch.randn(2, 1, 37, 29)
    with torch.no_grad():
        expected = model(x)["out"]
    assert torch.allclose(exported(x)["out"], expected, atol=1e-4)
