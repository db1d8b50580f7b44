"""Lovasz-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018) and its sum with CE.

The Lovasz extension of the Jaccard loss is a tight convex surrogate of ``1 - IoU`` per class:
sort the pixel errors ``|fg_c - p_c|`` in decreasing order and weight each by the increase of
the Jaccard loss when that pixel joins the set of mispredicted pixels. All classes (and, with
``per_image``, all images) are computed at once with one sort, without host syncs. The sort is
the cost (it grows with the pixel-classes of a batch): ``max_pixels`` ranks a uniform
random subset of the pixels instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segkit.losses.base import SegLoss, class_weights_buffer
from segkit.losses.ce import CrossEntropyLoss

_CLASSES = ("present", "all")


def lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss, ``(B, P, C)`` -> ``(B, P, C)``.

    ``fg_sorted`` holds the {0, 1} foreground indicator of each class along dim 1, sorted by
    decreasing error. Entry ``i`` is ``J(i) - J(i - 1)`` (``J(-1) = 0``), where ``J(i) =
    1 - |fg - S| / |fg + S|`` is the Jaccard loss when exactly the set ``S`` of the first
    ``i + 1`` pixels is mispredicted (``-`` set difference, ``+`` union).
    """
    gts = fg_sorted.sum(dim=1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(dim=1)
    union = gts + (1.0 - fg_sorted).cumsum(dim=1)  # >= 1 everywhere: no division by zero
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_per_class(probs: Tensor, fg: Tensor, valid: Tensor) -> Tensor:
    """Lovasz-softmax term of every class: probs, fg ``(B, P, C)``, valid ``(B, P, 1)`` bool
    -> ``(B, C)``.

    Invalid (ignored) pixels get error -1, so they sort after every valid pixel (errors are in
    [0, 1]) and are masked out of the dot product: the result equals the reference
    implementation run on the valid pixels only.
    """
    # Sorted along a contiguous last dim (B, C, P): faster than along dim 1 of (B, P, C).
    errors = (fg - probs).abs().masked_fill(~valid, -1.0).transpose(1, 2).contiguous()
    errors_sorted, perm = errors.sort(dim=2, descending=True)
    with torch.no_grad():  # the weights depend on the labels only: no graph, less memory
        fg_sorted = fg.transpose(1, 2).gather(2, perm)
        valid_sorted = valid.transpose(1, 2).expand_as(fg_sorted).gather(2, perm)
        weights = lovasz_grad(fg_sorted.transpose(1, 2)).transpose(1, 2) * valid_sorted
    return (errors_sorted * weights).sum(dim=2)


def rankings(
    logits: Tensor, target: Tensor, batches: int, max_pixels: int | None = None
) -> tuple[Tensor, Tensor]:
    """logits ``(N, C, H, W)``, target ``(N, H, W)`` -> scores ``(B, P, C)``, labels
    ``(B, P, 1)`` for ``B = batches`` rankings (1: the whole batch; N: one per image).

    With ``max_pixels`` below the P pixels of a ranking, a uniform random subset of that many
    (torch.randperm; per image: the same positions in each) is gathered without copying the
    whole map.
    """
    n, c = logits.shape[:2]
    pixels = logits.shape[2] * logits.shape[3] * (n // batches)
    if max_pixels is None or pixels <= max_pixels:
        return logits.permute(0, 2, 3, 1).reshape(batches, -1, c), target.reshape(batches, -1, 1)
    keep = torch.randperm(pixels, device=logits.device)[:max_pixels]
    if batches == 1:  # one ranking over the batch: pixel index = image * H * W + position
        rows, keep = keep // (pixels // n), keep % (pixels // n)
    else:  # one per image: the same positions in each
        rows = torch.arange(batches, device=logits.device).unsqueeze(1)
    scores = logits.reshape(n, c, -1)[rows, :, keep].reshape(batches, -1, c)
    return scores, target.reshape(n, -1)[rows, keep].reshape(batches, -1, 1)


class LovaszSoftmaxLoss(SegLoss):
    """``forward(outputs, target (N,H,W) int64) -> scalar``: the Lovasz-softmax loss.

    Per class ``c``: the Lovasz extension of the Jaccard loss applied to the errors
    ``|1[y == c] - softmax(logits)_c|`` of the non-ignored pixels (see :func:`lovasz_grad`).
    The loss is the mean of the per-class terms over the counted classes: those present in
    the label (``classes="present"``, the paper's default: an absent class has no IoU to
    optimise) or all ``C`` (``classes="all"``). With ``class_weights`` the mean is weighted:
    ``sum_c w_c l_c / sum_c w_c`` over the counted classes.

    ``per_image=False`` treats the batch as one image (the pixels of all N images are ranked
    together); ``per_image=True`` computes the loss per image and averages over the N images.
    No counted class (e.g. every pixel ignored) gives 0 with a zero gradient.

    ``max_pixels``: when a ranking holds more pixels, only a uniform random subset of that many
    (drawn without replacement from torch's global generator, the same positions for every
    image of a ``per_image`` batch) is ranked: an unbiased sample of the errors whose Lovasz
    term estimates the full one at a fraction of the cost (the sort); the other pixels get no
    gradient from this term. None ranks every pixel.

    Args:
        classes: ``"present"`` or ``"all"``.
        per_image: one ranking per image instead of one per batch.
        ignore_index: label value excluded from the loss.
        class_weights: one float per class or None (buffer, moves with ``.to()``).
        aux_weights: weight of each aux head (float) or one per aux head (list).
        max_pixels: pixels ranked per ranking (a random subset), or None for all.
    """

    def __init__(
        self,
        classes: str = "present",
        per_image: bool = False,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        aux_weights: float | Sequence[float] = 0.4,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(ignore_index=ignore_index, aux_weights=aux_weights)
        if classes not in _CLASSES:
            raise ValueError(f"loss.classes must be one of {list(_CLASSES)}, got {classes!r}")
        if max_pixels is not None and (isinstance(max_pixels, bool) or int(max_pixels) < 1):
            raise ValueError(
                f"loss.max_pixels must be a positive integer or null, got {max_pixels!r}"
            )
        self.classes = classes
        self.per_image = bool(per_image)
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        self.register_buffer("class_weights", class_weights_buffer(class_weights), persistent=False)

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        n, c = logits.shape[:2]
        batches = n if self.per_image else 1
        scores, labels = rankings(logits, target, batches, self.max_pixels)
        probs = scores.softmax(dim=2)
        valid = labels != self.ignore_index
        classes = torch.arange(c, device=logits.device)
        fg = ((labels == classes) & valid).to(probs.dtype)  # (B, P, C), on the logits' device
        losses = lovasz_per_class(probs, fg, valid)
        counted = fg.sum(dim=1) > 0 if self.classes == "present" else torch.ones_like(losses)
        weights = counted.to(losses.dtype)
        class_weights = self._weights_for(logits)
        if class_weights is not None:
            weights = weights * class_weights
        per_batch = (losses * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-12)
        return per_batch.mean()

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, classes={self.classes!r}, per_image={self.per_image}, "
            f"max_pixels={self.max_pixels}"
        )


class CELovaszLoss(SegLoss):
    """``ce_weight * CrossEntropyLoss + lovasz_weight * LovaszSoftmaxLoss`` per head, aux heads
    weighted; both terms share ``class_weights`` and ``ignore_index`` (see the two classes)."""

    def __init__(
        self,
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
        super().__init__(ignore_index=ignore_index, aux_weights=aux_weights)
        self.ce_weight = float(ce_weight)
        self.lovasz_weight = float(lovasz_weight)
        self.ce = CrossEntropyLoss(ignore_index, class_weights, label_smoothing, aux_weights)
        self.lovasz = LovaszSoftmaxLoss(
            classes, per_image, ignore_index, class_weights, aux_weights, max_pixels
        )

    @property
    def class_weights(self) -> Tensor | None:
        """The (shared) class weights of both terms, (C,) float or None."""
        return self.ce.class_weights

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        ce = self.ce.pixel_loss(logits, target)
        lovasz = self.lovasz.pixel_loss(logits, target)
        return self.ce_weight * ce + self.lovasz_weight * lovasz
