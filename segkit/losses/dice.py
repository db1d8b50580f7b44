"""Soft Dice loss on softmax probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segkit.losses.base import SegLoss, class_weights_buffer


class DiceLoss(SegLoss):
    """``forward(outputs, target (N,H,W) int64) -> scalar`` = mean over classes of ``1 - dice_c``.

    ``dice_c = (2 * sum(p_c * g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)``, with ``p`` the
    softmax probabilities and ``g`` the one-hot label (built on the logits' device, in their
    dtype); sums run over the whole batch (N, H, W) and exclude ignored pixels from both the
    intersection and the sums.

    Classes absent from the batch's labels still count in the class mean: their term is
    ``1 - smooth / (sum(p_c) + smooth)``, i.e. 0 when the model also predicts (almost) no
    probability mass for them and close to 1 when it hallucinates them. Thus a perfect prediction
    gives 0 and false positives of absent classes are penalised (the bubbliiiing Dice_loss
    behaviour). With ``class_weights`` the class mean is ``sum_c w_c (1 - dice_c) / sum_c w_c``.

    Args:
        smooth: additive smoothing (> 0 recommended; with 0 an absent class gives 0/0 -> dice 0).
        ignore_index: label value excluded from the loss.
        class_weights: one float per class or None (buffer, moves with ``.to()``).
        aux_weights: weight of each aux head (float) or one per aux head (list).
    """

    def __init__(
        self,
        smooth: float = 1.0,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        aux_weights: float | Sequence[float] = 0.4,
    ):
        super().__init__(ignore_index=ignore_index, aux_weights=aux_weights)
        if smooth < 0:
            raise ValueError(f"loss.smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.register_buffer("class_weights", class_weights_buffer(class_weights), persistent=False)

    def per_class_dice(self, logits: Tensor, target: Tensor) -> Tensor:
        """Soft dice per class, shape (C,), from logits (N,C,H,W) and target (N,H,W)."""
        valid = (target != self.ignore_index).unsqueeze(1)  # (N,1,H,W)
        probs = logits.softmax(dim=1) * valid
        # one-hot by scatter in the logits dtype, on their device: unlike F.one_hot no int64
        # (N,H,W,C) temporary, no permute copy, no host sync for its range check
        safe_target = target.unsqueeze(1).masked_fill(~valid, 0)
        one_hot = torch.zeros_like(probs).scatter_(1, safe_target, 1.0) * valid
        dims = (0, 2, 3)
        inter = (probs * one_hot).sum(dims)
        card = probs.sum(dims) + one_hot.sum(dims)
        return (2.0 * inter + self.smooth) / (card + self.smooth).clamp_min(1e-12)

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        per_class = 1.0 - self.per_class_dice(logits, target)
        weights = self._weights_for(logits)
        if weights is None:
            return per_class.mean()
        return (weights * per_class).sum() / weights.sum().clamp_min(1e-12)
