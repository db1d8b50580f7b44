"""Pixel-wise cross-entropy with ignore index, class weights and label smoothing."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from segkit.losses.base import SegLoss, class_weights_buffer


def weighted_mean(
    pixel_losses: Tensor, target: Tensor, keep: Tensor, weights: Tensor | None
) -> Tensor:
    """Mean of ``pixel_losses`` (N,H,W) over the pixels where ``keep`` (bool, N,H,W) is True.

    With class weights the denominator is the sum of ``weights[target]`` over the kept pixels,
    which is exactly what ``torch.nn.functional.cross_entropy(weight=..., reduction="mean")``
    does. No kept pixel -> 0 (with a zero gradient) instead of torch's NaN.
    """
    keep_f = keep.to(pixel_losses.dtype)
    if weights is None:
        denom = keep_f.sum()
    else:
        denom = (weights[target.masked_fill(~keep, 0)] * keep_f).sum()
    return (pixel_losses * keep_f).sum() / denom.clamp_min(1e-12)


class CrossEntropyLoss(SegLoss):
    """Softmax cross-entropy over pixels; ``forward(outputs, target (N,H,W) int64) -> scalar``.

    The mean is over non-ignored pixels. With ``class_weights`` it is torch's weighted mean:
    ``sum_i w[y_i] * ce_i / sum_i w[y_i]`` (divided by the sum of the weights of the valid
    pixels, not by their count), so weights change the balance between classes but a uniform
    scaling of all weights does not change the loss. A batch with no valid pixel gives 0.

    Args:
        ignore_index: label value excluded from the loss.
        class_weights: one float per class (length = number of logit channels) or None.
            Stored as a non-persistent buffer, so ``.to(device)`` moves it.
        label_smoothing: as in ``torch.nn.CrossEntropyLoss`` (in [0, 1)).
        aux_weights: weight of each aux head (float) or one per aux head (list).
    """

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        aux_weights: float | Sequence[float] = 0.4,
    ):
        super().__init__(ignore_index=ignore_index, aux_weights=aux_weights)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("class_weights", class_weights_buffer(class_weights), persistent=False)

    def pixel_losses(self, logits: Tensor, target: Tensor) -> Tensor:
        """Per-pixel (class-weighted) CE, (N,H,W); 0 at ignored pixels."""
        return F.cross_entropy(
            logits,
            target,
            weight=self._weights_for(logits),
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = target != self.ignore_index
        losses = self.pixel_losses(logits, target)
        return weighted_mean(losses, target, valid, self._weights_for(logits))
