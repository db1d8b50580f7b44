"""The evaluate task of eval.py, in this process (``segkit.run.evaluation.evaluate``, what
``python eval.py`` runs): the default sliding window, ``on_bad_sample=skip`` at the original
size, one-key dataset overrides. As a command: tests/e2e/test_eval_cli.py."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from segkit.data.demo import make_demo_dataset
from segkit.data.original_size import OriginalSizeMasks, original_size_loader
from segkit.errors import ConfigError, DataError
from segkit.io import checkpoint as ck
from segkit.run.evaluation import eval_dataset_config, evaluate
from segkit.run.models import checkpoint_window
from tests.conftest import CONF, load_script


def eval_config(*overrides: str):
    """The real ``conf/eval.yaml`` with overrides, as eval.py composes it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "eval", overrides=["loader.num_workers=0", "launch.accelerator=cpu", *overrides]
        )
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def test_slide_defaults_to_the_training_crop(tiny_run, tmp_path):
    """A crop-trained run (16x16 crops, validated whole at 32x32): ``slide`` runs 16x16 windows
    over the 32x32 input, so it scores differently from ``whole``."""
    ckpt = ck.load(tiny_run / "checkpoints" / "best.pt")
    ckpt["config"]["dataset"].update(input_shape=[16, 16], val_input_shape=[32, 32])
    ck.save_atomic(ckpt, tmp_path / "crop.pt")
    assert checkpoint_window(ckpt) == (16, 16)
    recipe = {**ckpt, "config": {**ckpt["config"], "eval": {"slide": {"window": [24, 20]}}}}
    assert checkpoint_window(recipe) == (24, 20)  # the recipe's own eval.slide.window first
    # scripts/predict.py: the same default window (an export stores it: tests/unit/test_export.py)
    assert load_script("predict").load(str(tmp_path / "crop.pt"))[2:] == ((32, 32), (16, 16))

    report = evaluate(
        eval_config(f"ckpt={tmp_path / 'crop.pt'}", "eval.modes=[whole,slide]"), tmp_path
    )
    modes = json.loads((tmp_path / "metrics.json").read_text())["modes"]
    assert report["modes"] == modes
    assert modes["slide"]["miou"] != pytest.approx(modes["whole"]["miou"], abs=1e-6), modes


def test_original_size_masks_skip_bad_samples_like_the_dataset(tmp_path):
    """``on_bad_sample=skip``: item i of the original-size view is the sample the dataset gives
    for i (a corrupt mask: the next loadable sample), image and mask of the same sample."""
    from segkit.data.voc import VOCDataset
    from tests.unit.test_check import H, W, make_voc, path_of

    root = make_voc(tmp_path, ["a"], ["b", "c", "d", "e"])
    path_of(root, "mask", "c").write_bytes(b"not a png")
    kw = dict(train=False, num_classes=3, input_shape=[16, 20], max_bad_fraction=0.5)
    val = VOCDataset(root, "val", on_bad_sample="skip", **kw)
    view = OriginalSizeMasks(val)
    for i, used in enumerate([0, 2, 2, 3]):  # c (1) is replaced by d (2)
        image, mask = view[i]
        assert torch.equal(image, val[i][0]) and image.shape == (3, 16, 20)
        assert torch.equal(mask, torch.from_numpy(val.load_raw(used)[1]))
        assert mask.shape == (H, W)  # the original size, not the letterbox
    images, masks = next(iter(original_size_loader(val, batch_size=4, num_workers=0)))
    assert images.shape == (4, 3, 16, 20) and len(masks) == 4
    strict = VOCDataset(root, "val", **kw)  # on_bad_sample=raise: one message naming the sample
    with pytest.raises(DataError, match=r"bad sample 1 .*c\.png"):
        OriginalSizeMasks(strict)[1]


def test_a_one_key_dataset_override_applies_to_the_stored_dataset(tiny_run, tmp_path):
    """``python eval.py ckpt=... +dataset.on_bad_sample=skip``: the key goes onto the dataset
    config stored in the checkpoint (a corrupt val mask is then skipped), and a key the
    dataset does not take is one message naming it."""
    demo = make_demo_dataset(num_train=24, num_val=7, size=(32, 32)).parent  # the session's
    shutil.copytree(demo, tmp_path / "cache" / demo.name)
    masks = tmp_path / "cache" / demo.name / "VOCdevkit" / "VOC2007" / "SegmentationClass"
    val = (masks.parents[1] / "VOC2007/ImageSets/Segmentation/val.txt").read_text().split()
    (masks / f"{val[2]}.png").write_bytes(b"truncated")
    ckpt = f"ckpt={tiny_run / 'checkpoints' / 'best.pt'}"
    root = f"dataset_root={tmp_path / 'cache'}"
    with pytest.raises(DataError, match=f"bad sample 2 .*{val[2]}"):
        evaluate(eval_config(ckpt, root), tmp_path / "raise")
    skip = ["+dataset.on_bad_sample=skip", "+dataset.max_bad_fraction=0.2"]  # 1 of 7 is bad
    report = evaluate(eval_config(ckpt, root, *skip), tmp_path / "skip")
    assert report["num_images"] == 7 and 0 < report["miou"] <= 1
    stored = ck.load(tiny_run / "checkpoints" / "best.pt")["config"]["dataset"]
    typo = eval_config(ckpt, "+dataset.on_bad_sampel=skip")
    with pytest.raises(ConfigError, match=r"dataset\.on_bad_sampel: .*did you mean") as err:
        eval_dataset_config(typo, stored, "best.pt")  # what evaluate() builds its dataset from
    assert "'on_bad_sample'" in str(err.value)
