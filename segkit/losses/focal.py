"""Focal loss (Lin et al. 2017) in the form of the user's notes, averaged over valid pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from segkit.losses.base import SegLoss, class_weights_buffer


class FocalLoss(SegLoss):
    """``forward(outputs, target (N,H,W) int64) -> scalar``; the notes' ``Focal_Loss``.

    Per pixel: ``logpt = -CE(logits, y; weight=class_weights)``, ``pt = exp(logpt)``,
    ``loss = -(1 - pt) ** gamma * alpha * logpt``. As in the notes, ``pt`` is computed from the
    class-WEIGHTED cross-entropy, so with class weights ``pt`` is ``p_y ** w[y]`` rather than the
    true-class probability; without weights it is ``p_y``.

    The result is the mean over the non-ignored pixels only (the notes averaged over all pixels,
    so ignored pixels, whose loss is 0, diluted the loss). No valid pixel -> 0.

    Args:
        alpha: constant factor (None -> 1.0).
        gamma: focusing exponent (>= 0); 0 gives ``alpha * CE`` averaged by pixel count.
        class_weights: one float per class or None (buffer, moves with ``.to()``).
        ignore_index: label value excluded from the loss.
        aux_weights: weight of each aux head (float) or one per aux head (list).
    """

    def __init__(
        self,
        alpha: float | None = 0.5,
        gamma: float = 2.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = 255,
        aux_weights: float | Sequence[float] = 0.4,
    ):
        super().__init__(ignore_index=ignore_index, aux_weights=aux_weights)
        if gamma < 0:
            raise ValueError(f"loss.gamma must be >= 0, got {gamma}")
        self.alpha = 1.0 if alpha is None else float(alpha)
        self.gamma = float(gamma)
        self.register_buffer("class_weights", class_weights_buffer(class_weights), persistent=False)

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = target != self.ignore_index
        logpt = -F.cross_entropy(
            logits,
            target,
            weight=self._weights_for(logits),
            ignore_index=self.ignore_index,
            reduction="none",
        )
        pt = logpt.exp()
        # clamp: at pt == 1 (every ignored pixel) d/dx x**gamma is inf for gamma < 1 and would
        # turn the zero gradient of those pixels into NaN; the value changes by < 1e-12**gamma.
        modulating = (1.0 - pt).clamp_min(1e-12) ** self.gamma
        losses = -modulating * self.alpha * logpt
        return (losses * valid).sum() / valid.sum().clamp_min(1)
