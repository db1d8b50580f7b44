"""The training loop: fit -> train_one_epoch -> train_step; validate; state. No hook system.

The loop keys of ``conf/trainer/default.yaml`` arrive as keyword arguments (the yaml holds
their defaults). Pictures and event files go through ``tracker``, checkpoints through
``checkpoints``: off rank 0 both are do-nothing stand-ins, so the loop has no rank checks.

The host does not wait for the device inside an epoch except every ``log_every`` steps.
Batches arrive as uint8 and are normalised on the device; each step's loss, non-finite flag
and gradient norm are accumulated there (:class:`StepStats`) and read at the logging points,
where the scalars go to TensorBoard and divergence is checked. Every decision that changes
control flow is taken on values all ranks share, so ranks never diverge.

An optimiser step takes ``accumulate_grad_batches`` batches (`train_step`); every count of the
loop (steps, ``log_every``, ``max_steps``, ``val_every_steps``, the schedule) is in optimiser
steps, positions inside an epoch (checkpoints, the sampler's skip) in batches.

Non-finite steps: with fp16 the GradScaler skips them (an overflow while it finds its scale is
normal). With fp32/bf16 a non-finite step has its gradients zeroed on the device before the
optimiser step, so no NaN/Inf reaches the weights or the optimiser state without a host sync
(the optimiser still ticks: momentum and weight decay act, the step counter advances).
``max_nonfinite_steps`` consecutive ones stop the run with a :class:`DivergedError`; weights
that are not finite are never saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from segkit import dist, precision
from segkit.data.base import LabelSpace
from segkit.engine import signals
from segkit.engine import time_budget as budget
from segkit.engine.ema import ModelEMA
from segkit.engine.step_stats import StepStats, batch_files, divergence_error, finite_weights
from segkit.errors import DivergedError, Interrupted
from segkit.evaluation.metrics import ConfusionMatrix, evaluate
from segkit.io import checkpoint as ckpt_io
from segkit.reporting.tracker import NullTracker, SampleCollector, Tracker

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser iterations completed
    best_miou: float = -1.0
    best_epoch: int = -1
    best_step: int = -1  # the optimiser step of the best validation
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    epoch_step: int = 0  # steps done in the current epoch (a mid-epoch checkpoint)
    epoch_stats: dict = field(default_factory=dict)  # StepStats.epoch of those steps
    window_stats: dict = field(default_factory=dict)  # StepStats.open_window at the save
    epoch_lr: float | None = None  # the lr at the start of the current epoch (metrics.csv)
    # trainer.max_time_min: seconds of completed epochs (validation included), of training
    # alone, of the last validation; the epochs that fit (the plan)
    elapsed_s: float = 0.0
    train_s: float = 0.0
    val_s: float | None = None  # None: no validation measured yet
    planned_epochs: int | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        names = [f.name for f in dataclasses.fields(cls)]  # older files lack some
        return cls(**{k: ckpt[k] for k in names if ckpt.get(k) is not None})

    def finished(self, max_epochs: int, budgeted: bool, max_steps: int | None = None) -> bool:
        """Every epoch of the run is done: ``max_epochs``, or under a time budget
        (``budgeted``) the epochs it planned; with ``max_steps``, that many steps."""
        if max_steps is not None and self.step >= max_steps:
            return True
        last = self.planned_epochs if budgeted and self.planned_epochs else max_epochs
        return self.epoch_step == 0 and self.epoch >= last


@dataclass(frozen=True)
class LoopOptions:
    """The loop keys of ``conf/trainer/default.yaml`` (its comments say what each does); the
    types ``segkit.config.checks`` checks a config against."""

    max_epochs: int
    val_every: int
    precision: Literal["auto", "fp32", "fp16", "bf16"]
    grad_clip: float | None
    freeze_epochs: int
    log_every: int
    num_vis: int
    early_stop_patience: int | None
    progress_bar: bool
    limit_train_batches: int | None
    limit_val_batches: int | None
    max_nonfinite_steps: int | None
    channels_last: bool | Literal["auto"]
    cudnn_benchmark: bool
    tf32: bool
    checkpoint_every_steps: int | None
    max_time_min: float | None
    ema_decay: float | None
    accumulate_grad_batches: int = 1
    max_steps: int | None = None
    val_every_steps: int | None = None
    activation_checkpointing: bool = False  # applied by the builder, before DDP
    figures: bool = True  # given by the builder to the Tracker


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
        checkpoints: ckpt_io.CheckpointWriter | ckpt_io.NullCheckpointWriter,
        run_config: dict,
        tracker: Tracker | NullTracker,
        options: LoopOptions,
        val_predictor: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_loader, self.val_loader = train_loader, val_loader
        self.labels, self.info, self.checkpoints = labels, info, checkpoints
        self.run_config, self.tracker, self.opt = run_config, tracker, options
        # how validation runs the model (e.g. a sliding window over large images); None: whole
        self.val_predictor = val_predictor
        # the epochs to train: max_epochs, or those that hold max_steps (then the last one may
        # end early); under max_time_min the epochs that fit
        self.max_epochs = options.max_epochs
        self.budget_s = None if options.max_time_min is None else options.max_time_min * 60.0
        self.ema = ModelEMA(self.bare_model, options.ema_decay) if options.ema_decay else None
        self.stop: signals.StopRequest | None = None  # set while signals should stop the loop
        precision.configure_backends(
            info.device, cudnn_benchmark=options.cudnn_benchmark, tf32=options.tf32
        )
        self.precision = precision.resolve_precision(options.precision, info.device)
        if info.is_main:
            if options.precision == "auto":
                log.info("trainer.precision=auto -> %s on %s", self.precision, info.device.type)
            precision.warn_emulated_bf16(self.precision, info.device, "trainer.precision")
        self.amp_dtype = precision.amp_dtype(self.precision)
        fp16_cuda = self.precision == "fp16" and info.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=fp16_cuda)
        memory_format = precision.use_channels_last(options.channels_last, info.device)
        self.normalize = labels.normalizer(channels_last=memory_format)
        self.cm = ConfusionMatrix(labels.num_classes, labels.ignore_index, device=info.device)
        self.stats = StepStats(info.device, info.world_size)
        self.step_lr = self.lr  # the lr of the last step (the scheduler has moved on since)
        self._params = list(model.parameters())
        self.max_epochs = self._epoch_cap
        self.state = TrainState()
        self._last_metrics: dict | None = None  # of the last validation, for metrics.csv

    # ----------------------------------------------------------------- helpers
    @property
    def batches_per_epoch(self) -> int:
        limit = self.opt.limit_train_batches
        n = len(self.train_loader)
        return n if limit is None else min(n, limit)

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch: one per ``accumulate_grad_batches`` batches, the last
        group of an epoch possibly shorter."""
        return -(-self.batches_per_epoch // self.opt.accumulate_grad_batches)

    @property
    def bare_model(self) -> nn.Module:
        return ckpt_io.unwrap(self.model)

    @property
    def eval_model(self) -> nn.Module:
        """What validation scores and checkpoints deploy: the EMA copy when there is one."""
        return self.model if self.ema is None else self.ema.module

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _set_freeze(self, epoch: int) -> None:
        frozen = epoch < self.opt.freeze_epochs
        if hasattr(self.bare_model, "freeze_encoder"):
            self.bare_model.freeze_encoder(frozen)

    # ----------------------------------------------------------------- loop
    def fit(self) -> TrainState:
        """Train until ``max_epochs`` or ``max_steps`` (under ``max_time_min``: the epochs that
        fit, planned again after every epoch); returns the final state (best mIoU etc.)."""
        if self.budget_s is not None and self.state.planned_epochs is not None:
            self.max_epochs = self.state.planned_epochs
        epoch = self.state.epoch
        while epoch < self.max_epochs and not self._steps_done():
            if not self.state.epoch_step:  # else: resumed inside the epoch, which began earlier
                self.state.epoch_lr = self.lr
            t0, lr = time.perf_counter(), self.state.epoch_lr
            train_loss = self.train_one_epoch(epoch)
            self.state.epoch = epoch + 1
            metrics = self._validate_and_plan(epoch, t0, time.perf_counter() - t0)
            seconds = time.perf_counter() - t0
            self.state.elapsed_s += seconds
            self._end_epoch(epoch, train_loss, metrics)
            self.tracker.log_epoch(self._epoch_row(lr, seconds))
            if self._should_stop():
                log.info("early stop: no mIoU gain for %d validations", self.state.bad_epochs)
                break
            epoch += 1
        return self.state

    def _validation_due(self, epoch: int) -> bool:
        """At the end of epoch ``epoch``: every ``val_every`` epochs, or under
        ``val_every_steps`` when this step is one of those; always at the end of training."""
        if epoch + 1 == self.max_epochs or self._steps_done():
            return True
        if self.opt.val_every_steps:
            return self.state.step % self.opt.val_every_steps == 0
        return (epoch + 1) % self.opt.val_every == 0

    @property
    def _epoch_cap(self) -> int:
        """The most epochs the run may train: ``max_epochs``, or those ``max_steps`` needs."""
        if self.opt.max_steps is None:
            return self.opt.max_epochs
        return -(-self.opt.max_steps // self.steps_per_epoch)

    def _last_step(self, epochs: int) -> int:
        """The optimiser step at which ``epochs`` epochs end (``max_steps`` at most)."""
        total = epochs * self.steps_per_epoch
        return total if self.opt.max_steps is None else min(total, self.opt.max_steps)

    def _steps_done(self) -> bool:
        return self.opt.max_steps is not None and self.state.step >= self.opt.max_steps

    def _timed_validate(self, epoch: int) -> dict:
        t_val = time.perf_counter()
        metrics = self.validate(epoch)
        self.state.val_s = time.perf_counter() - t_val
        return metrics

    def _validate_and_plan(self, epoch: int, t0: float, train_s: float) -> dict | None:
        """Validate epoch ``epoch`` when due; under ``max_time_min`` plan the epochs that fit
        first, so that the plan decides whether this epoch is the last (then validated). The
        first plan needs a validation's duration: that epoch is validated to measure it."""
        if self.budget_s is None:
            return self._timed_validate(epoch) if self._validation_due(epoch) else None
        self.state.train_s += train_s
        if self.state.val_s is None:
            metrics = self._timed_validate(epoch)
            self._plan_epochs(time.perf_counter() - t0, validated=True)
            return metrics
        self._plan_epochs(time.perf_counter() - t0, validated=False)
        return self._timed_validate(epoch) if self._validation_due(epoch) else None

    def _plan_epochs(self, spent_s: float, validated: bool) -> None:
        """Under ``max_time_min``, after each training epoch (``spent_s`` into it; its
        validation included when ``validated``): the epochs that fit, from the mean training
        epoch so far and the last validation's duration, every validation still to come
        reserved (rank 0's timing); the learning-rate schedule set to end with them."""
        s = self.state
        epoch_s = s.train_s / s.epoch
        planned = budget.plan_epochs(
            self.budget_s,
            s.elapsed_s + spent_s,
            epoch_s,
            s.val_s,
            done=s.epoch,
            cap=self._epoch_cap,
            val_every=self.opt.val_every,
            validated=validated,
        )
        planned, epoch_s = dist.broadcast_object((planned, epoch_s))
        if planned == s.planned_epochs:
            return
        s.planned_epochs = self.max_epochs = planned
        total = self._last_step(planned)
        how = budget.retarget_schedule(self.scheduler, total)
        if how is None:
            how = f"{type(self.scheduler).__name__} cannot be retargeted: it keeps its length"
        log.info(
            "trainer.max_time_min=%g: %.0f s spent, an epoch trains in %.1f s, a validation "
            "takes %.1f s; planning %d epochs; %s",
            self.budget_s / 60,
            s.elapsed_s + spent_s,
            epoch_s,
            s.val_s,
            planned,
            how,
        )

    def _end_epoch(self, epoch: int, train_loss: float, metrics: dict | None) -> None:
        improved = self._record(epoch, train_loss, metrics)
        self._check_finite_weights(epoch)
        self.save(ckpt_io.LAST, metrics)
        if improved:
            self.save(ckpt_io.BEST, metrics)
        self.checkpoints.remove(ckpt_io.INTERRUPT, ckpt_io.PERIODIC)  # superseded by last
        dist.barrier()

    def _record(self, epoch: int, train_loss: float, metrics: dict | None) -> bool:
        """A history entry (the train loss, the validation if any) at this step; the best
        score and the validations without gain. True when ``metrics`` is a new best."""
        s = self.state
        self._last_metrics = metrics
        improved = metrics is not None and metrics["miou"] > s.best_miou
        if improved:
            s.best_miou, s.best_epoch, s.best_step = metrics["miou"], epoch + 1, s.step
            s.bad_epochs = 0
        elif metrics is not None:
            s.bad_epochs += 1
        entry = {"epoch": epoch + 1, "train_loss": train_loss}
        if self.opt.val_every_steps:
            entry["step"] = s.step
        if metrics is not None:
            entry.update(
                val_loss=metrics["loss"], miou=metrics["miou"], pixel_acc=metrics["pixel_acc"]
            )
        s.history.append(entry)
        return improved

    def _validate_mid_epoch(self, epoch: int, done: int) -> None:
        """``val_every_steps``: a validation inside epoch ``epoch`` after ``done`` batches: a
        history entry and a metrics.csv row (train loss: the epoch's mean so far; lr: of the
        last step), ``best.pt`` when it is a new best (holding the position, like a
        periodic checkpoint); then training goes on."""
        e, w = self.stats.epoch, self.stats.open_window()
        train_loss = (e["loss_sum"] + w["loss_sum"]) / max(e["finite"] + w["finite"], 1)
        t0 = time.perf_counter()
        metrics = self._timed_validate(epoch)
        self.model.train()
        self._set_freeze(epoch)
        if self._record(epoch, train_loss, metrics):
            self._save_position(epoch, done, ckpt_io.BEST, metrics)
        self.tracker.log_epoch(self._epoch_row(self.step_lr, time.perf_counter() - t0))
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
        patience = self.opt.early_stop_patience
        stop = patience is not None and self.state.bad_epochs >= patience
        return dist.any_rank(stop, self.info.device)

    def train_one_epoch(self, epoch: int) -> float:
        """One pass over the train loader; returns the mean loss over finite steps."""
        self.model.train()
        self._set_freeze(epoch)
        for obj in (self.train_loader.sampler, self.train_loader.dataset):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        total, k = self.batches_per_epoch, self.opt.accumulate_grad_batches
        bar = tqdm(
            total=total,
            desc=f"epoch {epoch + 1}/{self.max_epochs}",
            disable=not self.opt.progress_bar,
            leave=False,
        )
        done = self._start_epoch_at()
        batches = iter(self.train_loader)
        bar.update(done)
        while done < total and not self._steps_done():
            t_wait = time.perf_counter()
            group = [next(batches) for _ in range(min(k, total - done))]
            self.stats.waited(time.perf_counter() - t_wait, sum(len(x) for x, _ in group))
            self.train_step(group)
            done += len(group)
            bar.update(len(group))
            ends = done == total or self._steps_done()
            at_log = self.state.step % self.opt.log_every == 0 or ends
            if at_log:
                self._log_window(bar, position=(done - 1) // k)
            every = self.opt.val_every_steps
            if every and self.state.step % every == 0 and not ends:
                self._validate_mid_epoch(epoch, done)
            self._mid_epoch_checkpoints(epoch, done, at_log)
        bar.close()
        mean, skipped, summary = self.stats.epoch_summary()
        if skipped:
            log.warning("epoch %d: %d non-finite steps were skipped", epoch + 1, skipped)
        log.info("epoch %d train loss %.4f (%s)", epoch + 1, mean, summary)
        return mean

    def _start_epoch_at(self) -> int:
        """Batches of this epoch already done (resumed from a mid-epoch checkpoint): the
        sampler skips them and the statistics continue from the saved ones (used once)."""
        s = self.state
        start, s.epoch_step = s.epoch_step, 0
        self.stats.start_epoch()
        self.stats.restore(s.epoch_stats, s.window_stats)
        s.epoch_stats, s.window_stats = {}, {}
        sampler = self.train_loader.sampler
        if hasattr(sampler, "skip"):
            sampler.skip = start * (self.train_loader.batch_size or 1)
        return start

    def _mid_epoch_checkpoints(self, epoch: int, done: int, at_log: bool) -> None:
        """Every ``checkpoint_every_steps`` steps a ``periodic`` checkpoint; on SIGINT/SIGTERM
        (agreed across ranks, at logging points under DDP) an ``interrupt`` checkpoint, then
        :class:`Interrupted`. Both record the position inside the epoch."""
        every = self.opt.checkpoint_every_steps
        if every and self.state.step % every == 0 and done < self.batches_per_epoch:
            self._save_position(epoch, done, ckpt_io.PERIODIC)
        if self.stop is None or (self.info.distributed and not at_log):
            return
        name = self.stop.requested(self.info)
        if name is None:
            return
        path = self._save_position(epoch, done, ckpt_io.INTERRUPT)
        self.tracker.close()
        raise Interrupted(
            f"interrupted by {name} at step {self.state.step} (epoch {epoch + 1}, batch {done}); "
            f"saved {path or 'the interrupt checkpoint'}; continue with resume=auto",
            name,
        )

    def _save_position(
        self, epoch: int, done: int, name: str, metrics: dict | None = None
    ) -> Path | None:
        """A checkpoint inside epoch ``epoch`` after ``done`` batches (rank 0 writes it), with
        the epoch's statistics and the open log window, so the resumed run logs the same."""
        self._check_finite_weights(epoch)
        s = self.state
        s.epoch_step, s.epoch_stats = done, dict(self.stats.epoch)
        s.window_stats = self.stats.open_window()
        try:
            return self.save(name, metrics)
        finally:
            s.epoch_step, s.epoch_stats, s.window_stats = 0, {}, {}

    def train_step(self, group: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One optimiser step over ``group``: the ``(images, masks)`` batches accumulated
        into it (``trainer.accumulate_grad_batches``; one without accumulation). Each batch's
        loss counts ``1 / len(group)`` (every batch weighs the same, as every rank does under
        DDP), DDP all-reduces the gradients after the last batch only; then clipping, the
        guarded optimiser step, the schedule and the EMA. Nothing here waits for the device;
        the loss (mean over the group), the gradient norm and the non-finite flag go to
        ``self.stats``."""
        losses = []
        for j, (images, masks) in enumerate(group):
            with self._gradient_sync(j == len(group) - 1):
                losses.append(self._forward_backward(images, masks, len(group)))
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        grads = [p.grad for p in self._params if p.grad is not None]
        self.scaler.unscale_(self.optimizer)  # no-op unless fp16
        grad_norm = nn.utils.get_total_norm(grads)
        if self.opt.grad_clip:
            nn.utils.clip_grads_with_norm_(self._params, self.opt.grad_clip, grad_norm)
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if self.info.distributed:  # gradients agree after DDP's all-reduce; losses may not
            bad = dist.all_reduce_sum(bad.int()) > 0
        if not self.scaler.is_enabled():  # fp16: the scaler skips non-finite steps itself
            for g in grads:
                g.masked_fill_(bad, 0.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_lr = self.lr
        self.scheduler.step()
        self.state.step += 1
        self.stats.add(loss, grad_norm, bad)
        if self.ema is not None:
            self.ema.update(self.bare_model)

    def _forward_backward(
        self, images: torch.Tensor, masks: torch.Tensor, group_size: int
    ) -> torch.Tensor:
        """Forward and backward of one batch, its loss scaled by ``1 / group_size``; returns
        the (unscaled, detached) loss."""
        dev = self.info.device
        images = self.normalize(images.to(dev, non_blocking=True))
        masks = masks.to(dev, non_blocking=True).long()
        with precision.autocast(dev, self.amp_dtype):
            loss = self.loss_fn(self.model(images), masks)
        share = loss if group_size == 1 else loss / group_size
        self.scaler.scale(share).backward()
        return loss.detach()

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP's all-reduce on the group's last backward only (``no_sync`` before it)."""
        no_sync = getattr(self.model, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()

    def _log_window(self, bar: tqdm, position: int) -> None:
        """A logging point: read the device-side stats (the one sync of the window), stop on
        divergence, update the bar, write the scalars."""
        window = self.stats.read()
        self._check_divergence(window["run"], position)
        scalars = {"train/lr": self.step_lr, **self.stats.scalars(window)}
        if self.info.device.type == "cuda":
            scalars["train/peak_mem_gb"] = torch.cuda.max_memory_allocated(self.info.device) / 1e9
        loss = scalars.get("train/loss", float("nan"))
        rate = scalars["train/images_per_s"]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.step_lr:.2e}", img_s=f"{rate:.1f}")
        self.tracker.log_scalars(self.state.step, scalars)

    def _check_divergence(self, run: float, position: int) -> None:
        """Stop after ``max_nonfinite_steps`` consecutive non-finite steps (``run``; the same
        on every rank), naming the step, lr, loss scale and the first bad batch's files."""
        limit = self.opt.max_nonfinite_steps
        if not limit or run < limit:
            return
        run, step = int(run), self.state.step
        first = position - run + 1  # step position of the first bad step in this epoch
        batch = (first if first >= 0 else position) * self.opt.accumulate_grad_batches
        files = batch_files(self.train_loader, batch)  # its first batch
        scale = f"{self.scaler.get_scale():g}" if self.scaler.is_enabled() else "none"
        raise divergence_error(run, step, limit, self.step_lr, scale, self.precision, files, first)

    def _check_finite_weights(self, epoch: int) -> None:
        """Weights that are not finite are never written (checked on every rank: BatchNorm
        statistics may differ between ranks)."""
        finite = finite_weights(self.bare_model)
        if self.ema is not None:
            finite = finite and finite_weights(self.ema.module)
        if dist.any_rank(not finite, self.info.device):
            raise DivergedError(
                f"the model weights hold NaN/Inf after epoch {epoch + 1} (step "
                f"{self.state.step}, lr {self.step_lr:.4g}); they were not saved and the last "
                "finite checkpoint is kept. Fix: lower optimizer.lr or add warmup "
                "(scheduler.warmup_epochs), or set trainer.grad_clip"
            )

    def _fit_schedule_to_run(self) -> None:
        """After a resume: the schedule's length comes back from the checkpoint; when this
        run's steps per epoch (another world size or batch size) or epoch count make another
        last step, the schedule is retargeted to end there (say so in the log)."""
        s = self.state
        last_epoch = self.max_epochs
        if self.budget_s is not None and s.planned_epochs is not None:
            last_epoch = s.planned_epochs
        done = -(-s.epoch_step // self.opt.accumulate_grad_batches)  # steps into the epoch
        total = s.step + (last_epoch - s.epoch) * self.steps_per_epoch - done
        if self.opt.max_steps is not None:
            total = min(total, self.opt.max_steps)
        old = getattr(self.scheduler, "total_steps", None)
        if old is None or total <= s.step or old == total:
            return
        how = budget.retarget_schedule(self.scheduler, total)
        log.info(
            "resume: %d steps per epoch, %d epochs: this run ends at step %d; %s",
            self.steps_per_epoch,
            last_epoch,
            total,
            how or f"{type(self.scheduler).__name__} keeps its length",
        )

    # ----------------------------------------------------------------- eval
    def validate(self, epoch: int) -> dict:
        """Score the val loader (summed across ranks), log it, and hand it to the tracker."""
        samples = SampleCollector(self.opt.num_vis)
        if self.ema is not None:  # BatchNorm statistics may differ between ranks
            dist.broadcast_tensors(list(self.ema.module.buffers()))
        model = self.eval_model
        metrics = evaluate(
            model if self.val_predictor is None else self.val_predictor(model),
            self.val_loader,
            self.cm,
            device=self.info.device,
            amp_dtype=self.amp_dtype,
            loss_fn=self.loss_fn,
            limit_batches=self.opt.limit_val_batches,
            on_batch=samples if self.tracker.wants_samples else None,
            normalize=self.normalize,
            progress=self.opt.progress_bar,
        )
        log.info(
            "epoch %d val loss %.4f mIoU %.4f pixel acc %.4f",
            epoch + 1,
            metrics["loss"],
            metrics["miou"],
            metrics["pixel_acc"],
        )
        self.tracker.log_val(self.state.step, epoch + 1, metrics, samples)
        return metrics

    # ----------------------------------------------------------------- state
    def state_dict(self, metrics: dict | None) -> dict[str, Any]:
        """The checkpoint (see ``segkit.io.checkpoint``): weights, optimiser, schedule, scaler, the
        TrainState fields, RNG states, config, labels and the last validation's metrics."""
        clean = None if metrics is None else {k: v for k, v in metrics.items() if k != "confusion"}
        ema = (
            {}
            if self.ema is None
            else {
                "train_model": self.bare_model.state_dict(),  # what training continues from
                "ema_updates": self.ema.updates,
            }
        )
        return {
            "model": ckpt_io.unwrap(self.eval_model).state_dict(),  # EMA weights with EMA
            **ema,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **dataclasses.asdict(self.state),
            "rng": ckpt_io.rng_state(),
            "config": self.run_config,
            "labels": self.labels.to_dict(),
            "class_names": list(self.labels.class_names),
            "palette": [list(c) for c in self.labels.palette],
            "metrics": clean,
            "world_size": self.info.world_size,
        }

    def save(self, name: str, metrics: dict | None) -> Path | None:
        """Checkpoint ``name`` (rank 0 writes it; None elsewhere)."""
        return self.checkpoints.save(name, lambda: self.state_dict(metrics))

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore everything needed to continue exactly where ``ckpt`` was written."""
        trained = ckpt.get("train_model")  # present when the checkpoint holds an EMA
        self.bare_model.load_state_dict(ckpt["model"] if trained is None else trained)
        if self.ema is not None:  # without a stored average, it starts from these weights
            updates = ckpt.get("ema_updates", 0) if trained is not None else 0
            self.ema.load_state_dict(ckpt["model"], updates)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState.from_checkpoint(ckpt)
        self._fit_schedule_to_run()
        with contextlib.suppress(KeyError, ValueError, RuntimeError):
            ckpt_io.set_rng_state(ckpt["rng"])
