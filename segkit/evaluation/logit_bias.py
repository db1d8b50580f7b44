"""Calibrating a trained model's class priors: per-class logit biases fitted on the train split.

Class weights (``loss.class_weights``), OHEM and class-balanced crops buy recall for rare
classes by shifting every decision boundary towards them: on new images the weighted classes
are predicted far more often than they occur (results/camvid_analysis.md) and the common ones
too rarely. After
training, :func:`fit_bias` finds one bias per class such that the model, run on the train images
as validation runs it (no augmentation), predicts each class as often as the train labels hold
it; the bias is added to the logits (``argmax(logits + bias)``) wherever the model is used.
Nothing is learned from the validation split.

Why frequency matching: weighting class c by w_c in the cross-entropy shifts its optimal logit
by about log w_c (the logit-adjustment view of Menon et al., ICLR 2021). Removing that shift
exactly (``-log w``) restores the unweighted, pixel-accuracy optimum and starves the rare
classes again. Matching the predicted frequencies to the label frequencies keeps each class's
share instead: it removes the over-prediction without starving a class, needs no knowledge of
the loss, and also corrects shifts that come from sampling (class-balanced crops) or OHEM.

The biases depend on how the model is run: averaging the logits over a mirror and six scales
already evens the classes out, so the whole-image biases over-correct there (CamVid, one run:
63.8 -> 63.4 mIoU with them, 64.9 with biases fitted in that mode). So one set is fitted per
evaluation mode, and a mode gets only its own.

``calibrate.enabled=true`` fits the biases of ``best.pt`` at the end of training, for
``whole`` and each of the recipe's ``eval.modes``, and stores them in the checkpoint
(``logit_bias``: mode -> one float per class) and its weights file; eval.py and predict apply
the ones of the mode they run, export the ``whole`` ones; ``eval.py logit_bias=false`` scores
the raw model. ``scripts/calibrate.py`` does the same for a checkpoint trained without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from segkit import precision
from segkit.errors import CheckpointError, ConfigError
from segkit.evaluation.metrics import dataset_normalizer
from segkit.evaluation.predictors import parse_mode, restore_logits

log = logging.getLogger("segkit")

MAX_PIXELS = 1_000_000  # labelled pixels kept over the whole split (spread evenly over images)
MAX_ITERS = 200
TOLERANCE = 0.01  # stop when every class's predicted / labelled frequency is within 1%
MAX_STEP = 1.0  # largest bias change of one iteration (a class never predicted yet)


class LogitBias(nn.Module):
    """``model`` with ``bias`` (one float per class) added to its ``"out"`` logits;
    ``forward(x (N,3,H,W)) -> {"out": (N,C,h,w) logits + bias, other outputs as the model's}``."""

    def __init__(self, model: nn.Module, bias: Sequence[float] | Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32).flatten())

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = dict(self.model(x))
        logits = out["out"]
        out["out"] = logits + self.bias.to(logits.dtype)[None, :, None, None]
        return out


def check_biases(value: object, num_classes: int, source: str) -> dict[str, list[float]]:
    """The ``logit_bias`` stored in a checkpoint or weights file (data from a file): a mapping
    from evaluation mode (``whole``, ``whole+flip+ms``, ...) to ``num_classes`` finite floats;
    anything else is a CheckpointError."""

    def numbers(v: object) -> bool:
        return (
            isinstance(v, list | tuple)
            and len(v) == num_classes
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
            and all(math.isfinite(x) for x in v)
        )

    if not isinstance(value, Mapping) or not value or not all(map(numbers, value.values())):
        raise CheckpointError(
            f"{source}: logit_bias must map evaluation modes to lists of {num_classes} finite "
            f"numbers (one per class), found {str(value)[:200]}; fix: calibrate it again "
            "(scripts/calibrate.py), or score the raw model with logit_bias=false"
        )
    for spec in value:
        try:
            parse_mode(spec, f"logit_bias in {source}")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    return {str(k): [float(x) for x in v] for k, v in value.items()}


def stored_biases(info: Mapping, num_classes: int, source: str) -> dict[str, list[float]]:
    """The checked biases of a checkpoint / weights file dict; {} when it is not calibrated."""
    value = info.get("logit_bias")
    return {} if value is None else check_biases(value, num_classes, source)


def with_bias(predictor: nn.Module, biases: Mapping[str, Sequence[float]], spec: str):
    """``predictor`` (evaluation mode ``spec``) with the biases fitted for that mode, or as it
    is when there are none (a mode the checkpoint was not calibrated in: logged)."""
    if spec in biases:
        return LogitBias(predictor, biases[spec])
    if biases:
        log.warning(
            "no logit biases for mode %s (calibrated: %s): the raw logits", spec, ", ".join(biases)
        )
    return predictor


def spread_indices(n: int, k: int | None) -> list[int] | None:
    """``k`` of the indices ``0..n-1`` spread evenly, first and last included (sorted, no
    repeats); None (all of them, in order) when ``k`` is None or ``k >= n``."""
    if k is None or k >= n:
        return None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k == 1:
        return [0]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


@torch.no_grad()
def collect(
    predictor: nn.Module,
    loader: Iterable,
    num_classes: int,
    ignore_index: int,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    pixels_per_image: int = 4096,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Run ``predictor`` over ``loader`` (``OriginalSizeMasks`` batches: uint8 images, masks at
    the original size) and keep up to ``pixels_per_image`` labelled pixels of each image, drawn
    at random (``seed``). -> (logits (P,C) float32 at the original size, labels (P,) int64)."""
    predictor.eval()
    normalize = dataset_normalizer(loader)
    gen = torch.Generator().manual_seed(seed)
    kept_logits, kept_labels = [], []
    for images, masks in loader:
        with precision.autocast(device, amp_dtype):
            logits = predictor(normalize(images.to(device)))["out"]
        in_hw = tuple(logits.shape[-2:])
        for lg, mask in zip(logits, masks):
            restored = restore_logits(lg, in_hw, tuple(mask.shape)).flatten(1)  # (C, H0*W0)
            labels = mask.flatten().long()
            valid = torch.nonzero((labels != ignore_index) & (labels < num_classes)).flatten()
            pick = valid[torch.randperm(len(valid), generator=gen)[:pixels_per_image]]
            kept_logits.append(restored[:, pick.to(restored.device)].T.float().cpu())
            kept_labels.append(labels[pick])
    return torch.cat(kept_logits), torch.cat(kept_labels)


def fit_bias(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class biases b (C,) such that ``argmax(logits + b)`` predicts each class as often as
    ``labels`` holds it. logits (P,C), labels (P,) in [0, C).

    Damped fixed-point iteration on ``b_c += 0.5 * log(labelled_c / predicted_c)`` (at most
    ``MAX_STEP`` per iteration), until every frequency is within ``TOLERANCE``; classes absent
    from ``labels`` keep 0 (nothing says how often they should be predicted)."""
    labelled = torch.bincount(labels, minlength=num_classes)[:num_classes].double()
    present = labelled > 0
    bias = torch.zeros(num_classes, dtype=logits.dtype)
    for _ in range(MAX_ITERS):
        predicted = torch.bincount((logits + bias).argmax(1), minlength=num_classes).double()
        ratio = (labelled / predicted.clamp_min(0.5)).log()
        ratio = torch.where(present, ratio, torch.zeros_like(ratio))
        if ratio.abs().max() < math.log1p(TOLERANCE):
            break
        bias += (0.5 * ratio).clamp(-MAX_STEP, MAX_STEP).to(bias.dtype)
        bias[present] -= bias[present].mean()  # only differences count; absent classes stay 0
    return bias
