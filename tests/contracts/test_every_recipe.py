"""Every shipped recipe (``conf/experiment/*.yaml``) as it is: it composes, passes the config
check and builds its model; it trains 2 steps on generated data in its dataset's layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.config.checks import check_train_config
from segkit.data.voc_aug import convert_sbd
from segkit.dist import DistInfo
from segkit.io import checkpoint as ck
from segkit.run import build_model, train_rank
from tests import public_replicas as rep
from tests.conftest import CONF, compose_train


def _experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", _experiments())
def test_every_experiment_composes_and_builds(experiment):
    cfg = compose_train(f"experiment={experiment}", "model.pretrained=false", "dataset.root=/d")
    check_train_config(cfg)  # no old or unknown keys, values in range, in the shipped recipes
    model = build_model(cfg, DistInfo())
    h, w = 64, 96
    out = model.eval()(torch.zeros(1, 3, h, w))["out"]
    assert out.shape == (1, cfg.dataset.num_classes, h, w)
    assert cfg.model.num_classes == cfg.dataset.num_classes


def _write_pairs(images: Path, masks: Path, names: list[str], num_classes: int, scale: int = 1):
    """48x64 random RGB PNGs and masks with a few class rectangles (ids * ``scale``)."""
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(names))
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(images / f"{name}.png")
        mask = np.zeros((48, 64), np.uint8)
        for c in range(1, num_classes):
            y, x = rng.integers(0, 40), rng.integers(0, 56)
            mask[y : y + 8, x : x + 8] = c
        Image.fromarray(mask * scale).save(masks / f"{name}.png")


def _dataset_like(experiment: str, root: Path) -> list[str]:
    """Generated data in the layout of the experiment's dataset; -> its dataset overrides."""
    cfg = compose_train(f"experiment={experiment}", "dataset.root=/d")
    kind = cfg.dataset._target_.rsplit(".", 1)[-1]
    names = [f"f{i:02d}" for i in range(6)]
    if "camvid" in experiment:
        for split in ("train", "val"):
            _write_pairs(root / split, root / f"{split}annot", names, 11)
        return []
    if "isbi" in experiment:
        _write_pairs(root / "Images", root / "Labels", names, 2, scale=255)
        return []
    public = {"CityscapesDataset": rep.cityscapes, "ADE20KDataset": rep.ade20k}
    public["COCOStuffDataset"] = rep.coco_stuff
    if kind in public:  # replicas of the official layouts (tests/public_replicas.py)
        public[kind](root)
        return []
    if kind == "VOCAugDataset":
        convert_sbd(*rep.sbd_and_voc(root / "sources"), root)
        return []
    assert kind == "VOCDataset", kind
    voc = root / "VOC2007"
    _write_pairs(voc / "JPEGImages", voc / "SegmentationClass", names, 21)
    for p in (voc / "JPEGImages").glob("*.png"):
        Image.open(p).save(p.with_suffix(".jpg"))
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:4]))
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[4:]))
    return []


@pytest.mark.parametrize("experiment", _experiments())
def test_every_experiment_trains_a_few_steps(experiment, tmp_path):
    """Each shipped recipe as it is (model, loss, optimiser, schedule, budget, EMA, sizes), on a
    few generated images in its dataset's layout: 2 steps, a validation, a best checkpoint."""
    root = tmp_path / "data"
    extra = _dataset_like(experiment, root)
    cfg = compose_train(
        f"experiment={experiment}", f"dataset.root={root}", "model.pretrained=false",
        "trainer.max_epochs=1", "trainer.max_steps=null", "trainer.val_every_steps=null",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.progress_bar=false", "trainer.figures=false", "launch.accelerator=cpu",
        "trainer.precision=fp32", "loader.batch_size=2", "loader.num_workers=0",
        "dataset.input_shape=[64,64]", "dataset.val_input_shape=[64,64]",  # validation and
        *extra,  # calibration at 64x64 too
    )  # fmt: skip
    check_train_config(cfg)
    run = tmp_path / "run"
    train_rank(cfg, run)
    best = ck.load(run / "checkpoints" / "best.pt")
    assert best["step"] == 2 and math.isfinite(best["metrics"]["miou"])
    if cfg.calibrate.enabled:  # the recipe's own modes got their biases
        assert set(best["logit_bias"]) == {"whole", *cfg.eval.modes}
