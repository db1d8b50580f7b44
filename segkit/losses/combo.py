"""Weighted sum of cross-entropy and Dice (the notes' ``dice_loss=True`` option)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from segkit.losses.base import SegLoss
from segkit.losses.ce import CrossEntropyLoss
from segkit.losses.dice import DiceLoss


class CEDiceLoss(SegLoss):
    """``ce_weight * CrossEntropyLoss + dice_weight * DiceLoss`` per head, aux heads weighted.

    Both terms see the same ``class_weights`` and ``ignore_index``; see :class:`CrossEntropyLoss`
    and :class:`DiceLoss` for their exact definitions.
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        smooth: float = 1.0,
        aux_weights: float | Sequence[float] = 0.4,
    ):
        super().__init__(ignore_index=ignore_index, aux_weights=aux_weights)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ce = CrossEntropyLoss(ignore_index, class_weights, label_smoothing, aux_weights)
        self.dice = DiceLoss(smooth, ignore_index, class_weights, aux_weights)

    @property
    def class_weights(self) -> Tensor | None:
        """The (shared) class weights of both terms, (C,) float or None."""
        return self.ce.class_weights

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        ce = self.ce.pixel_loss(logits, target)
        dice = self.dice.pixel_loss(logits, target)
        return self.ce_weight * ce + self.dice_weight * dice
