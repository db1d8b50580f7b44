"""The evaluate task of eval.py, in this process (``segkit.run.evaluation.evaluate``, what
``python eval.py`` runs): the default sliding window, ``on_bad_sample=skip`` at the original
size, one-key dataset overrides. As a command: tests/e2e/test_eval_cli.py."""

from __future__ import annotations

import importlib.util
import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from segkit.io import checkpoint as ck
from segkit.run.evaluation import evaluate
from segkit.run.models import checkpoint_window
from tests.conftest import CONF, REPO


def load_script(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
