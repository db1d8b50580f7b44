"""Optimiser parameter groups and the warmup + cosine / poly learning-rate schedules.

Both schedules are pure functions of the optimiser step (``warmup_cosine_factor``,
``warmup_poly_factor``) wrapped in an ``LRScheduler`` that is stepped once per iteration, so
resuming restores the LR from the step count alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from segkit.errors import ConfigError

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights that get weight decay, and norm/bias parameters that do not.

    The second group carries ``weight_decay=0``; the first inherits the optimiser's value.
    Frozen parameters are included (they simply get no gradient), so unfreezing needs no
    new optimiser.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_bias = name.endswith(".bias") or p.ndim <= 1
        (no_decay if is_bias or id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def _warmup_factor(step: int, warmup_steps: int, warmup_start: float) -> float:
    """Linear from ``warmup_start`` (step 0) towards 1 (reached at ``warmup_steps``)."""
    return warmup_start + (1.0 - warmup_start) * step / warmup_steps


def _progress(step: int, total_steps: int, anchor_step: int, anchor_progress: float = 0.0) -> float:
    """Fraction in [0, 1] of the decay done at ``step``: ``anchor_progress`` at
    ``anchor_step`` (the end of warmup, or where the schedule was last retargeted), 1 from
    ``total_steps`` on, linear in between."""
    if step >= total_steps:
        return 1.0
    span = max(1, total_steps - anchor_step)
    return min(1.0, anchor_progress + (1.0 - anchor_progress) * (step - anchor_step) / span)


def cosine_shape(progress: float, min_ratio: float) -> float:
    """Cosine from 1 (progress 0) to ``min_ratio`` (progress 1)."""
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def poly_shape(progress: float, power: float, min_ratio: float) -> float:
    """``min_ratio + (1 - min_ratio) * (1 - progress) ** power``."""
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress) ** power


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, warmup_start: float, min_ratio: float
) -> float:
    """LR multiplier at optimiser ``step`` (0-based): linear from ``warmup_start`` to 1 over
    ``warmup_steps``, then cosine from 1 to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return _warmup_factor(step, warmup_steps, warmup_start)
    return cosine_shape(_progress(step, total_steps, warmup_steps), min_ratio)


def warmup_poly_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    warmup_start: float,
    power: float,
    min_ratio: float,
) -> float:
    """LR multiplier at optimiser ``step`` (0-based): linear warmup as in the cosine schedule,
    then ``min_ratio + (1 - min_ratio) * (1 - progress) ** power`` with ``progress`` going from
    0 at ``warmup_steps`` to 1 at ``total_steps`` (the segmentation "poly" rule of DeepLab,
    BiSeNet and torchvision's references; ``torch.optim.lr_scheduler.PolynomialLR`` with
    ``total_iters = total_steps - warmup_steps`` when ``min_ratio == 0``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return _warmup_factor(step, warmup_steps, warmup_start)
    return poly_shape(_progress(step, total_steps, warmup_steps), power, min_ratio)


class _WarmupLR(LRScheduler):
    """Shared part of the per-iteration schedules: step counts, warmup, absolute ``eta_min``.

    ``total_steps`` and ``steps_per_epoch`` are filled in by the run from ``len(loader)``;
    ``warmup_epochs`` may be fractional. ``eta_min`` is absolute (same for every group).
    Subclasses implement ``shape(progress, min_ratio) -> float``.

    :meth:`retarget` moves the end (a resume with another step count, the time budget's
    plan); the decay then runs from where it stands (``anchor_step``, ``anchor_progress``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float,
        warmup_start: float,
        eta_min: float,
        last_epoch: int = -1,
    ) -> None:
        if total_steps <= 0:
            raise ConfigError(f"scheduler total_steps must be > 0, got {total_steps}")
        if not 0.0 <= warmup_start <= 1.0:
            raise ConfigError(f"scheduler.warmup_start must be in [0, 1], got {warmup_start}")
        if warmup_epochs < 0 or eta_min < 0:
            raise ConfigError(
                f"scheduler.warmup_epochs and scheduler.eta_min must be >= 0, got "
                f"{warmup_epochs} and {eta_min}"
            )
        self.total_steps = total_steps
        self.warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
        self.warmup_start = warmup_start
        self.eta_min = eta_min
        self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0
        super().__init__(optimizer, last_epoch)

    def shape(self, progress: float, min_ratio: float) -> float:
        raise NotImplementedError

    def factor(self, step: int, min_ratio: float) -> float:
        """LR multiplier at optimiser ``step``: warmup, then the decay's shape."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps, self.warmup_start)
        progress = _progress(step, self.total_steps, self.anchor_step, self.anchor_progress)
        return self.shape(progress, min_ratio)

    def retarget(self, total_steps: int) -> str:
        """End the schedule at ``total_steps`` from the current step; returns how, in words.

        Inside the decay the lr goes on from its current value and reaches ``eta_min`` at
        the new end (the rest of the curve is stretched or shrunk). A schedule that had
        already ended (a finished run trained for longer) restarts as if it had had the new
        length from the start. Warmup keeps its steps (clamped to the new end)."""
        step, old = self.last_epoch, self.total_steps
        if step >= old:
            self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0
            how = f"the schedule had ended (step {old}): it continues as a {total_steps}-step one"
        else:
            if step > self.warmup_steps:
                self.anchor_progress = _progress(step, old, self.anchor_step, self.anchor_progress)
                self.anchor_step = step
            how = f"from step {step} it decays from the current lr to reach eta_min at the end"
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = min(self.warmup_steps, self.total_steps)
        self.anchor_step = min(self.anchor_step, self.total_steps)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        return f"the schedule now ends at step {self.total_steps} (was {old}); {how}"

    def get_lr(self) -> list[float]:
        lrs = []
        for base_lr in self.base_lrs:
            min_ratio = min(1.0, self.eta_min / base_lr) if base_lr > 0 else 0.0
            lrs.append(base_lr * self.factor(self.last_epoch, min_ratio))
        return lrs


class WarmupCosineLR(_WarmupLR):
    """Cosine annealing to ``eta_min`` with linear warmup, stepped once per iteration
    (see :func:`warmup_cosine_factor`)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float = 1.0,
        warmup_start: float = 0.1,
        eta_min: float = 1e-5,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer,
            total_steps,
            steps_per_epoch,
            warmup_epochs,
            warmup_start,
            eta_min,
            last_epoch,
        )

    def shape(self, progress: float, min_ratio: float) -> float:
        return cosine_shape(progress, min_ratio)


class WarmupPolyLR(_WarmupLR):
    """Poly decay ``(1 - progress) ** power`` to ``eta_min`` with linear warmup, stepped once
    per iteration (see :func:`warmup_poly_factor`). ``power=0.9`` is the usual choice."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float = 1.0,
        warmup_start: float = 0.1,
        power: float = 0.9,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if power <= 0:
            raise ConfigError(f"scheduler.power must be > 0, got {power}")
        self.power = float(power)
        super().__init__(
            optimizer,
            total_steps,
            steps_per_epoch,
            warmup_epochs,
            warmup_start,
            eta_min,
            last_epoch,
        )

    def shape(self, progress: float, min_ratio: float) -> float:
        return poly_shape(progress, self.power, min_ratio)
