"""Cross-entropy plus STDC-Seg's detail-guidance loss, for ``model=stdc1|stdc2``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from segkit.losses.ce import CrossEntropyLoss
from segkit.models.stdc import DetailLoss


class CEDetailLoss(CrossEntropyLoss):
    """``CE(out) + aux terms + detail_weight * DetailLoss(detail)``.

    The detail term is added only when the outputs carry ``"detail"`` (STDCSeg in training),
    so validation, and any other model, get plain cross-entropy.
    """

    def __init__(
        self,
        detail_weight: float = 1.0,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        aux_weights: float | Sequence[float] = 0.4,
    ) -> None:
        super().__init__(ignore_index, class_weights, label_smoothing, aux_weights)
        self.detail_weight = detail_weight
        self.detail = DetailLoss(ignore_index=ignore_index)

    def forward(self, outputs: Mapping | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = super().forward(outputs, target)
        if isinstance(outputs, Mapping) and "detail" in outputs:
            total = total + self.detail_weight * self.detail(outputs, target)
        return total
