"""Exponential moving average (EMA) of a model's weights: ``trainer.ema_decay``.

After every optimiser step each floating-point parameter and buffer ``e`` of the copy moves
towards the trained model's ``w``: ``e <- d * e + (1 - d) * w`` with ``d = min(decay,
(1 + n) / (10 + n))`` at update ``n`` (a short ramp, so the average does not remember the random
initialisation). Integer buffers (BatchNorm's ``num_batches_tracked``) are copied. Validation,
the best checkpoint and every exported weights file use the averaged copy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """An averaged, gradient-free copy of ``model`` (the bare model, not a DDP wrapper)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema_decay must be in (0, 1) or null, got {decay}")
        self.decay, self.updates = float(decay), 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay of the next update (ramps up to ``decay``)."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step towards ``model``'s current weights (same architecture as the copy)."""
        d = self.current_decay()
        self.updates += 1
        ema_f, new_f = [], []
        for e, w in zip(self._tensors(self.module), self._tensors(model)):
            if e.is_floating_point():
                ema_f.append(e)
                new_f.append(w.detach())
            else:
                e.copy_(w)
        if ema_f:
            torch._foreach_lerp_(ema_f, new_f, 1.0 - d)

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict, updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = int(updates)
