"""The embedded demo dataset: deterministic, VOC layout, every class present, built once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.data import DataError, DemoDataset, make_demo_dataset, read_image, read_mask
from segkit.data.demo import DEMO_VERSION, make_demo_sample

SMALL = dict(num_train=6, num_val=2, size=(64, 64))


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_generation_is_deterministic(tmp_path):
    a = make_demo_dataset(tmp_path / "a", **SMALL)
    b = make_demo_dataset(tmp_path / "b", **SMALL)
    digest = tree_digest(a)
    assert len(digest) == 8 * 2 + 3 and digest == tree_digest(b)
    assert a.parent.name == f"{DEMO_VERSION}-6-2-64x64-seed0"
    c = make_demo_dataset(tmp_path / "c", **{**SMALL, "seed": 1})
    assert tree_digest(c) != digest


def test_layout_files_and_classes(tmp_path):
    voc = make_demo_dataset(tmp_path, **SMALL) / "VOC2007"
    splits = voc / "ImageSets/Segmentation"
    assert (splits / "train.txt").read_text().split() == [f"{i:06d}" for i in range(6)]
    assert (splits / "val.txt").read_text().split() == ["000006", "000007"]
    assert len((splits / "trainval.txt").read_text().split()) == 8
    jpg = voc / "JPEGImages/000000.jpg"
    assert jpg.read_bytes()[:2] == b"\xff\xd8" and read_image(jpg).shape == (64, 64, 3)
    png = voc / "SegmentationClass/000000.png"
    assert Image.open(png).mode == "P"
    masks = [read_mask(voc / f"SegmentationClass/{i:06d}.png") for i in range(4)]
    values = set(np.unique(np.stack(masks)).tolist())
    assert values == {0, 1, 2, 3, 4, 255}  # 4 consecutive samples hold every class + borders


def test_borders_separate_classes():
    _, mask = make_demo_sample(5, (128, 128))
    assert (mask == 255).any()
    # no two different classes touch directly (horizontally or vertically): a 255 band between
    for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])):
        touching = (a != b) & (a != 255) & (b != 255)
        assert not touching.any()
    # the topmost object has class 5 % 4 + 1 = 2 and a real area
    assert (mask == 2).sum() > 50


def test_demo_dataset_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGKIT_CACHE", str(tmp_path))
    kw = dict(num_train=4, num_val=2, image_size=(32, 32))
    ds = DemoDataset(split="val", train=False, **kw)
    assert (tmp_path / "demo" / f"{DEMO_VERSION}-4-2-32x32-seed0").is_dir()
    assert len(ds) == 2 and ds.num_classes == 5 and ds.ignore_index == 255
    assert ds.class_names == ["background", "circle", "rectangle", "triangle", "cross"]
    assert ds.palette[1] == [128, 0, 0]
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    with pytest.raises(DataError, match="dataset.num_classes"):
        DemoDataset(split="val", train=False, num_classes=3, **kw)


def test_colour_does_not_reveal_the_class():
    means = {c: [] for c in range(1, 5)}
    for i in range(48):
        image, mask = make_demo_sample(i, (64, 64))
        for c in means:
            if (mask == c).sum() > 20:
                means[c].append(image[mask == c].mean(axis=0))
    per_class = np.array([np.mean(v, axis=0) for v in means.values()])  # (4 classes, RGB)
    assert all(len(v) >= 10 for v in means.values())
    assert np.ptp(per_class, axis=0).max() < 30  # class mean colours within 30 of each other
