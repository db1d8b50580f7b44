"""What users look at: TensorBoard content, metrics.csv, plots/, the eval report, hparams,
status.json and the console lines of a run."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.data.base import LabelSpace
from segkit.evaluation.metrics import ConfusionMatrix
from segkit.reporting import run_files
from segkit.reporting.figures import (
    confusion_figure,
    custom_layout,
    iou_bar_figure,
    sample_grid,
    write_eval_report,
)
from segkit.reporting.run_files import (
    hparams_of,
    override_keys,
    read_status,
    task_overrides,
    write_status,
)
from segkit.reporting.tracker import SampleCollector, Tracker
from tests.conftest import LOGGED, TINY, compose_train

NAMES = ["background", "circle", "square"]
PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
LABELS = LabelSpace(3, 255, NAMES, PALETTE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
# rows = label, cols = prediction: row-normalised [[.75 .25 0] [0 1 0] [.1 .2 .7]]
MAT = np.array([[3, 1, 0], [0, 4, 0], [1, 2, 7]])


def _metrics(mat: np.ndarray = MAT) -> dict:
    """What evaluate() returns for a confusion matrix ``mat`` (fed as mat[i, j] pixels)."""
    target = np.repeat(np.arange(len(mat)), mat.sum(1))
    pred = np.concatenate([np.repeat(np.arange(len(mat)), row) for row in mat])
    cm = ConfusionMatrix(len(mat))
    cm.update(torch.as_tensor(pred)[None, None], torch.as_tensor(target)[None, None])
    assert np.array_equal(cm.mat.numpy(), mat)
    return {**cm.compute(), "confusion": mat, "loss": 0.5}


def _accumulator(tb: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


# --------------------------------------------------------------------------- figures
def test_confusion_figure_is_row_normalised_and_labelled():
    fig = confusion_figure(MAT, NAMES)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    cells = [t.get_text() for t in ax.texts]  # row by row
    assert cells == ["0.75", "0.25", "0.00", "0.00", "1.00", "0.00", "0.10", "0.20", "0.70"]
    assert len(fig.axes) == 2  # the colour bar


def test_iou_bars_name_every_class_and_mark_absent_ones():
    fig = iou_bar_figure([0.5, float("nan"), 0.25], NAMES, PALETTE)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert [t.get_text() for t in ax.texts] == ["0.500", "n/a", "0.250"]
    assert ax.get_legend().get_texts()[0].get_text() == "mIoU 0.375"  # mean of 0.5, 0.25


def test_sample_grid_legend_lists_only_the_shown_classes_when_there_are_many():
    names = [f"c{i}" for i in range(150)]
    palette = [[i, i, i] for i in range(150)]
    image = np.zeros((16, 16, 3), np.uint8)
    label, pred = np.full((16, 16), 7), np.full((16, 16), 42)
    label[0] = 255
    fig = sample_grid([(image, label, pred)], names, palette)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["c7", "c42", "ignore"]


def test_sample_grid_rows_are_upscaled_with_titles_and_legend():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 48, 3), np.uint8)
    label = rng.integers(0, 3, (32, 48))
    label[0, :] = 255
    fig = sample_grid([(image, label, label)] * 2, NAMES, PALETTE)
    fig.canvas.draw()
    w, h = fig.canvas.get_width_height()
    axes = fig.axes
    assert len(axes) == 6 and [a.get_title() for a in axes[:3]] == [
        "image",
        "ground truth",
        "prediction",
    ]
    box = axes[0].get_window_extent()
    assert box.height >= 256 and box.width >= 1.4 * box.height  # 32x48 drawn >= 8x larger
    assert w >= 3 * 256 and h >= 2 * 256
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [*NAMES, "ignore"]
    overlay = axes[1].get_images()[0].get_array()
    assert (np.asarray(overlay[0]) == 255).all()  # the ignore row is white
    assert np.array_equal(axes[0].get_images()[0].get_array(), image)


def test_write_eval_report_writes_pictures_and_table(tmp_path):
    files = write_eval_report(tmp_path / "eval", _metrics(), NAMES, PALETTE)
    assert [f.name for f in files] == ["confusion_matrix.png", "per_class_iou.png", "metrics.txt"]
    for png in files[:2]:
        w, h = _png_size(png)
        assert 300 <= w <= 4000 and 200 <= h <= 4000
    table = files[2].read_text()
    # IoU of square: TP 7 / (row 10 + col 7 - 7) = 70.00 %; circle: 4 / (4 + 7 - 4) = 57.14 %
    assert "square" in table and "70.00" in table and "57.14" in table


# --------------------------------------------------------------------------- hparams, layout
def test_hparams_hold_every_override_of_the_job_and_list_it_first(tmp_path):
    from tensorboard.plugins.hparams import backend_context, metadata

    overrides = ["optimizer.weight_decay=0.03", "loss=focal", "+trainer.max_epochs=2"]
    run_config = _plain(compose_train(*TINY, *overrides[:2]))
    hp = hparams_of(run_config, [*overrides, "hydra.run.dir=/x", "~seed"])
    assert hp["optimizer.weight_decay"] == 0.03  # the run config's value, a number
    assert hp["loss"] == "focal"  # a group choice: the override's text
    assert hp["loss.class"] == "FocalLoss" and hp["trainer.max_epochs"] == 2
    assert not any(k.startswith(("hydra", "~")) for k in hp)
    assert all(isinstance(v, int | float | str | bool) for v in hp.values())
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    assert task_overrides(tmp_path) == overrides and task_overrides(tmp_path / "x") == []
    varied = override_keys(overrides)
    assert varied == ["optimizer.weight_decay", "loss", "trainer.max_epochs"]
    tracker = Tracker(tmp_path, LABELS)
    tracker.finish(hp, {"best_miou": 0.5}, varied=varied)
    content = _accumulator(tmp_path / "tb").PluginTagToContent("hparams")
    experiment = metadata.parse_experiment_plugin_data(content["_hparams_/experiment"])
    start = metadata.parse_session_start_info_plugin_data(content["_hparams_/session_start_info"])
    assert start.hparams["optimizer.weight_decay"].number_value == pytest.approx(0.03)
    assert start.hparams["loss"].string_value == "focal"
    # TensorBoard shows the first hparams of its own order: the varied ones come first
    backend_context._sort_and_reduce_to_hparams_limit(experiment, 3)
    assert sorted(h.name for h in experiment.hparam_infos) == sorted(varied)
    assert json.loads((tmp_path / "result.json").read_text()) == {"best_miou": 0.5}


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def test_custom_layout_puts_train_and_val_loss_on_one_chart():
    tags = ["train/loss", "val/loss", "val/mIoU", "val_iou/a", "val_iou/b", "perf/images_per_s"]
    layout = custom_layout([*tags, "val/epoch"])
    loss = layout["loss"]["train vs val loss"][1]
    assert any("train/loss" in p for p in loss) and any("val/loss" in p for p in loss)
    assert layout["val"]["per-class IoU"] == ["Multiline", ["^val_iou/"]]
    assert layout["perf"] == {"perf/images_per_s": ["Multiline", ["^perf/images_per_s$"]]}
    assert "learning rate" not in layout["loss"]  # no train/lr tag: no empty chart


# --------------------------------------------------------------------------- metrics.csv
def _row(epoch: int, step: int, miou: float | None) -> dict:
    iou = None if miou is None else [miou, miou, miou]
    return dict(epoch=epoch, step=step, lr=0.1, train_loss=1.0, val_loss=None, miou=miou, iou=iou)


def test_resume_drops_csv_rows_after_the_checkpoint_and_keeps_the_best(tmp_path):
    t = Tracker(tmp_path, LABELS)
    for epoch, miou in ((1, 0.4), (2, 0.6), (3, 0.5)):
        t.log_epoch(_row(epoch, 10 * epoch, miou))
    t.close()
    resumed = Tracker(tmp_path, LABELS, start_step=10)  # the checkpoint of epoch 1
    resumed.close()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"] and resumed.best_miou == 0.4
    assert rows[0]["iou/circle"] == "0.4" and rows[0]["val_loss"] == ""


def test_a_row_with_new_columns_rewrites_the_header(tmp_path):
    path = tmp_path / "m.csv"
    run_files.append_row(path, {"epoch": 1, "step": 5})
    run_files.append_row(path, {"epoch": 2, "step": 10, "images_per_s": 7.5})
    assert path.read_text().splitlines() == ["epoch,step,images_per_s", "1,5,", "2,10,7.5"]


# --------------------------------------------------------------------------- status.json
def test_status_round_trips_and_keeps_who_started_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "model=unet"])
    running = write_status(tmp_path, "running", epoch=0)
    assert running["pid"] == os.getpid() and running["host"]
    assert running["command"] == f"{sys.executable} train.py model=unet"
    best = tmp_path / "checkpoints" / "best.pt"
    write_status(tmp_path, "finished", epoch=3, best_miou=0.71, best_checkpoint=best)
    status = read_status(tmp_path)
    assert status["status"] == "finished" and status["best_checkpoint"] == str(best)
    assert status["started_at"] == running["started_at"] and status["pid"] == os.getpid()
    assert status["epoch"] == 3 and "ended_at" in status
    assert read_status(tmp_path / "nowhere") is None
    with pytest.raises(ValueError, match="done.*running, finished"):
        write_status(tmp_path, "done")


def test_status_write_is_atomic(tmp_path, monkeypatch):
    write_status(tmp_path, "running")
    before = (tmp_path / "status.json").read_text()

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(run_files.os, "fsync", crash)  # dies after writing, before the rename
    with pytest.raises(OSError, match="disk gone"):
        write_status(tmp_path, "failed", reason="x" * 10_000)
    assert (tmp_path / "status.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp file left


# --------------------------------------------------------------------------- a real run
@pytest.fixture
def run(tiny_run: Path) -> tuple[Path, str]:
    """``TINY`` trained once per session (tests/conftest.py), and what it logged (segkit logger,
    INFO and up, one record per line)."""
    return tiny_run, (tiny_run / LOGGED).read_text()


def test_a_run_writes_its_plots_and_says_where_they_are(run):
    run_dir, logged = run
    plots = run_dir / "plots"
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["confusion_matrix.png", "curves.png", "metrics.txt", "per_class_iou.png"]
    w, h = _png_size(plots / "curves.png")
    assert w >= 800 and h >= 300
    assert "circle" in (plots / "metrics.txt").read_text()
    assert "resolved config:\n" in logged and "base_channels: 4" in logged
    assert logged.count("worst IoU: ") == 2  # one line per validation
    assert "per-class metrics of the last validation (epoch 2)" in logged
    assert str(plots / "curves.png") in logged and f"tensorboard --logdir {run_dir}" in logged


def test_metrics_csv_equals_the_tensorboard_scalars(run):
    run_dir, _ = run
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    acc = _accumulator(run_dir / "tb")
    columns = {
        "miou": "val/mIoU",
        "val_loss": "val/loss",
        "pixel_acc": "val/pixel_acc",
        "train_loss": "train/loss_epoch",
        "iou/circle": "val_iou/circle",
    }
    for column, tag in columns.items():
        tb = {e.step: e.value for e in acc.Scalars(tag)}
        assert sorted(tb) == [int(r["step"]) for r in rows], tag
        for r in rows:
            assert float(r[column]) == pytest.approx(tb[int(r["step"])], rel=1e-6), column
    best = [e.value for e in acc.Scalars("val/best_mIoU")]
    assert best[-1] == pytest.approx(max(float(r["miou"]) for r in rows), rel=1e-6)


def test_tensorboard_has_figures_layout_and_hparams_without_single_point_charts(run):
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import metadata

    run_dir, _ = run
    acc = _accumulator(run_dir / "tb")
    tags = acc.Tags()
    assert not any(t.startswith("hparam") for t in tags["scalars"])
    for tag in ("val/image|label|pred", "val/confusion"):
        image = acc.Images(tag)[-1]
        assert image.width >= 600 and image.height >= 500, tag
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {c.title for cat in layout.category for c in cat.chart}
    assert {"train vs val loss", "per-class IoU", "mIoU and pixel accuracy"} <= charts
    content = acc.PluginTagToContent("hparams")
    start = metadata.parse_session_start_info_plugin_data(content["_hparams_/session_start_info"])
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.002)
    assert start.hparams["params_M"].number_value > 0
    experiment = metadata.parse_experiment_plugin_data(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert "val/best_mIoU" in metric_tags and metric_tags <= set(tags["scalars"])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["epochs"] == 2


def test_log_val_names_the_three_worst_classes(tmp_path, caplog):
    t = Tracker(tmp_path, LABELS)
    samples = SampleCollector(0)
    with caplog.at_level(logging.INFO, logger="segkit"):
        t.log_val(8, 2, _metrics(), samples)
    t.close()
    # IoU: background 3/(4+4-3)=0.6, circle 4/(4+7-4)=0.571, square 0.7
    assert "epoch 2 val mIoU 0.6238; worst IoU: circle 0.571, background 0.600, square 0.700" in (
        caplog.text
    )
