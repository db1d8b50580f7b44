"""Optimiser parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

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


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, warmup_start: float, min_ratio: float
) -> float:
    """LR multiplier at optimiser ``step`` (0-based): linear from ``warmup_start`` to 1 over
    ``warmup_steps``, then cosine from 1 to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(LRScheduler):
    """Cosine annealing to ``eta_min`` with linear warmup, stepped once per iteration.

    ``total_steps`` and ``steps_per_epoch`` are filled in by the run from ``len(loader)``;
    ``warmup_epochs`` may be fractional. ``eta_min`` is absolute (same for every group).
    """

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
        if total_steps <= 0:
            raise ValueError(f"scheduler total_steps must be > 0, got {total_steps}")
        self.total_steps = total_steps
        self.warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
        self.warmup_start = warmup_start
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lrs = []
        for base_lr in self.base_lrs:
            min_ratio = min(1.0, self.eta_min / base_lr) if base_lr > 0 else 0.0
            f = warmup_cosine_factor(
                self.last_epoch, self.total_steps, self.warmup_steps, self.warmup_start, min_ratio
            )
            lrs.append(base_lr * f)
        return lrs
