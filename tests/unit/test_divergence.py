"""Divergence: a run whose loss or weights go non-finite stops with DivergedError (exit code 4)
naming the step, lr, loss scale and samples, and never writes non-finite weights (train.py's
exit code 4: tests/e2e/test_divergence_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from segkit.errors import DivergedError
from segkit.io import checkpoint as ck
from segkit.run import build_datasets, train_rank
from tests.conftest import TINY, compose_train

# 24 train images, batch 4: 6 steps per epoch; epoch 1 ends at step 6 with its checkpoints
RUN = [*TINY, "dataset.check=off", "trainer.num_vis=0", "trainer.max_epochs=3"]


def assert_epoch_1_checkpoints_are_finite(ckpt_dir: Path) -> None:
    for name in (ck.LAST, ck.BEST):
        ckpt = ck.load(ckpt_dir / name)
        assert ckpt["epoch"] == 1, name
        for key, t in ckpt["model"].items():
            if t.is_floating_point():
                assert torch.isfinite(t).all(), (name, key)


def first_bad_batch_files(cfg, epoch: int, position: int) -> list[str]:
    """The image files the run's DistributedSampler puts in batch ``position`` of ``epoch``."""
    train_ds, _ = build_datasets(cfg)
    sampler = DistributedSampler(train_ds, 1, 0, seed=cfg.seed, drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)[position * 4 : (position + 1) * 4]
    return [train_ds.files[i][0] for i in indices]


def test_nan_losses_stop_the_run_naming_step_lr_scale_and_samples(tmp_path):
    cfg = compose_train(
        *RUN,
        "loss._target_=tests.faults.NaNCrossEntropy",
        "+loss.nan_from_step=8",  # epoch 2, its second batch
        "trainer.max_nonfinite_steps=3",
        "trainer.log_every=1",
    )
    with pytest.raises(DivergedError) as e:
        train_rank(cfg, tmp_path)
    message = str(e.value)
    assert "3 consecutive non-finite steps" in message and "steps 8..10" in message
    assert "lr " in message and "loss scale none" in message and "trainer.precision=fp32" in message
    for path in first_bad_batch_files(cfg, epoch=1, position=1):
        assert path in message
    # the guard kept NaN out of the weights; epoch 2 never ended, so nothing was overwritten
    assert_epoch_1_checkpoints_are_finite(tmp_path / "checkpoints")
