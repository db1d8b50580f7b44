"""scripts/export.py (ONNX export with its parity check) and scripts/predict.py on the exported
model, the way users run them (the export and the check in-process: tests/unit/test_export.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from segkit.data.demo import make_demo_sample
from segkit.evaluation.onnx import OnnxModel
from tests.conftest import run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


# --------------------------------------------------------------------------- the commands
@pytest.fixture
def demo_ckpt(tiny_run: Path) -> Path:
    """The best checkpoint of ``TINY`` trained once per session (tests/conftest.py)."""
    return tiny_run / "checkpoints" / "best.pt"


def test_export_command_passes_on_a_demo_model_and_predict_runs_it(demo_ckpt, tmp_path):
    out = tmp_path / "export" / "model.onnx"
    result = run_cli("scripts/export.py", f"ckpt={demo_ckpt}", f"out={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the demo model was trained at 32x32: checked there and at sizes that are not multiples
    # of 32, on the demo's own val images, as one batch of 2
    for size in ("32x32", "200x300", "97x61", "77x107"):
        assert size in result.stdout
    assert "FAIL" not in result.stdout and f"exported to {out}" in result.stdout
    onnx_model = OnnxModel(out)
    assert onnx_model.input_shape == (32, 32)
    assert onnx_model.labels.class_names[1] == "circle"

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_demo_sample(0, (45, 70))[0]).save(images / "x.png")
    pred = tmp_path / "pred"
    args = [f"ckpt={out}", f"input={images}", f"out={pred}", "progress_bar=false"]
    result = run_cli("scripts/predict.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Image.open(pred / "masks" / "x.png").size == (70, 45)


def test_export_command_fails_beyond_the_tolerance(demo_ckpt, tmp_path):
    out = tmp_path / "model.onnx"
    args = [f"ckpt={demo_ckpt}", f"out={out}", "exporter=legacy", "parity.logit_tol=-1"]
    result = run_cli("scripts/export.py", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert "differs from PyTorch beyond the tolerance" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and (tmp_path / "model.failed.onnx").is_file()
