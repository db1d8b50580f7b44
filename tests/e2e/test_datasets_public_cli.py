"""The public datasets as a user runs them: ``python train.py dataset=cityscapes
dataset.root=<replica>`` trains and validates on a Cityscapes replica, the dataset check
passing (the other datasets, the broken variants and check_dataset.py's messages in-process:
tests/unit/test_datasets_public.py)."""

from __future__ import annotations

import json

from tests import public_replicas as rep
from tests.conftest import run_cli

TINY_CITYSCAPES = [
    "dataset=cityscapes",
    "dataset.input_shape=[32,64]",
    "dataset.val_input_shape=[32,64]",
    "model=unet",
    "model.base_channels=4",
    "loader.batch_size=2",
    "loader.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.progress_bar=false",
    "trainer.num_vis=1",
    "launch.accelerator=cpu",
]


def test_train_on_cityscapes_replica(tmp_path):
    root = rep.cityscapes(tmp_path / "cityscapes")
    proc = run_cli("train.py", *TINY_CITYSCAPES, f"dataset.root={root}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "dataset check (quick): no errors" in proc.stdout + proc.stderr
    (result,) = (tmp_path / "outputs").rglob("result.json")
    metrics = json.loads(result.read_text())
    assert 0.0 <= metrics["best_miou"] <= 1.0, metrics
