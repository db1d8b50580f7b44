"""Online hard example mining cross-entropy (as used by BiSeNet / mmseg OHEM sampling)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segkit.losses.ce import CrossEntropyLoss, weighted_mean


class OhemCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy averaged over the hard pixels only; ``forward(outputs, target) -> scalar``.

    Per head, a valid (non-ignored) pixel is kept when EITHER
      * its softmax probability of the true class is ``< thresh``, OR
      * it is among the ``min_kept`` valid pixels with the largest per-pixel loss (ties at the
        cut-off are all kept; when fewer than ``min_kept`` pixels are valid, all valid are kept),
    so at least ``min(min_kept, #valid)`` pixels are used. Selection is over the whole batch
    (all N images of the head together), as in BiSeNet's OhemCELoss. The loss is the mean of the
    (class-weighted) per-pixel CE over the kept pixels, with the same weighted-mean convention as
    :class:`CrossEntropyLoss` (so ``min_kept >= N*H*W`` reproduces it exactly). Without class
    weights, "largest loss" and "lowest true-class probability" are the same order.

    Args:
        thresh: probability threshold in (0, 1]; pixels predicted at least this confidently
            correct are easy and dropped (unless needed to reach ``min_kept``).
        min_kept: minimum number of pixels (a count, per head and batch) kept.
        ignore_index, class_weights, aux_weights: as in :class:`CrossEntropyLoss`.
    """

    def __init__(
        self,
        thresh: float = 0.7,
        min_kept: int = 100000,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        aux_weights: float | Sequence[float] = 0.4,
    ):
        super().__init__(ignore_index, class_weights, 0.0, aux_weights)
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"loss.thresh must be in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"loss.min_kept must be >= 0 (a pixel count), got {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)

    def kept_mask(self, logits: Tensor, target: Tensor, losses: Tensor) -> Tensor:
        """Bool (N,H,W): pixels that enter the mean. No host sync (k is a python int)."""
        valid = target != self.ignore_index
        safe_target = target.masked_fill(~valid, 0).unsqueeze(1)
        with torch.no_grad():
            prob = logits.softmax(dim=1).gather(1, safe_target).squeeze(1)
            keep = valid & (prob < self.thresh)
            k = min(self.min_kept, losses.numel())
            if k > 0:
                # ignored pixels rank below every valid one (CE >= 0), so the k-th largest value
                # is -1 exactly when fewer than k pixels are valid: then every valid one is kept.
                ranked = losses.detach().masked_fill(~valid, -1.0).flatten()
                kth_largest = ranked.topk(k, sorted=False).values.min()
                keep |= valid & (losses.detach() >= kth_largest)
        return keep

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        losses = self.pixel_losses(logits, target)
        keep = self.kept_mask(logits, target, losses)
        return weighted_mean(losses, target, keep, self._weights_for(logits))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, thresh={self.thresh}, min_kept={self.min_kept}"
