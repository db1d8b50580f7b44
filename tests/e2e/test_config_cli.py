"""train.py with a config preset and with a dataset that is not there, the way users run it
(the config space in-process: tests/unit/test_config.py)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli


def test_cli_missing_dataset_root_names_the_path(tmp_path: Path):
    missing = tmp_path / "no_such_VOCdevkit"
    proc = run_cli("train.py", "dataset=voc", f"dataset.root={missing}", cwd=tmp_path)
    assert proc.returncode == 3
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_debug_smoke_run_through_train_py(tmp_path: Path):
    proc = run_cli(
        "train.py",
        "debug=smoke",
        "dataset.num_train=8",
        "dataset.num_val=4",
        "dataset.image_size=[32,32]",
        "launch.accelerator=cpu",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 2 val loss" in log and "best val mIoU" in log
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
