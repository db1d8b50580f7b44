"""Training in-process: a CPU run produces its files and resumes exactly (eval.py on the run:
tests/e2e/test_eval_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit import dist
from segkit.io import checkpoint as ck
from segkit.run import build_trainer, train_rank
from tests.conftest import TINY, compose_train
from tests.faults import failing


def _tags(run_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "tb").glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard events in {run_dir / 'tb'}"
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc.Tags()


@pytest.fixture
def trained(tiny_run: Path) -> Path:
    """``TINY`` trained once per session (tests/conftest.py)."""
    return tiny_run


def test_run_writes_config_log_checkpoints_events_result(trained):
    assert (trained / "config.yaml").is_file()
    result = json.loads((trained / "result.json").read_text())
    assert result["epochs"] == 2 and result["steps"] == 2 * (24 // 4)
    assert 0.0 <= result["best_miou"] <= 1.0 and result["best_epoch"] in (1, 2)
    assert result["complexity"]["params_total"] > 0
    ckpt = ck.load(trained / "checkpoints" / "last.pt")
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "best_miou",
        "rng",
        "config",
        "class_names",
        "palette",
        "metrics",
    ):
        assert key in ckpt, key
    assert ckpt["class_names"][1] == "circle" and len(ckpt["palette"]) == 5
    assert ckpt["config"]["model"]["_target_"].endswith("UNet")
    best = ck.load(trained / "checkpoints" / "best.pt")
    assert best["metrics"]["miou"] == pytest.approx(result["best_miou"])


def test_tensorboard_has_every_panel(trained):
    tags = _tags(trained)
    scalars = set(tags["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/mIoU", "val/pixel_acc"} <= scalars
    assert any(t.startswith("val_iou/") for t in scalars)
    assert "val/best_mIoU" in scalars and not any(t.startswith("hparam/") for t in scalars)
    assert {"val/image|label|pred", "val/confusion"} <= set(tags["images"])


# what depends on the wall clock, not on the training: never compared between two runs
WALL_TIME = ("train/images_per_s", "train/data_wait", "train/peak_mem_gb", "epoch_time_s")


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar curve of a run but the wall-time ones: {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t not in WALL_TIME]
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}


def _metrics_rows(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in WALL_TIME} for r in csv.DictReader(f)]


def test_resume_after_a_crash_mid_epoch_gives_identical_weights_and_records(tmp_path):
    """A crash in epoch 2 of 3, resumed from the periodic checkpoint inside that epoch: the
    weights, metrics.csv and every TensorBoard curve equal the uninterrupted run's (wall times
    aside), also the epoch after the resumed one and the log window open at the save."""
    three = [*TINY, "trainer.max_epochs=3", "trainer.log_every=3"]
    three += ["trainer.checkpoint_every_steps=4", "dataset.check=off"]
    straight = tmp_path / "straight"
    train_rank(compose_train(*three), straight)
    crashed = tmp_path / "crashed"
    # 6 steps per epoch: periodic.pt at step 8 (epoch 2, batch 2, inside the log window of
    # steps 7-9); the failure in step 9
    with pytest.raises(RuntimeError, match="injected failure at training step 9"):
        train_rank(compose_train(*three, *failing(9)), crashed)
    assert ck.load(crashed / "checkpoints" / "periodic.pt")["epoch_step"] == 2
    train_rank(compose_train(*three, "resume=auto"), crashed)
    a = ck.load(straight / "checkpoints" / "last.pt")
    b = ck.load(crashed / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 18
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["scheduler"]["_last_lr"] == b["scheduler"]["_last_lr"]
    assert a["history"] == b["history"] and a["epoch_stats"] == b["epoch_stats"] == {}
    assert _metrics_rows(crashed) == _metrics_rows(straight)
    resumed, reference = _scalars(crashed), _scalars(straight)
    assert resumed == reference
    assert [s for s, _ in reference["train/loss"]] == [3, 6, 9, 12, 15, 18]  # one per window


def test_periodic_checkpoints_record_the_position(tmp_path):
    args = [*TINY, "trainer.max_epochs=1", "trainer.log_every=1", "dataset.check=off"]
    every_4 = [*args, "trainer.checkpoint_every_steps=4"]
    # dies in the last step of the epoch (6 steps), after the step-4 save
    with pytest.raises(RuntimeError, match="injected failure at training step 6"):
        train_rank(compose_train(*every_4, *failing(6)), tmp_path / "r")
    mid = ck.load(tmp_path / "r" / "checkpoints" / "periodic.pt")
    assert mid["step"] == 4 and mid["epoch"] == 0 and mid["epoch_step"] == 4


def test_resume_from_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ck.CheckpointError, match="nowhere.pt"):
        train_rank(compose_train(*TINY, f"resume={tmp_path / 'nowhere.pt'}"), tmp_path / "r")


ONE = [*TINY, "trainer.max_epochs=1", "dataset.check=off"]


def test_frozen_encoder_keeps_weights_and_batchnorm_statistics(tmp_path):
    from segkit.run import build_model, seed_everything

    cfg = compose_train(*ONE, "trainer.freeze_epochs=1")
    seed_everything(cfg.seed)
    initial = build_model(cfg, dist.DistInfo()).state_dict()
    train_rank(cfg, tmp_path)
    trained = ck.load(tmp_path / "checkpoints" / "last.pt")["model"]
    encoder = [k for k in initial if k.startswith("encoder.")]
    decoder = [k for k in initial if not k.startswith("encoder.") and k.endswith("weight")]
    assert encoder and decoder
    for k in encoder:  # weights AND running_mean / running_var / num_batches_tracked
        assert torch.equal(initial[k], trained[k]), k
    assert any(not torch.equal(initial[k], trained[k]) for k in decoder)


def test_gradient_clipping_bounds_the_update(tmp_path):
    from segkit.run import build_model, seed_everything

    clip, lr = 1e-3, 1.0
    cfg = compose_train(
        *ONE,
        "optimizer=sgd",
        f"optimizer.lr={lr}",
        "optimizer.momentum=0",
        "optimizer.nesterov=false",
        "optimizer.weight_decay=0",
        "scheduler.warmup_epochs=0",
        f"trainer.grad_clip={clip}",
        "trainer.limit_train_batches=1",
        "trainer.max_epochs=1",
        "scheduler.eta_min=1.0",
    )
    seed_everything(cfg.seed)
    initial = build_model(cfg, dist.DistInfo()).state_dict()
    train_rank(cfg, tmp_path)
    trained = ck.load(tmp_path / "checkpoints" / "last.pt")["model"]
    sq = sum(
        (trained[k].double() - initial[k].double()).pow(2).sum()
        for k in initial
        if initial[k].is_floating_point() and "running" not in k
    )
    # one plain SGD step: |delta| = lr * |clipped grad| <= lr * clip
    assert 0 < sq.sqrt().item() <= lr * clip * (1 + 1e-4)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    train_rank(
        compose_train(*ONE, "trainer.precision=bf16", "trainer.limit_train_batches=2"), tmp_path
    )
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == 2 and 0.0 <= result["best_miou"] <= 1.0
    hist = ck.load(tmp_path / "checkpoints" / "last.pt")["history"]
    assert np.isfinite(hist[0]["train_loss"]) and np.isfinite(hist[0]["val_loss"])


def test_init_from_loads_matching_weights_and_fails_on_nothing(trained, tmp_path):
    from segkit.run import build_model

    source = trained / "checkpoints" / "best.pt"
    model = build_model(compose_train(*ONE, f"model.init_from={source}"), dist.DistInfo())
    stored = ck.load(source)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, stored[k]), k
    other = tmp_path / "other.pt"
    torch.save({"head.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(RuntimeError, match="parameters match"):
        build_model(compose_train(*ONE, f"model.init_from={other}"), dist.DistInfo())


def _voc(root: Path, n: int, bad: set[int]) -> Path:
    """A tiny VOC folder; masks listed in ``bad`` hold an out-of-range class id (9)."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"img{i:02d}" for i in range(n)]
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)).save(
            voc / "JPEGImages" / f"{name}.jpg"
        )
        mask = np.zeros((24, 24), np.uint8)
        mask[4:12, 4:12] = 9 if i in bad else 1
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[: n - 4]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[n - 4 :]) + "\n")
    return root / "VOCdevkit"


