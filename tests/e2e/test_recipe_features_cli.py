"""The recipe features through the entry points: a bad copy-paste class is one message from
train.py, and validation at the original label resolution scores what eval.py scores (the
features in-process: tests/unit/test_recipe_features.py)."""

from __future__ import annotations

import json
import math

import pytest

from segkit.errors import DataError
from segkit.io import checkpoint as ck
from segkit.run import build_trainer, train_rank
from tests.conftest import TINY, compose_train, run_cli
from tests.unit.test_recipe_features import _cpu


def test_copy_paste_bad_class_on_the_command_line_is_one_message(tmp_path):
    proc = run_cli(
        "train.py", *TINY, "dataset.augment.train.copy_paste.p=0.5",
        "dataset.augment.train.copy_paste.classes=[9]",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == DataError.exit_code, proc.stderr[-2000:]
    assert (
        proc.stderr.count("train.copy_paste: classes holds [9]") == 1
        and "Traceback" not in proc.stderr
    )


def test_validation_at_original_size_equals_eval_py(tmp_path):
    """Training-time validation with dataset.val_original_size scores exactly what eval.py
    scores on the saved weights (original 32x32 labels, model input 24x24)."""
    run = tmp_path / "run"
    over = [*TINY, "dataset.input_shape=[24,24]", "dataset.val_original_size=true"]
    over.append("trainer.precision=bf16")  # eval.py validates as the run did (bf16 autocast)
    over.append("eval.modes=[whole,whole+flip]")  # the recipe's evaluation: eval.py's default
    train_rank(compose_train(*over), run)
    best = ck.load(run / "checkpoints" / "best.pt")
    assert math.isfinite(best["metrics"]["loss"])
    out = tmp_path / "eval"
    proc = run_cli(
        "eval.py", f"ckpt={run / 'checkpoints' / 'best.pt'}", "loader.num_workers=0",
        f"hydra.run.dir={out}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = json.loads((out / "metrics.json").read_text())
    assert list(scored["modes"]) == ["whole", "whole+flip"]
    assert scored["miou"] == pytest.approx(best["metrics"]["miou"], abs=1e-9)
    assert scored["iou"] == pytest.approx(best["metrics"]["iou"], abs=1e-9, nan_ok=True)
    # dataset=NAME (a config whose input_shape is 32x32, not the run's 24x24): the same numbers
    named = tmp_path / "named"
    proc = run_cli(
        "eval.py", f"ckpt={run / 'checkpoints' / 'best.pt'}", "loader.num_workers=0",
        "dataset=demo", *[o for o in TINY if o.startswith("dataset.")],
        f"hydra.run.dir={named}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((named / "metrics.json").read_text())["miou"] == scored["miou"]
    # letterboxed 24x24 labels score something else: the two paths really differ
    boxed, _ = build_trainer(compose_train(*TINY, "dataset.input_shape=[24,24]"), _cpu())
    boxed.load_state(best)
    assert boxed.validate(0)["miou"] != pytest.approx(best["metrics"]["miou"], abs=1e-6)
