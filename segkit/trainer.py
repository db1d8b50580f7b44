"""The training loop: fit -> train_one_epoch -> validate -> checkpoint. No hook system.

Rank-0-only work (writer, checkpoint files) is gated by ``self.info.is_main``; every
decision that changes control flow goes through ``dist.any_rank`` so ranks never diverge.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from segkit import checkpoint as ckpt_io
from segkit import dist
from segkit.errors import ConfigError
from segkit.metrics import ConfusionMatrix
from segkit.visualize import colorize, confusion_image, denormalize, panel

log = logging.getLogger(__name__)

_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainerConfig:
    """Mirror of ``conf/trainer/default.yaml`` (the launch keys are read by run.py only)."""

    max_epochs: int = 14
    val_every: int = 1
    precision: str = "fp32"
    grad_clip: float | None = None
    freeze_epochs: int = 0
    log_every: int = 10
    num_vis: int = 4
    early_stop_patience: int | None = None
    progress_bar: bool = True
    # fault injection for tests and drills: raise after this many optimiser steps
    fail_at_step: int | None = None
    # debug: use only the first N batches of each epoch / validation (null = all)
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    accelerator: str = "auto"
    devices: Any = 1
    sync_bn: bool = False
    resume: str | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in _DTYPES:
            raise ConfigError(
                f"trainer.precision={self.precision!r}: expected one of {sorted(_DTYPES)}"
            )


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
        cfg: TrainerConfig,
        *,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: torch.utils.data.DataLoader,
        val_loader: torch.utils.data.DataLoader,
        info: dist.DistInfo,
        run_dir: Path,
        run_config: dict,
        writer=None,
    ) -> None:
        self.cfg, self.model, self.loss_fn = cfg, model, loss_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_loader, self.val_loader = train_loader, val_loader
        self.info, self.run_dir, self.run_config, self.writer = info, run_dir, run_config, writer
        ds = val_loader.dataset
        self.num_classes, self.ignore_index = ds.num_classes, ds.ignore_index
        self.class_names, self.palette = list(ds.class_names), [list(c) for c in ds.palette]
        self.amp_dtype = _DTYPES[cfg.precision]
        self.scaler = torch.amp.GradScaler(
            info.device.type, enabled=cfg.precision == "fp16" and info.device.type == "cuda"
        )
        self.cm = ConfusionMatrix(self.num_classes, self.ignore_index, device=info.device)
        self.state = TrainState()

    # ----------------------------------------------------------------- helpers
    @property
    def steps_per_epoch(self) -> int:
        limit = self.cfg.limit_train_batches
        n = len(self.train_loader)
        return n if limit is None else min(n, limit)

    def autocast(self):
        """One code path for fp32/fp16/bf16: autocast is simply disabled for fp32."""
        return torch.autocast(
            self.info.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )

    @property
    def bare_model(self) -> nn.Module:
        return ckpt_io.unwrap(self.model)

    def _set_freeze(self, epoch: int) -> None:
        frozen = epoch < self.cfg.freeze_epochs
        if hasattr(self.bare_model, "freeze_encoder"):
            self.bare_model.freeze_encoder(frozen)

    # ----------------------------------------------------------------- loop
    def fit(self) -> TrainState:
        """Train until ``max_epochs``; returns the final state (best mIoU etc.)."""
        start = self.state.epoch
        for epoch in range(start, self.cfg.max_epochs):
            train_loss = self.train_one_epoch(epoch)
            self.state.epoch = epoch + 1
            metrics = None
            if (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.max_epochs:
                metrics = self.validate(epoch)
            self._end_epoch(epoch, train_loss, metrics)
            if self._should_stop():
                log.info("early stop: no mIoU gain for %d validations", self.state.bad_epochs)
                break
        return self.state

    def _end_epoch(self, epoch: int, train_loss: float, metrics: dict | None) -> None:
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
        if self.info.is_main:
            self.save(ckpt_io.LAST, metrics)
            if improved:
                self.save(ckpt_io.BEST, metrics)
        dist.barrier()

    def _should_stop(self) -> bool:
        patience = self.cfg.early_stop_patience
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
            desc=f"epoch {epoch + 1}/{self.cfg.max_epochs}",
            disable=not (self.info.is_main and self.cfg.progress_bar),
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
            if self.info.is_main and (i % self.cfg.log_every == 0 or i + 1 == self.steps_per_epoch):
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
        with self.autocast():
            loss = self.loss_fn(self.model(images), masks)
        value = loss.detach().float().item()
        skip = dist.any_rank(not math.isfinite(value), dev)
        if not skip:
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.state.step += 1
        if self.writer is not None and not skip:
            self.writer.add_scalar("train/loss", value, self.state.step)
            self.writer.add_scalar("train/lr", lr, self.state.step)
        if self.cfg.fail_at_step is not None and self.state.step >= self.cfg.fail_at_step:
            raise RuntimeError(
                f"trainer.fail_at_step={self.cfg.fail_at_step} reached (fault injection)"
            )
        return None if skip else value

    # ----------------------------------------------------------------- eval
    @torch.inference_mode()
    def evaluate(self, loader=None) -> tuple[dict, list[np.ndarray]]:
        """Confusion matrix + mean loss over ``loader`` (default: val), summed across ranks.

        Returns ``(metrics, first_batch_panels)``; panels are only made on rank 0.
        """
        loader = loader or self.val_loader
        self.model.eval()
        self.cm.reset()
        loss_sum = torch.zeros(2, device=self.info.device, dtype=torch.float64)
        panels: list[np.ndarray] = []
        limit = self.cfg.limit_val_batches
        for i, (images, masks) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            images = images.to(self.info.device, non_blocking=True)
            masks = masks.to(self.info.device, non_blocking=True)
            with self.autocast():
                out = self.model(images)
                loss = self.loss_fn(out, masks)
            logits = out["out"]
            if logits.shape[-2:] != masks.shape[-2:]:
                logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear")
            pred = logits.argmax(1)
            self.cm.update(pred, masks)
            loss_sum += torch.stack(
                [
                    loss.double() * images.shape[0],
                    torch.tensor(float(images.shape[0]), device=loss.device, dtype=torch.float64),
                ]
            )
            if self.info.is_main and len(panels) < self.cfg.num_vis:
                panels += self._panels(images, masks, pred, self.cfg.num_vis - len(panels))
        self.cm.all_reduce()
        dist.all_reduce_sum(loss_sum)
        metrics = self.cm.compute()
        metrics["loss"] = float(loss_sum[0] / loss_sum[1].clamp(min=1))
        metrics["confusion"] = self.cm.mat.cpu().numpy()
        return metrics, panels

    def _panels(self, images, masks, pred, n: int) -> list[np.ndarray]:
        ds = self.val_loader.dataset
        out = []
        for img, m, p in list(zip(images, masks, pred))[:n]:
            rgb = denormalize(img.float().cpu().numpy(), ds.mean, ds.std)
            lab = colorize(m.cpu().numpy(), self.palette, self.ignore_index)
            prd = colorize(p.cpu().numpy(), self.palette, self.ignore_index)
            out.append(panel(rgb, lab, prd))
        return out

    def validate(self, epoch: int) -> dict:
        metrics, panels = self.evaluate()
        log.info(
            "epoch %d val loss %.4f mIoU %.4f pixel acc %.4f",
            epoch + 1,
            metrics["loss"],
            metrics["miou"],
            metrics["pixel_acc"],
        )
        if self.writer is not None:
            self._log_val(metrics, panels, epoch + 1)
        return metrics

    def _log_val(self, metrics: dict, panels: list[np.ndarray], epoch: int) -> None:
        w, step = self.writer, self.state.step
        w.add_scalar("val/loss", metrics["loss"], step)
        w.add_scalar("val/mIoU", metrics["miou"], step)
        w.add_scalar("val/pixel_acc", metrics["pixel_acc"], step)
        w.add_scalar("val/epoch", epoch, step)
        for name, iou in zip(self.class_names, metrics["iou"]):
            if not math.isnan(iou):
                w.add_scalar(f"val_iou/{name}", iou, step)
        if panels:
            w.add_images("val/image|label|pred", np.stack(panels), step, dataformats="NHWC")
        w.add_image("val/confusion", confusion_image(metrics["confusion"]), step, dataformats="HWC")
        w.flush()

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
            "class_names": self.class_names,
            "palette": self.palette,
            "metrics": clean,
            "world_size": self.info.world_size,
        }

    def save(self, name: str, metrics: dict | None) -> Path:
        path = self.run_dir / ckpt_io.CKPT_DIR / name
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
