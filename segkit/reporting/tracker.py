"""What a run leaves for people to look at: ``metrics.csv``, pictures in ``plots/``,
``result.json``, and through its loggers (TensorBoard, MLflow, W&B: ``conf/logger``) every
scalar, picture, table, parameter and artifact.

Only rank 0 has a :class:`Tracker`; every other rank gets a :class:`NullTracker`, so the
training loop never asks which rank it is on (and the other ranks never open a connection to a
tracking server). The Trainer calls :meth:`Tracker.log_scalars` every ``log_every`` steps,
:meth:`Tracker.log_val` per validation, :meth:`Tracker.log_epoch` per epoch and
:meth:`Tracker.finish` once. The Tracker hands each record to every :class:`ExperimentLogger`;
a logger never raises for a server that is down (it keeps what it could not send), so the
run's files are written whatever the loggers do.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.base import LabelSpace
from segkit.evaluation.metrics import format_table
from segkit.reporting.experiment_logger import ExperimentLogger, RunContext
from segkit.reporting.figures import (  # SampleCollector: re-exported for the Trainer
    CALIBRATED_TAG,
    HPARAM_METRICS,
    SampleCollector,
    confusion_figure,
    curves_figure,
    denormalize,
    sample_grid,
    save_figure,
    write_eval_report,
    write_metrics_text,
)
from segkit.reporting.run_files import (
    METRICS_CSV,
    PLOTS_DIR,
    RESULT_FILE,
    append_row,
    keep_rows,
    log_run_files,
    read_table,
    write_atomic,
)
from segkit.reporting.tensorboard_logger import TensorBoardLogger

log = logging.getLogger("segkit")


class NullTracker:
    """The other ranks' (and file-less Trainers') tracker: takes everything, writes nothing."""

    wants_samples = False  # the loop keeps no validation pictures for it

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_epoch(self, row: dict[str, Any]) -> None:
        pass

    def log_val(self, step: int, epoch: int, metrics: dict, samples: SampleCollector) -> None:
        pass

    def close(self) -> None:
        pass


class Tracker:
    """The run's files plus its loggers; rank 0 only.

    ``start_step``: the optimiser step the run starts from; a resumed run drops the
    ``metrics.csv`` rows a killed run wrote after its last checkpoint (and TensorBoard purges
    its events), so the curves continue without overlap. ``loggers``: the backends of
    ``conf/logger``; None -> TensorBoard in ``run_dir/tb``. ``figures``: False draws no
    pictures (no sample grid or confusion matrix per validation, no ``plots/*.png``); the
    scalars, tables, ``metrics.csv`` and ``plots/metrics.txt`` stay."""

    def __init__(
        self,
        run_dir: Path,
        labels: LabelSpace,
        start_step: int = 0,
        loggers: Sequence[ExperimentLogger] | None = None,
        figures: bool = True,
    ) -> None:
        self.run_dir, self.labels = Path(run_dir), labels
        self.figures = self.wants_samples = figures
        if loggers is None:
            loggers = [TensorBoardLogger(RunContext(self.run_dir, start_step))]
        self.loggers = list(loggers)
        rows = keep_rows(self.run_dir / METRICS_CSV, start_step) if start_step > 0 else []
        scores = [float(r["miou"]) for r in rows if r.get("miou") not in (None, "")]
        self.best_miou = max(scores, default=-math.inf)  # for val/best_mIoU after a resume
        self.last_val: tuple[int, dict] | None = None  # (epoch, metrics) of the last validation
        self._tags: set[str] = set()
        self._closed = False

    def run_ids(self) -> dict[str, str]:
        """``{logger name: run id}``: what the checkpoint keeps so a resume continues them."""
        return {lg.name: lg.run_id for lg in self.loggers if lg.run_id is not None}

    def log_params(self, params: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_params(params)

    def close(self) -> None:
        """An interrupted or failed run: flush and end every logger's run (once), saying what
        was not sent."""
        self._close(finished=False)

    def _close(self, finished: bool) -> None:
        if self._closed:  # an interrupt closes, then the failure path again
            return
        self._closed = True
        for lg in self.loggers:
            for line in lg.close(finished):
                log.warning("%s: %s", lg.name, line)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars ``{tag: value}`` at optimiser step ``step``, to every logger."""
        for lg in self.loggers:
            lg.log_scalars(step, scalars)
        self._tags.update(scalars)

    def _log_figure(self, tag: str, figure: Any, step: int) -> None:
        image = figure_image(figure)  # drawn once for every logger
        for lg in self.loggers:
            lg.log_image(tag, image, step)

    def _flush(self, step: int) -> None:
        for lg in self.loggers:
            lg.flush(step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch to ``metrics.csv`` (header on first write). ``row``: epoch, step,
        lr, train_loss, val_loss, miou, pixel_acc (None when not validated), iou (per-class
        list or None), epoch_time_s; per-class IoU becomes one ``iou/<class>`` column each.
        ``train_loss`` also goes to the loggers as ``train/loss_epoch`` at ``step``."""
        iou = row.get("iou") or [None] * self.labels.num_classes
        flat = {k: v for k, v in row.items() if k != "iou"}
        flat.update({f"iou/{n}": v for n, v in zip(self.labels.class_names, iou)})
        append_row(self.run_dir / METRICS_CSV, flat)
        if row.get("train_loss") is not None:
            self.log_scalars(row["step"], {"train/loss_epoch": row["train_loss"]})
        self._flush(row["step"])

    def log_val(self, step: int, epoch: int, metrics: dict, samples: SampleCollector) -> None:
        """Scalars (val/best_mIoU: the best so far), per-class IoU (scalars and a table), the
        sample grid and the labelled confusion matrix; one console line with mIoU and the three
        worst classes."""
        lab = self.labels
        if not math.isnan(metrics["miou"]):
            self.best_miou = max(self.best_miou, metrics["miou"])
        scalars = {
            "val/loss": metrics["loss"],
            "val/mIoU": metrics["miou"],
            "val/pixel_acc": metrics["pixel_acc"],
            "val/epoch": epoch,
        }
        if math.isfinite(self.best_miou):
            scalars["val/best_mIoU"] = self.best_miou
        ious = list(zip(lab.class_names, metrics["iou"]))
        scalars.update({f"val_iou/{n}": v for n, v in ious if not math.isnan(v)})
        self.log_scalars(step, scalars)
        rows = [[n, None if math.isnan(v) else float(v)] for n, v in ious]
        for lg in self.loggers:
            lg.log_table("val/per_class_iou", ["class", "iou"], rows, step)
        if self.figures:
            self._log_val_figures(step, epoch, metrics, samples)
        self._flush(step)
        self.last_val = (epoch, metrics)
        log.info("epoch %d val mIoU %.4f; %s", epoch, metrics["miou"], worst_classes(metrics, lab))

    def _log_val_figures(
        self, step: int, epoch: int, metrics: dict, samples: SampleCollector
    ) -> None:
        lab = self.labels
        if samples.samples:
            triples = [(denormalize(i, lab.mean, lab.std), m, p) for i, m, p in samples.samples]
            grid = sample_grid(triples, lab.class_names, lab.palette, lab.ignore_index)
            self._log_figure("val/image|label|pred", grid, step)
        title = f"confusion matrix (row-normalised), epoch {epoch}"
        conf = confusion_figure(metrics["confusion"], lab.class_names, title)
        self._log_figure("val/confusion", conf, step)

    def finish(
        self,
        hparams: dict[str, Any],
        result: dict,
        *,
        varied: Iterable[str] = (),
        artifacts: Sequence[Path] = (),
    ) -> list[Path]:
        """Log hparams (+ params/FLOPs) and ``artifacts`` to the loggers and end their runs
        (saying what was not sent), write ``result.json`` and the report (:meth:`write_report`);
        log where every file is. ``varied``: the hparams a sweep varies (:func:`override_keys`),
        listed first in TensorBoard's HParams tab. Returns the report's files."""
        if result.get("calibrated_val_miou") is not None:  # at the last step, next to val/mIoU
            self.log_scalars(result["steps"], {CALIBRATED_TAG: result["calibrated_val_miou"]})
        hp = dict(hparams)
        if result.get("complexity"):
            hp["params_M"] = result["complexity"]["params_total"] / 1e6
            hp["gflops"] = result["complexity"]["flops"] / 1e9
        # the calibrated score only where there is one (an empty column otherwise)
        metrics = [t for t in HPARAM_METRICS if t != CALIBRATED_TAG or t in self._tags]
        for lg in self.loggers:
            lg.log_hparams(hp, list(varied), metrics)
            for path in artifacts:
                lg.log_artifact(Path(path))
        self._close(finished=True)
        write_atomic(self.run_dir / RESULT_FILE, json.dumps(result, indent=2))
        files = self.write_report()
        log_run_files(self.run_dir)
        return files

    def write_report(self) -> list[Path]:
        """``plots/``: curves.png from ``metrics.csv``; of the last validation
        confusion_matrix.png, per_class_iou.png and metrics.txt (per-class table, also
        logged). Returns the files written."""
        plots = self.run_dir / PLOTS_DIR
        _, rows = read_table(self.run_dir / METRICS_CSV)
        files = []
        if rows and self.figures:
            files.append(save_figure(curves_figure(rows), plots / "curves.png"))
        if self.last_val is not None:
            epoch, metrics = self.last_val
            lab = self.labels
            if self.figures:
                files += write_eval_report(
                    plots, metrics, lab.class_names, lab.palette, epoch=epoch
                )
            else:
                files.append(write_metrics_text(plots, metrics, lab.class_names))
            table = format_table(metrics, lab.class_names)
            log.info("per-class metrics of the last validation (epoch %d):\n%s", epoch, table)
        return files


def figure_image(figure: Any) -> np.ndarray:
    """A matplotlib figure on the Agg canvas as an ``(H, W, 3)`` uint8 RGB array."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def worst_classes(metrics: dict, labels: LabelSpace, k: int = 3) -> str:
    """``worst IoU: name 0.123, ...`` for the ``k`` lowest per-class IoUs (NaN skipped)."""
    scored = [(v, n) for n, v in zip(labels.class_names, metrics["iou"]) if not math.isnan(v)]
    return "worst IoU: " + ", ".join(f"{n} {v:.3f}" for v, n in sorted(scored)[:k])


# --------------------------------------------------------------------------- metrics.csv
