"""The training loop: fit -> train_one_epoch -> train_step; validate; state. No hook system.

The loop keys of ``conf/trainer/default.yaml`` arrive as keyword arguments (the yaml holds
their defaults). Pictures and event files go through ``tracker``, checkpoints into
``ckpt_dir``: both are None off rank 0. Every decision that changes control flow goes through
``dist.any_rank`` so ranks never diverge.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from segkit import checkpoint as ckpt_io
from segkit import dist
from segkit.data.base import LabelSpace
from segkit.metrics import ConfusionMatrix, evaluate
from segkit.tracking import SampleCollector, Tracker

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser iterations completed
    best_miou: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Owns one training run. ``model`` may be DDP-wrapped; the loaders carry their samplers."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: torch.utils.data.DataLoader,
        val_loader: torch.utils.data.DataLoader,
        *,
        labels: LabelSpace,
        info: dist.DistInfo,
        ckpt_dir: Path | None,
        run_config: dict,
        tracker: Tracker | None,
        max_epochs: int,
        val_every: int,
        precision: str,
        grad_clip: float | None,
        freeze_epochs: int,
        log_every: int,
        num_vis: int,
        early_stop_patience: int | None,
        progress_bar: bool,
        limit_train_batches: int | None,
        limit_val_batches: int | None,
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_loader, self.val_loader = train_loader, val_loader
        self.labels, self.info, self.ckpt_dir = labels, info, ckpt_dir
        self.run_config, self.tracker = run_config, tracker
        self.max_epochs, self.val_every, self.log_every = max_epochs, val_every, log_every
        self.grad_clip, self.freeze_epochs = grad_clip, freeze_epochs
        self.num_vis, self.early_stop_patience = num_vis, early_stop_patience
        self.progress_bar = progress_bar
        self.limit_train_batches, self.limit_val_batches = limit_train_batches, limit_val_batches
        self.amp_dtype = dist.amp_dtype(precision)
        self.scaler = torch.amp.GradScaler(
            info.device.type, enabled=precision == "fp16" and info.device.type == "cuda"
        )
        self.cm = ConfusionMatrix(labels.num_classes, labels.ignore_index, device=info.device)
        self.state = TrainState()
        self._last_metrics: dict | None = None  # of the last validation, for metrics.csv

    # ----------------------------------------------------------------- helpers
    @property
    def steps_per_epoch(self) -> int:
        limit = self.limit_train_batches
        n = len(self.train_loader)
        return n if limit is None else min(n, limit)

    @property
    def bare_model(self) -> nn.Module:
        return ckpt_io.unwrap(self.model)

    def _set_freeze(self, epoch: int) -> None:
        frozen = epoch < self.freeze_epochs
        if hasattr(self.bare_model, "freeze_encoder"):
            self.bare_model.freeze_encoder(frozen)

    # ----------------------------------------------------------------- loop
    def fit(self) -> TrainState:
        """Train until ``max_epochs``; returns the final state (best mIoU etc.)."""
        start = self.state.epoch
        for epoch in range(start, self.max_epochs):
            t0, lr = time.perf_counter(), self.optimizer.param_groups[0]["lr"]
            train_loss = self.train_one_epoch(epoch)
            self.state.epoch = epoch + 1
            metrics = None
            if (epoch + 1) % self.val_every == 0 or epoch + 1 == self.max_epochs:
                metrics = self.validate(epoch)
            self._end_epoch(epoch, train_loss, metrics)
            if self.tracker is not None:
                self.tracker.log_epoch(self._epoch_row(lr, time.perf_counter() - t0))
            if self._should_stop():
                log.info("early stop: no mIoU gain for %d validations", self.state.bad_epochs)
                break
        return self.state

    def _end_epoch(self, epoch: int, train_loss: float, metrics: dict | None) -> None:
        self._last_metrics = metrics
        improved = metrics is not None and metrics["miou"] > self.state.best_miou
        if improved:
            self.state.best_miou, self.state.best_epoch = metrics["miou"], epoch + 1
            self.state.bad_epochs = 0
        elif metrics is not None:
            self.state.bad_epochs += 1
        entry = {"epoch": epoch + 1, "train_loss": train_loss}
        if metrics is not None:
            entry.update(
                val_loss=metrics["loss"], miou=metrics["miou"], pixel_acc=metrics["pixel_acc"]
            )
        self.state.history.append(entry)
        if self.ckpt_dir is not None:
            self.save(ckpt_io.LAST, metrics)
            if improved:
                self.save(ckpt_io.BEST, metrics)
        dist.barrier()

    def _epoch_row(self, lr: float, seconds: float) -> dict[str, Any]:
        """The epoch just finished as one ``metrics.csv`` row (lr: at the epoch's start)."""
        entry, metrics = self.state.history[-1], self._last_metrics
        return {
            "epoch": entry["epoch"],
            "step": self.state.step,
            "lr": lr,
            "train_loss": entry["train_loss"],
            "val_loss": entry.get("val_loss"),
            "miou": entry.get("miou"),
            "pixel_acc": entry.get("pixel_acc"),
            "iou": metrics["iou"] if metrics is not None else None,
            "epoch_time_s": round(seconds, 3),
        }

    def _should_stop(self) -> bool:
        patience = self.early_stop_patience
        stop = patience is not None and self.state.bad_epochs >= patience
        return dist.any_rank(stop, self.info.device)

    def train_one_epoch(self, epoch: int) -> float:
        """One pass over the train loader; returns the mean loss over finite steps."""
        self.model.train()
        self._set_freeze(epoch)
        for obj in (self.train_loader.sampler, self.train_loader.dataset):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        total, count, skipped, t0 = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{self.max_epochs}",
            disable=not self.progress_bar,
            leave=False,
        )
        for i, (images, masks) in enumerate(bar):
            if i >= self.steps_per_epoch:
                break
            loss = self.train_step(images, masks)
            if loss is None:
                skipped += 1
            else:
                total, count = total + loss, count + 1
            if i % self.log_every == 0 or i + 1 == self.steps_per_epoch:
                lr = self.optimizer.param_groups[0]["lr"]
                rate = (i + 1) / (time.perf_counter() - t0)
                bar.set_postfix(
                    loss=f"{loss if loss is not None else float('nan'):.4f}",
                    lr=f"{lr:.2e}",
                    its=f"{rate:.1f}",
                )
        if skipped:
            log.warning("epoch %d: skipped %d non-finite steps", epoch + 1, skipped)
        mean = total / max(count, 1)
        log.info("epoch %d train loss %.4f (%.1fs)", epoch + 1, mean, time.perf_counter() - t0)
        return mean

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> float | None:
        """Forward, backward, step. Returns the loss, or None when the step was skipped
        because the loss was not finite on some rank (agreed across ranks)."""
        dev = self.info.device
        images = images.to(dev, non_blocking=True)
        masks = masks.to(dev, non_blocking=True)
        with dist.autocast(dev, self.amp_dtype):
            loss = self.loss_fn(self.model(images), masks)
        value = loss.detach().float().item()
        skip = dist.any_rank(not math.isfinite(value), dev)
        if not skip:
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.state.step += 1
        if self.tracker is not None and not skip:
            self.tracker.log_train(self.state.step, value, lr)
        return None if skip else value

    # ----------------------------------------------------------------- eval
    def validate(self, epoch: int) -> dict:
        """Score the val loader (summed across ranks), log it, and hand it to the tracker."""
        samples = SampleCollector(self.num_vis)
        metrics = evaluate(
            self.model,
            self.val_loader,
            self.cm,
            device=self.info.device,
            amp_dtype=self.amp_dtype,
            loss_fn=self.loss_fn,
            limit_batches=self.limit_val_batches,
            on_batch=samples if self.tracker is not None else None,
        )
        log.info(
            "epoch %d val loss %.4f mIoU %.4f pixel acc %.4f",
            epoch + 1,
            metrics["loss"],
            metrics["miou"],
            metrics["pixel_acc"],
        )
        if self.tracker is not None:
            self.tracker.log_val(self.state.step, epoch + 1, metrics, samples)
        return metrics

    # ----------------------------------------------------------------- state
    def state_dict(self, metrics: dict | None) -> dict[str, Any]:
        clean = None if metrics is None else {k: v for k, v in metrics.items() if k != "confusion"}
        s = self.state
        return {
            "model": self.bare_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": s.epoch,
            "step": s.step,
            "best_miou": s.best_miou,
            "best_epoch": s.best_epoch,
            "bad_epochs": s.bad_epochs,
            "history": s.history,
            "rng": ckpt_io.rng_state(),
            "config": self.run_config,
            "labels": self.labels.to_dict(),
            "class_names": list(self.labels.class_names),
            "palette": [list(c) for c in self.labels.palette],
            "metrics": clean,
            "world_size": self.info.world_size,
        }

    def save(self, name: str, metrics: dict | None) -> Path:
        path = self.ckpt_dir / name
        ckpt_io.save_atomic(self.state_dict(metrics), path)
        return path

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore everything needed to continue exactly where ``ckpt`` was written."""
        self.bare_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(
            epoch=ckpt["epoch"],
            step=ckpt["step"],
            best_miou=ckpt["best_miou"],
            best_epoch=ckpt["best_epoch"],
            bad_epochs=ckpt.get("bad_epochs", 0),
            history=list(ckpt.get("history", [])),
        )
        with contextlib.suppress(KeyError, ValueError, RuntimeError):
            ckpt_io.set_rng_state(ckpt["rng"])
