"""STDC-Seg's detail-guidance loss, and cross-entropy (plain, OHEM, + Dice or + Lovasz) plus it,
for ``model=stdc1|stdc2``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.losses.base import resize_to_target
from segkit.losses.ce import CrossEntropyLoss
from segkit.losses.combo import CEDiceLoss
from segkit.losses.lovasz import CELovaszLoss
from segkit.losses.ohem import OhemCrossEntropyLoss


class DetailLoss(nn.Module):
    """STDC detail guidance: BCE + dice between boundary logits and a Laplacian boundary target.

    Target: the 3x3 Laplacian of the label map at strides 1, 2 and 4, each thresholded and
    upsampled (nearest) to full size, fused with weights (0.6, 0.3, 0.1) and thresholded at 0.1
    (as the STDC authors). Unlike them we take ``|Laplacian|`` (with VOC's 255 band around
    objects the one-signed response marks no boundary on the valid side) and pad by replication
    (zero padding marks the image border); pixels equal to ``ignore_index`` are left out of
    both terms.

    ``forward(outputs: dict with "detail" | (N, 1, h, w) logits, target: (N, H, W) int64)``
    -> scalar; logits are resized (bilinear) to the label size.
    """

    def __init__(
        self, ignore_index: int = 255, bce_weight: float = 1.0, dice_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        laplacian = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])
        self.register_buffer("laplacian", laplacian.view(1, 1, 3, 3), persistent=False)
        fuse = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)
        self.register_buffer("fuse", fuse, persistent=False)

    @torch.no_grad()
    def boundary_target(self, target: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` int64 labels -> ``(N, 1, H, W)`` float {0, 1} boundary map."""
        labels = target.unsqueeze(1).float()
        # Replicate padding: zero padding would mark the image border of every class > 0.
        padded = F.pad(labels, (1, 1, 1, 1), mode="replicate")
        maps = []
        for stride in (1, 2, 4):
            edge = F.conv2d(padded, self.laplacian, stride=stride).abs() > 0.1
            maps.append(F.interpolate(edge.float(), size=labels.shape[-2:], mode="nearest"))
        return (F.conv2d(torch.cat(maps, dim=1), self.fuse) > 0.1).float()

    def forward(self, outputs: dict | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = outputs.get("detail") if isinstance(outputs, Mapping) else outputs
        if logits is None:
            raise KeyError(
                "DetailLoss needs outputs['detail']: use STDCSeg(detail=True) in training mode"
            )
        logits = resize_to_target(logits.float(), target)
        boundary = self.boundary_target(target)
        valid = (target != self.ignore_index).unsqueeze(1).float()
        bce = F.binary_cross_entropy_with_logits(logits, boundary, reduction="none")
        bce = (bce * valid).sum() / valid.sum().clamp(min=1.0)
        prob, boundary = torch.sigmoid(logits) * valid, boundary * valid
        inter = (prob * boundary).flatten(1).sum(1)
        dice = 1 - (2 * inter + 1) / (prob.flatten(1).sum(1) + boundary.flatten(1).sum(1) + 1)
        return self.bce_weight * bce + self.dice_weight * dice.mean()


class DetailGuided:
    """Mixin for a segmentation loss: adds ``detail_weight * DetailLoss(outputs["detail"])``
    when the outputs carry ``"detail"`` (STDCSeg in training), so validation, and any other
    model, get the plain loss. Put it first: ``class X(DetailGuided, SomeSegLoss)``."""

    detail_weight: float
    detail: DetailLoss

    def _init_detail(self, detail_weight: float, ignore_index: int) -> None:
        self.detail_weight = detail_weight
        self.detail = DetailLoss(ignore_index=ignore_index)

    def forward(self, outputs: Mapping | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = super().forward(outputs, target)
        if isinstance(outputs, Mapping) and "detail" in outputs:
            total = total + self.detail_weight * self.detail(outputs, target)
        return total


class CEDetailLoss(DetailGuided, CrossEntropyLoss):
    """``CE(out) + aux terms + detail_weight * DetailLoss(detail)``."""

    def __init__(
        self,
        detail_weight: float = 1.0,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        aux_weights: float | Sequence[float] = 0.4,
    ) -> None:
        super().__init__(ignore_index, class_weights, label_smoothing, aux_weights)
        self._init_detail(detail_weight, ignore_index)


class OhemDetailLoss(DetailGuided, OhemCrossEntropyLoss):
    """``OHEM-CE(out) + aux terms + detail_weight * DetailLoss(detail)``: STDC-Seg's own
    training loss (see :class:`OhemCrossEntropyLoss` for ``thresh`` / ``min_kept``)."""

    def __init__(
        self,
        detail_weight: float = 1.0,
        thresh: float = 0.7,
        min_kept: int = 100000,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        aux_weights: float | Sequence[float] = 0.4,
    ) -> None:
        super().__init__(thresh, min_kept, ignore_index, class_weights, aux_weights)
        self._init_detail(detail_weight, ignore_index)


class CEDiceDetailLoss(DetailGuided, CEDiceLoss):
    """``ce_weight * CE + dice_weight * soft Dice`` per head (see :class:`CEDiceLoss`)
    ``+ detail_weight * DetailLoss(detail)``."""

    def __init__(
        self,
        detail_weight: float = 1.0,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        smooth: float = 1.0,
        aux_weights: float | Sequence[float] = 0.4,
    ) -> None:
        super().__init__(
            ce_weight,
            dice_weight,
            ignore_index,
            class_weights,
            label_smoothing,
            smooth,
            aux_weights,
        )
        self._init_detail(detail_weight, ignore_index)


class CELovaszDetailLoss(DetailGuided, CELovaszLoss):
    """``ce_weight * CE + lovasz_weight * Lovasz-softmax`` per head (see :class:`CELovaszLoss`)
    ``+ detail_weight * DetailLoss(detail)``."""

    def __init__(
        self,
        detail_weight: float = 1.0,
        ce_weight: float = 1.0,
        lovasz_weight: float = 1.0,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        classes: str = "present",
        per_image: bool = False,
        aux_weights: float | Sequence[float] = 0.4,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(
            ce_weight,
            lovasz_weight,
            ignore_index,
            class_weights,
            label_smoothing,
            classes,
            per_image,
            aux_weights,
            max_pixels,
        )
        self._init_detail(detail_weight, ignore_index)
