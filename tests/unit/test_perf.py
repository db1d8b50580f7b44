"""The training loop's performance contract, checked by behaviour (timings are measured by
``scripts/benchmark.py``, never asserted): scalars only at logging points, progress bars that
honour the batch limits, precision choices. ``torch.compile`` giving the eager losses without
recompiling: tests/integration/test_compile.py."""

from __future__ import annotations

import pytest
import torch

from segkit import dist, precision
from segkit.engine.trainer import Trainer
from segkit.evaluation.metrics import ConfusionMatrix, evaluate
from segkit.precision import resolve_precision
from segkit.reporting.tracker import NullTracker
from segkit.run import (
    build_trainer,
    seed_everything,
)
from tests.conftest import TINY, compose_train

FAST = [*TINY, "dataset.check=off", "trainer.num_vis=0"]


class RecordingTracker(NullTracker):
    """Stands in for segkit.reporting.tracker.Tracker: keeps what the Trainer hands it."""

    def __init__(self) -> None:
        self.scalars: dict[int, dict[str, float]] = {}

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.scalars.setdefault(step, {}).update(scalars)


def make_trainer(*overrides: str, compile_backend: str | None = None, tracker=None) -> Trainer:
    """A Trainer built the way segkit.run does, without a run directory."""
    cfg = compose_train(*FAST, *overrides)
    seed_everything(cfg.seed)
    trainer, model = build_trainer(cfg, dist.DistInfo())
    if compile_backend:
        trainer.model = torch.compile(model, backend=compile_backend)
    trainer.tracker = tracker or NullTracker()
    return trainer


def test_scalars_only_every_log_every_steps_and_the_loss_is_the_window_mean():
    every_step = RecordingTracker()
    make_trainer("trainer.log_every=1", "trainer.max_epochs=1", tracker=every_step).fit()
    windowed = RecordingTracker()
    make_trainer("trainer.log_every=4", "trainer.max_epochs=1", tracker=windowed).fit()
    # 6 steps: logging points at step 4 and at the end of the epoch (step 6)
    assert sorted(windowed.scalars) == [4, 6]
    assert sorted(every_step.scalars) == [1, 2, 3, 4, 5, 6]
    for tag in ("train/loss", "train/lr", "train/images_per_s", "train/data_wait"):
        assert tag in windowed.scalars[4], tag
    per_step = [every_step.scalars[s]["train/loss"] for s in range(1, 7)]
    assert windowed.scalars[4]["train/loss"] == pytest.approx(sum(per_step[:4]) / 4, rel=1e-6)
    assert windowed.scalars[6]["train/loss"] == pytest.approx(sum(per_step[4:]) / 2, rel=1e-6)
    norms = [every_step.scalars[s]["train/grad_norm"] for s in range(1, 5)]
    assert windowed.scalars[4]["train/grad_norm"] == pytest.approx(sum(norms) / 4, rel=1e-5)
    assert 0 <= windowed.scalars[6]["train/data_wait"] <= 1
    assert windowed.scalars[6]["train/images_per_s"] > 0


def test_validation_bar_total_honours_limit_val_batches(capsys):
    trainer = make_trainer("loader.val_batch_size=2")  # 7 val images: 4 batches
    cm = ConfusionMatrix(5)
    cpu = torch.device("cpu")
    evaluate(trainer.model, trainer.val_loader, cm, device=cpu, progress=True, limit_batches=1)
    bar = capsys.readouterr().err
    assert "val:" in bar and "0/1 " in bar  # the total is the limit, not the 4 batches
    assert 0 < cm.mat.sum().item() <= 2 * 32 * 32  # one batch of two 32x32 masks scored


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_on_cpu_is_bf16_only_where_native(native, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16"  # what the config says, where it says it
    assert resolve_precision("fp32", cpu) == "fp32"


def test_cpu_bf16_probe_answers_a_bool():
    assert precision.cpu_has_native_bf16() in (True, False)


def test_emulated_bf16_warns_once_naming_the_fix(monkeypatch, caplog):
    monkeypatch.setattr(precision, "_warned_emulated", False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert not precision.warn_emulated_bf16("fp32", cpu, "trainer.precision")
    assert not precision.warn_emulated_bf16("bf16", torch.device("cuda"), "trainer.precision")
    with caplog.at_level("WARNING", logger="segkit"):
        trainer = make_trainer("trainer.precision=bf16", "trainer.max_epochs=1")
        assert not precision.warn_emulated_bf16("bf16", cpu, "precision")  # once per process
    assert trainer.precision == "bf16"  # warned, not overridden
    [message] = [r.getMessage() for r in caplog.records if "emulates" in r.getMessage()]
    assert "trainer.precision=bf16" in message and "trainer.precision=auto" in message
    assert "trainer.precision=fp32" in message


def test_native_bf16_does_not_warn(monkeypatch, caplog):
    monkeypatch.setattr(precision, "_warned_emulated", False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="segkit"):
        assert not precision.warn_emulated_bf16("bf16", torch.device("cpu"), "trainer.precision")
    assert not caplog.records
