"""Bad input ends with one message and a distinct exit code, with 1 process or 2: train.py
itself (every bad config value in-process: tests/unit/test_errors.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, run_cli
from tests.unit.test_errors import BEFORE_HYDRA

CPU = [*TINY, "launch.accelerator=cpu", "dataset.check=off"]


def _one_message(proc, code: int, text: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert text in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in out
    assert proc.stderr.count("segkit: error:") == 1


# Every bad value, in-process: tests/unit/test_errors.py. Here train.py itself, for a value that
# the command-line check refuses (before Hydra) and one that the train task refuses (in Hydra's
# run directory).
@pytest.mark.parametrize(
    ("override", "texts"),
    [
        (
            "trainer.max_epoch=3",
            ("trainer.max_epoch is not a key", "did you mean trainer.max_epochs?"),
        ),
        ("optimizer.lr=abc", ("optimizer.lr='abc': expected a number > 0",)),
    ],
)
def test_bad_config_value_is_one_message_with_its_exit_code(tmp_path, override, texts):
    proc = run_cli("train.py", *CPU, override, cwd=tmp_path, timeout=120)
    for text in texts:
        _one_message(proc, 2, text)
    assert not list(tmp_path.glob("outputs/train/runs/*/checkpoints"))
    if override in BEFORE_HYDRA:  # refused before Hydra made a run directory
        assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_the_same_message_with_two_processes(tmp_path):
    """Bad values are refused before the workers start, whichever the value (all of them:
    tests/unit/test_errors.py): the one message is printed once with 2 processes too."""
    override = "model._target_=no_such_pkg.Model"
    proc = run_cli("train.py", *CPU, "launch.devices=2", override, cwd=tmp_path, timeout=120)
    _one_message(proc, 2, "no module named 'no_such_pkg'")


def _voc_with_a_bad_mask(root: Path) -> Path:
    """8 train / 2 val 16x16 samples; mask of train sample 5 holds the value 9 (3 classes)."""
    voc = root / "VOC2007"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(10)]
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(
            voc / "JPEGImages" / f"{name}.jpg"
        )
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 9 if i == 5 else 1 + i % 2
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{name}.png")
    split = voc / "ImageSets/Segmentation"
    (split / "train.txt").write_text("\n".join(names[:8]) + "\n")
    (split / "val.txt").write_text("\n".join(names[8:]) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_a_data_error_in_a_rank_is_one_message_exit_3(tmp_path, devices):
    root = _voc_with_a_bad_mask(tmp_path / "voc")
    args = [
        "launch.accelerator=cpu",
        "trainer.max_epochs=1",
        "loader.num_workers=0",
        "dataset.check=off",
        "dataset=voc",
        f"dataset.root={root}",
        "dataset.num_classes=3",
        "dataset.class_names=[a,b,c]",
        "dataset.input_shape=[16,16]",
        "loader.batch_size=2",
        f"launch.devices={devices}",
    ]
    proc = run_cli("train.py", *args, cwd=tmp_path, timeout=180)
    _one_message(proc, 3, "s5.png")


def test_resume_with_another_model_names_init_from(tiny_run, tmp_path):
    ckpt = tmp_path / "last.pt"  # a UNet's (TINY, trained once per session)
    shutil.copyfile(tiny_run / "checkpoints" / "last.pt", ckpt)
    args = [a for a in CPU if not a.startswith("model")]
    proc = run_cli("train.py", *args, "model=bisenetv1", f"resume={ckpt}", cwd=tmp_path)
    _one_message(proc, 2, f"model.init_from={ckpt}")


def test_run_dir_that_cannot_be_created_is_a_storage_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run_cli("train.py", *CPU, f"hydra.run.dir={blocker}/run", cwd=tmp_path)
    _one_message(proc, 6, "is not a writable folder")


@pytest.mark.slow
def test_stdc_with_a_loss_that_ignores_its_detail_head_trains_under_ddp(tmp_path):
    args = [a for a in CPU if not a.startswith("model")]
    stdc = ["model=stdc1", "loss=ce", "launch.devices=2", "trainer.max_epochs=1"]
    proc = run_cli("train.py", *args, *stdc, "hydra.run.dir=run", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "detail head is not trained by this loss: use loss=ce_detail" in log
