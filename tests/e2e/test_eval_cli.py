"""eval.py on a trained run, the way users run it: metrics, masks, every mode in one table, and
a clean error for a missing checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli


def test_eval_cli_on_the_checkpoint(tiny_run, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli(
        "eval.py",
        f"ckpt={tiny_run / 'checkpoints' / 'best.pt'}",
        "save_masks=true",
        "loader.num_workers=0",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mIoU" in proc.stdout and "circle" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 7 and len(metrics["iou"]) == 5
    assert 0.0 <= metrics["miou"] <= 1.0
    pngs = sorted((out / "predictions").glob("*.png"))
    assert len(pngs) == 7
    im = Image.open(pngs[0])
    assert im.mode == "P" and im.size == (32, 32)  # original resolution, palette PNG
    assert set(np.unique(np.array(im))) <= set(range(5))


def test_eval_cli_missing_checkpoint_is_a_clean_error(tmp_path):
    proc = run_cli("eval.py", f"ckpt={tmp_path / 'missing.pt'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "missing.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_cli_reports_every_mode_in_one_table(tiny_run, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli(
        "eval.py",
        f"ckpt={tiny_run / 'checkpoints' / 'best.pt'}",
        "eval.modes=[whole,slide,whole+flip]",
        "loader.num_workers=0",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["modes"]) == ["whole", "slide", "whole+flip"]
    assert metrics["modes"]["whole"]["miou"] == pytest.approx(metrics["miou"])
    # the demo model was trained at the image size: one window = the whole image
    assert metrics["modes"]["slide"]["miou"] == pytest.approx(metrics["miou"], abs=1e-6)
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith(("whole", "slide"))]
    assert len(table) == 3
    assert (out / "confusion_matrix.png").is_file() and (out / "per_class_iou.png").is_file()
    assert "per-class metrics" in (out / "eval.log").read_text()
