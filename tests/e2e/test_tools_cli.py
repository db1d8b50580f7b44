"""Dataset tools as users run them: convert_to_voc.py and check_dataset.py in subprocesses
(the tools as functions: tests/unit/test_tools.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from segkit.data.doctor import check_dataset
from segkit.data.voc import VOCDataset
from tests.conftest import run_cli
from tests.unit.test_tools import SCRIPTS, VOC3, gray, read, split_lists, tiny_voc


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_convert_camvid_layout(tmp_path):
    src = tmp_path / "camvid"
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for k, name in enumerate(names):
            rng = np.random.default_rng(k)
            gray(src / split / f"{name}.png", rng.integers(0, 255, (6, 8)))
            mask = np.full((6, 8), k)
            mask[0] = 11  # void
            gray(src / f"{split}annot" / f"{name}.png", mask)
    out = tmp_path / "VOCdevkit"  # run as a user does, as a script
    result = run([str(SCRIPTS / "convert_to_voc.py"), "camvid", str(src), str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"check: python scripts/check_dataset.py dataset=voc dataset.root={out}" in result.stdout
    year = out / "VOC2007"
    assert split_lists(out) == {"train": ["a", "b"], "val": ["c"], "trainval": ["a", "b", "c"]}
    mask = read(year / "SegmentationClass/b.png")
    assert mask[0].tolist() == [255] * 8 and (mask[1:] == 1).all()  # 11 -> ignore, ids kept
    assert Image.open(year / "JPEGImages/a.jpg").format == "JPEG"
    kw = dict(train=False, num_classes=11, input_shape=[6, 8])
    report = check_dataset(VOCDataset(out, "train", **kw), VOCDataset(out, "val", **kw), "full")
    assert report.errors == [], report.format()


def test_check_dataset_exit_3_names_the_bad_file(tmp_path):
    root = tiny_voc(tmp_path / "VOCdevkit", bad_value=9)
    result = run_cli("scripts/check_dataset.py", *VOC3, f"dataset.root={root}", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    bad = root / "VOC2007/SegmentationClass/b.png"
    assert f"train: {bad}: values 9 (3 px) not in [0, 3)" in result.stdout
    assert "[out_of_range]" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit"]  # wrote nothing


def test_check_dataset_unbuildable_dataset_no_traceback(tmp_path):
    args = [*VOC3, f"dataset.root={tmp_path}/nope"]
    result = run_cli("scripts/check_dataset.py", *args, cwd=tmp_path)
    assert result.returncode == 3
    assert f"dataset.root={tmp_path}/nope is not a folder" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    result = run_cli("scripts/check_dataset.py", "dataset=voc", cwd=tmp_path)  # root: ???
    assert result.returncode == 2 and "dataset.root not set" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