VOC = [
    "dataset=voc",
    "dataset.num_classes=2",
    "dataset.class_names=[bg,fg]",
    "dataset.input_shape=[24,24]",
    "model=unet",
    "model.base_channels=4",
    "loader.batch_size=2",
    "loader.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.progress_bar=false",
    "trainer.figures=false",
    "launch.accelerator=cpu",
]


def test_on_bad_sample_skip_finishes_and_lists_what_it_skipped(tmp_path):
    root = _voc(tmp_path / "data", 12, bad={2})
    skip = ["dataset.on_bad_sample=skip", "dataset.max_bad_fraction=0.2"]
    train_rank(compose_train(*VOC, f"dataset.root={root}", *skip), tmp_path / "run")
    listed = (tmp_path / "run" / "bad_samples.txt").read_text()
    assert "img02.png" in listed and "img01" not in listed
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 3  # 7 // 2


def test_out_of_range_label_stops_before_the_first_step(tmp_path):
    from segkit.errors import DataError

    root = _voc(tmp_path / "data", 12, bad={3})
    with pytest.raises(DataError, match=r"img03\.png") as e:
        train_rank(compose_train(*VOC, f"dataset.root={root}"), tmp_path / "run")
    assert "9" in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_metrics_csv_has_one_row_per_epoch_equal_to_tensorboard(trained):
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with open(trained / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    acc = EventAccumulator(str(trained / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tb = {e.step: e.value for e in acc.Scalars("val/mIoU")}
    for r in rows:
        assert float(r["miou"]) == pytest.approx(tb[int(r["step"])], rel=1e-6)
        assert float(r["iou/circle"]) >= 0.0 and float(r["epoch_time_s"]) > 0


def _checkpoint_at(epoch: int, *overrides: str) -> dict:
    """A trainer's checkpoint after ``epoch`` epochs, its schedule stepped there (no
    training: the schedule and the counters are what a resume reads)."""
    trainer, _ = build_trainer(compose_train(*TINY, *overrides), dist.DistInfo())
    for _ in range(epoch * trainer.steps_per_epoch):
        trainer.optimizer.step()
        trainer.scheduler.step()
    trainer.state.epoch, trainer.state.step = epoch, epoch * trainer.steps_per_epoch
    return trainer.state_dict(None)


@pytest.mark.parametrize(
    ("saved", "resumed", "total"),
    [
        # saved with 6 steps per epoch (batch 4) after 2 of 4 epochs, resumed with 3 (batch 8,
        # as with 2 processes): 12 + 2 x 3
        (["trainer.max_epochs=4"], ["trainer.max_epochs=4", "loader.batch_size=8"], 18),
        # a run of 4 epochs resumed with max_epochs=6: 12 + 4 x 6
        (["trainer.max_epochs=4"], ["trainer.max_epochs=6"], 36),
    ],
)
def test_resume_retargets_the_schedule_to_the_new_last_step(saved, resumed, total, caplog):
    ckpt = _checkpoint_at(2, *saved, "scheduler.eta_min=0")
    lr = ckpt["scheduler"]["_last_lr"][0]
    trainer, _ = build_trainer(
        compose_train(*TINY, *resumed, "scheduler.eta_min=0"), dist.DistInfo()
    )
    caplog.set_level("INFO")
    trainer.load_state(ckpt)
    assert trainer.scheduler.total_steps == total
    assert f"this run ends at step {total}" in caplog.text
    assert trainer.lr == lr  # from the current lr ...
    for _ in range(total - 12):
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert trainer.lr == pytest.approx(0.0, abs=1e-15)  # ... to eta_min at the new last step
    same, _ = build_trainer(compose_train(*TINY, *saved, "scheduler.eta_min=0"), dist.DistInfo())
    same.load_state(ckpt)  # nothing changed: the schedule is the checkpoint's
    assert same.scheduler.state_dict() == ckpt["scheduler"]


def test_iteration_schedule_with_accumulation_validates_every_n_steps(tmp_path):
    """The demo with accumulate_grad_batches=2, batch 4: 6 batches, 3 optimiser steps per
    epoch. max_steps=5 ends inside epoch 2; val_every_steps=2 validates at steps 2 and 4
    (inside epochs) and at the end; step and epoch go to metrics.csv, TensorBoard and the
    checkpoints; the schedule (warmup in steps) ends at step 5; resuming changes nothing."""
    args = [*TINY, "loader.batch_size=4", "trainer.accumulate_grad_batches=2"]
    args += ["trainer.max_steps=5", "trainer.val_every_steps=2", "trainer.log_every=1"]
    args += ["scheduler.warmup_steps=2", "scheduler.eta_min=0", "dataset.check=off"]
    run = tmp_path / "run"
    train_rank(compose_train(*args), run)
    last = ck.load(run / "checkpoints" / "last.pt")
    assert (last["step"], last["epoch"], last["epoch_step"]) == (5, 2, 0)
    sched = last["scheduler"]
    assert (sched["total_steps"], sched["warmup_steps"], sched["_last_lr"][0]) == (5, 2, 0.0)
    rows = _metrics_rows(run)
    assert [(int(r["epoch"]), int(r["step"]), bool(r["miou"])) for r in rows] == [
        (1, 2, True),  # inside epoch 1
        (1, 3, False),  # the end of epoch 1: not a validation step
        (2, 4, True),
        (2, 5, True),  # max_steps: the end, validated
    ]
    assert [h["step"] for h in last["history"]] == [2, 3, 4, 5]
    scalars = _scalars(run)
    assert [s for s, _ in scalars["val/mIoU"]] == [2, 4, 5]
    assert [v for _, v in scalars["val/epoch"]] == [1, 2, 2]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5]
    best = ck.load(run / "checkpoints" / "best.pt")
    assert best["best_step"] == best["step"] and best["metrics"]["miou"] == last["best_miou"]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    train_rank(compose_train(*args, "resume=auto"), run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_sigterm_while_finishing_is_an_interrupt_that_names_what_is_intact(tmp_path, monkeypatch):
    """A real SIGTERM to this process after the loop (calibration, result files: no step to
    finish there) stops the run as interrupted, exit 143, with the trained checkpoints intact
    and status.json saying so; the default handler is back afterwards. ``resume=auto`` then
    finishes the run."""
    import os
    import signal

    import segkit.run.training as training
    from segkit.errors import Interrupted

    def killed_while_finishing(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the finishing")

    monkeypatch.setattr(training, "finish_run", killed_while_finishing)
    before = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as e:
        train_rank(compose_train(*TINY, "trainer.max_epochs=1", "dataset.check=off"), run)
    assert e.value.exit_code == 143
    best = run / "checkpoints" / "best.pt"
    message = str(e.value)
    assert f"scripts/calibrate.py {best}" in message and "SIGTERM after training" in message
    assert ck.load(best)["step"] == 6
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and "while finishing the run" in status["reason"]
    assert signal.getsignal(signal.SIGTERM) == before
    assert not (run / "result.json").exists()

    # resume=auto trains nothing more and does the finishing that the signal stopped
    monkeypatch.undo()
    trained = ck.load(run / "checkpoints" / "last.pt")
    cfg = compose_train(*TINY, "trainer.max_epochs=1", "dataset.check=off", "resume=auto")
    assert train_rank(cfg, run) == trained["best_miou"]
    assert json.loads((run / "result.json").read_text())["best_miou"] == trained["best_miou"]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert (run / "checkpoints" / "best.safetensors").is_file()
    after = ck.load(run / "checkpoints" / "last.pt")
    assert after["step"] == 6
    for name, tensor in trained["model"].items():
        assert torch.equal(tensor, after["model"][name]), name
