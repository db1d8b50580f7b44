"""What a run leaves for people to look at: TensorBoard events, the config snapshot and
``result.json``.

Only rank 0 has a :class:`Tracker`; every other rank gets ``None`` and the training loop skips
all of this. The Trainer calls :meth:`Tracker.log_train` per step, :meth:`Tracker.log_val` per
validation and :meth:`Tracker.finish` once.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.data.base import LabelSpace
from segkit.visualize import colorize, confusion_image, denormalize, panel

log = logging.getLogger("segkit")

RESULT_FILE = "result.json"
METRICS_CSV = "metrics.csv"
CONFIG_FILE = "config.yaml"


class SampleCollector:
    """Keeps the first ``limit`` validation samples of a pass on the CPU for pictures.

    Called by :func:`segkit.metrics.evaluate` as ``on_batch(images, masks, pred)``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, images: torch.Tensor, masks, pred) -> None:
        for img, m, p in zip(images, masks, pred):
            if len(self.samples) >= self.limit:
                return
            self.samples.append((img.float().cpu().numpy(), m.cpu().numpy(), p.cpu().numpy()))


class Tracker:
    """TensorBoard writer in ``run_dir/tb`` plus the run's files; rank 0 only.

    ``start_step``: the optimiser step the run starts from; a resumed run purges the events a
    killed run wrote after its last checkpoint, so the curves continue without overlap.
    """

    def __init__(self, run_dir: Path, labels: LabelSpace, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.labels = Path(run_dir), labels
        purge = start_step + 1 if start_step > 0 else None
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def log_train(self, step: int, loss: float, lr: float) -> None:
        self.log_scalars(step, {"train/loss": loss, "train/lr": lr})

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """TensorBoard scalars ``{tag: value}`` at optimiser step ``step``."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch to ``metrics.csv`` (header on first write). ``row``: epoch, step,
        lr, train_loss, val_loss, miou, pixel_acc (None when not validated), iou (per-class
        list or None), epoch_time_s; per-class IoU becomes one ``iou/<class>`` column each."""
        path = self.run_dir / METRICS_CSV
        iou = row.get("iou") or [None] * self.labels.num_classes
        flat = {k: v for k, v in row.items() if k != "iou"}
        flat.update({f"iou/{n}": v for n, v in zip(self.labels.class_names, iou)})
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flat))
            if new:
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in flat.items()})

    def log_val(self, step: int, epoch: int, metrics: dict, samples: SampleCollector) -> None:
        """Scalars, per-class IoU, image | label | prediction panels and the confusion matrix."""
        w = self.writer
        w.add_scalar("val/loss", metrics["loss"], step)
        w.add_scalar("val/mIoU", metrics["miou"], step)
        w.add_scalar("val/pixel_acc", metrics["pixel_acc"], step)
        w.add_scalar("val/epoch", epoch, step)
        for name, iou in zip(self.labels.class_names, metrics["iou"]):
            if not math.isnan(iou):
                w.add_scalar(f"val_iou/{name}", iou, step)
        panels = [self._panel(*s) for s in samples.samples]
        if panels:
            w.add_images("val/image|label|pred", np.stack(panels), step, dataformats="NHWC")
        w.add_image("val/confusion", confusion_image(metrics["confusion"]), step, dataformats="HWC")
        w.flush()

    def _panel(self, image: np.ndarray, mask: np.ndarray, pred: np.ndarray) -> np.ndarray:
        lab = self.labels
        rgb = denormalize(image, lab.mean, lab.std)
        return panel(
            rgb,
            colorize(mask, lab.palette, lab.ignore_index),
            colorize(pred, lab.palette, lab.ignore_index),
        )

    def finish(self, hparams: dict[str, Any], result: dict) -> None:
        """Log hparams + final metrics into the run's event stream, close it, write
        ``result.json``."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metrics = {
            "hparam/best_miou": result["best_miou"],
            "hparam/best_epoch": result["best_epoch"],
        }
        hp = dict(hparams)
        if result.get("complexity"):
            hp["params_M"] = result["complexity"]["params_total"] / 1e6
            hp["gflops"] = result["complexity"]["flops"] / 1e9
        for summary in hparams_summary(hp, metrics):
            self.writer.file_writer.add_summary(summary)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, 0)
        self.writer.close()
        (self.run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))


def hparams_of(run_config: dict) -> dict[str, Any]:
    """The hyperparameters a sweep varies, from the resolved run config, flattened for
    TensorBoard's HParams plugin."""
    model, loss, optim = run_config["model"], run_config["loss"], run_config["optimizer"]
    flat = {
        "model": model["_target_"].rsplit(".", 1)[-1],
        "loss": loss["_target_"].rsplit(".", 1)[-1],
        "optimizer": optim["_target_"].rsplit(".", 1)[-1],
        "lr": optim["lr"],
        "batch_size": run_config["loader"]["batch_size"],
        "max_epochs": run_config["trainer"]["max_epochs"],
        "precision": run_config["trainer"]["precision"],
        "seed": run_config["seed"],
    }
    for key in ("backbone", "base_channels"):
        if key in model:
            flat[f"model.{key}"] = model[key]
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()}


def write_config(run_config: dict, run_dir: Path) -> None:
    """The resolved run config (plain containers) as ``config.yaml`` in the run directory."""
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(run_config), run_dir / CONFIG_FILE)


def run_result(state, duration_s: float, complexity: dict | None) -> dict:
    """What ``result.json`` holds: best and last values of a finished run (``TrainState``)."""
    return {
        "best_miou": state.best_miou,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "steps": state.step,
        "duration_s": round(duration_s, 2),
        "status": "completed",
        "last": state.history[-1] if state.history else None,
        "complexity": complexity,
    }


def read_result(run_dir: Path) -> dict:
    """``result.json`` of a finished run."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise RuntimeError(f"training finished without writing {path}; see {run_dir}/train.log")
    return json.loads(path.read_text())
