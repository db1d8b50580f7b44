"""End to end: a CPU run produces its files, resumes exactly, and eval.py scores it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit import checkpoint as ck
from segkit.run import fit
from tests.conftest import TINY, compose_train, run_cli


def _tags(run_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "tb").glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard events in {run_dir / 'tb'}"
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc.Tags()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    fit(compose_train(*TINY), run_dir)
    return run_dir


def test_run_writes_config_log_checkpoints_events_result(trained):
    assert (trained / "config.yaml").is_file()
    result = json.loads((trained / "result.json").read_text())
    assert result["epochs"] == 2 and result["steps"] == 2 * (24 // 4)
    assert 0.0 <= result["best_miou"] <= 1.0 and result["best_epoch"] in (1, 2)
    assert result["complexity"]["params_total"] > 0
    ckpt = ck.load(trained / "checkpoints" / "last.pt")
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "best_miou",
        "rng",
        "config",
        "class_names",
        "palette",
        "metrics",
    ):
        assert key in ckpt, key
    assert ckpt["class_names"][1] == "circle" and len(ckpt["palette"]) == 5
    assert ckpt["config"]["model"]["_target_"].endswith("UNet")
    best = ck.load(trained / "checkpoints" / "best.pt")
    assert best["metrics"]["miou"] == pytest.approx(result["best_miou"])


def test_tensorboard_has_every_panel(trained):
    tags = _tags(trained)
    scalars = set(tags["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/mIoU", "val/pixel_acc"} <= scalars
    assert any(t.startswith("val_iou/") for t in scalars)
    assert "hparam/best_miou" in scalars
    assert {"val/image|label|pred", "val/confusion"} <= set(tags["images"])


def test_resume_after_a_crash_mid_epoch_gives_identical_weights(tmp_path):
    straight = tmp_path / "straight"
    fit(compose_train(*TINY, "trainer.max_epochs=3"), straight)
    crashed = tmp_path / "crashed"
    # 6 steps per epoch: step 9 is the middle of epoch 2, after epoch 1's checkpoint
    with pytest.raises(RuntimeError, match="fail_at_step"):
        fit(compose_train(*TINY, "trainer.max_epochs=3", "trainer.fail_at_step=9"), crashed)
    assert ck.load(crashed / "checkpoints" / "last.pt")["epoch"] == 1
    fit(compose_train(*TINY, "trainer.max_epochs=3", "trainer.resume=auto"), crashed)
    a = ck.load(straight / "checkpoints" / "last.pt")
    b = ck.load(crashed / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 18
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["scheduler"]["_last_lr"] == b["scheduler"]["_last_lr"]
    assert a["history"] == b["history"]
    # the resumed curve continues without overlap: one value per step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(crashed / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 19))


def test_resume_from_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ck.CheckpointError, match="nowhere.pt"):
        fit(compose_train(*TINY, f"trainer.resume={tmp_path / 'nowhere.pt'}"), tmp_path / "r")


def test_eval_cli_on_the_checkpoint(trained, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli(
        "eval.py",
        f"ckpt={trained / 'checkpoints' / 'best.pt'}",
        "save_masks=true",
        "num_workers=0",
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
    assert proc.returncode == 1
    assert "missing.pt" in proc.stderr and "Traceback" not in proc.stderr
