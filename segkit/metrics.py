"""Confusion-matrix segmentation metrics, and the one evaluation loop.

``ConfusionMatrix`` accumulates on the device and is summed across ranks. ``evaluate`` runs a
model over a loader into one matrix; training-time validation, ``eval.py`` and prediction
share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkit import dist
from segkit.inference import restore_logits


class ConfusionMatrix:
    """Accumulates ``mat[target, pred]`` (rows = label, cols = prediction; int64, C x C).

    Same layout as the notes' ``fast_hist(label, pred, n)``. Use: ``update`` per batch,
    ``all_reduce`` once (DDP) before ``compute``, ``reset`` per evaluation. All metrics come
    from this one matrix, never from per-batch or per-rank averages.

    ``device``: where the matrix lives; inputs are moved there. ``None``: the matrix follows the
    inputs (it moves, with its counts, to the device of the tensors given to ``update``).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device=None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._follow_inputs = device is None
        self.mat = torch.zeros(
            (self.num_classes, self.num_classes), dtype=torch.int64, device=device or "cpu"
        )

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch. ``pred``: class ids (N,H,W) int (argmax of the logits, not the logits);
        ``target``: labels (N,H,W) int. Pixels with ``target == ignore_index`` are skipped.

        Raises ValueError for label values outside ``[0, C)`` other than ``ignore_index`` and
        for predicted ids outside ``[0, C)`` (one host sync per call for these checks).
        """
        pred, target = self._to_device(pred), self._to_device(target)
        self._check(pred, target)
        # int64 before the arithmetic: target * n would overflow for uint8 / int16 inputs
        pred, target = pred.long(), target.long()
        n = self.num_classes
        valid = target != self.ignore_index
        # ignored pixels go to an extra bin n*n that is cut off: no boolean indexing (no sync)
        index = torch.where(valid, target * n + pred, n * n)
        counts = torch.bincount(index.flatten(), minlength=n * n + 1)[: n * n]
        self.mat += counts.reshape(n, n)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks (in place); no-op without an initialised process group."""
        dist.all_reduce_sum(self.mat)

    def reset(self) -> None:
        self.mat.zero_()

    def compute(self) -> dict:
        """Metrics as plain python floats / lists (JSON-serialisable; NaN may appear).

        Per class c (TP = mat[c,c], label count = row sum, prediction count = column sum):
        ``iou`` TP/(row+col-TP), ``recall`` (= per-class pixel accuracy) TP/row, ``precision``
        TP/col, ``dice`` (F1) 2TP/(row+col). ``valid[c]``: c occurs in the labels or the
        predictions. A class absent from BOTH has NaN in every per-class list and is excluded
        from all means (``miou``, ``mpa``, ``mdice``). For a valid class a 0/0 ratio (e.g. the
        recall of a class only predicted, never labelled) is 0, as in the notes'
        ``np.maximum(denominator, 1)``, so hallucinated classes lower the means.
        ``pixel_acc`` = trace/total; ``fwiou`` = sum_c (row_c/total) * iou_c. Empty matrix: NaN.
        """
        h = self.mat.detach().to("cpu", torch.float64)
        tp, rows, cols = h.diag(), h.sum(1), h.sum(0)
        valid = (rows + cols) > 0
        total = h.sum()

        def ratio(num: Tensor, den: Tensor) -> Tensor:
            out = num / den.clamp_min(1.0)  # counts: den == 0 only when num == 0
            return torch.where(valid, out, torch.full_like(out, math.nan))

        iou = ratio(tp, rows + cols - tp)
        recall, precision = ratio(tp, rows), ratio(tp, cols)
        dice = ratio(2.0 * tp, rows + cols)
        freq = rows / total if total > 0 else rows * math.nan
        return {
            "iou": iou.tolist(),
            "miou": _nanmean(iou),
            "recall": recall.tolist(),
            "precision": precision.tolist(),
            "mpa": _nanmean(recall),
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
            "dice": dice.tolist(),
            "mdice": _nanmean(dice),
            "fwiou": float((freq[valid] * iou[valid]).sum()) if total > 0 else math.nan,
            "valid": valid.tolist(),
        }

    def _to_device(self, t: Tensor) -> Tensor:
        if t.device == self.mat.device:
            return t
        if self._follow_inputs:
            self.mat = self.mat.to(t.device)
            return t
        return t.to(self.mat.device)

    def _check(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same "
                "shape; pass class ids (logits.argmax(1)), not logits (N,C,H,W)"
            )
        for name, t in (("pred", pred), ("target", target)):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
        n = self.num_classes
        bad_target = (target != self.ignore_index) & ((target < 0) | (target >= n))
        bad_pred = (pred < 0) | (pred >= n)
        if not bool(bad_target.any() | bad_pred.any()):  # the one sync of the common path
            return
        if bool(bad_target.any()):
            values = torch.unique(target[bad_target]).tolist()[:20]
            raise ValueError(
                f"target holds labels {values} outside [0, {n}) that are not "
                f"ignore_index={self.ignore_index}; fix the masks or dataset.num_classes"
            )
        values = torch.unique(pred[bad_pred]).tolist()[:20]
        raise ValueError(f"pred holds class ids {values} outside [0, {n})")


def _nanmean(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else math.nan


BatchHook = Callable[[Tensor, Tensor, Tensor], None]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    cm: ConfusionMatrix,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    loss_fn: nn.Module | None = None,
    limit_batches: int | None = None,
    on_batch: BatchHook | None = None,
) -> dict:
    """Score ``model`` on ``loader`` into ``cm`` (reset first, summed across ranks at the end).

    The loader yields ``(images (N,3,h,w), masks)``. ``masks`` is either a ``(N,h,w)`` tensor
    at the input size (training-time validation: the letterboxed label, padding = ignore), or a
    list of N ``(H0,W0)`` tensors at each image's original size (``eval.py``): then each
    prediction is cropped out of the letterbox and its logits resized back before scoring.
    ``loss_fn`` (input-size masks only) adds ``"loss"``, the mean over images. ``on_batch`` is
    called with ``(images, masks, pred)`` of every batch (e.g. to keep a few for pictures).

    Returns ``cm.compute()`` plus ``"confusion"`` ((C,C) int64 numpy) and ``"loss"`` (or NaN).
    """
    model.eval()
    cm.reset()
    loss_sum = torch.zeros(2, device=device, dtype=torch.float64)  # [sum of losses, images]
    for i, (images, masks) in enumerate(loader):
        if limit_batches is not None and i >= limit_batches:
            break
        images = images.to(device, non_blocking=True)
        with dist.autocast(device, amp_dtype):
            out = model(images)
        logits = out["out"]
        if isinstance(masks, Tensor):
            masks = masks.to(device, non_blocking=True)
            pred = _score_batch(cm, logits, masks)
            if loss_fn is not None:
                n = images.shape[0]
                loss_sum += torch.stack([loss_fn(out, masks).double() * n, loss_sum.new_tensor(n)])
        else:
            pred = _score_original_size(cm, logits, masks, device)
        if on_batch is not None:
            on_batch(images, masks, pred)
    cm.all_reduce()
    dist.all_reduce_sum(loss_sum)
    metrics = cm.compute()
    metrics["loss"] = float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else math.nan
    metrics["confusion"] = cm.mat.cpu().numpy()
    return metrics


def _score_batch(cm: ConfusionMatrix, logits: Tensor, masks: Tensor) -> Tensor:
    """(N,C,h,w) logits vs (N,H,W) masks at the input size -> (N,H,W) predictions, scored."""
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear")
    pred = logits.argmax(1)
    cm.update(pred, masks)
    return pred


def _score_original_size(
    cm: ConfusionMatrix, logits: Tensor, masks: list[Tensor], device: torch.device
) -> list[Tensor]:
    """Each (C,h,w) letterboxed logit map back to its mask's (H0,W0), argmax, scored."""
    preds = []
    in_hw = tuple(logits.shape[-2:])
    for lg, mask in zip(logits, masks):
        mask = mask.to(device)
        pred = restore_logits(lg, in_hw, tuple(mask.shape)).argmax(0)
        cm.update(pred[None], mask[None])
        preds.append(pred)
    return preds


def format_table(metrics: dict, class_names: list[str]) -> str:
    """Per-class IoU / recall / precision / Dice table followed by the means (percent)."""

    def pct(v: float) -> str:
        return "   -  " if v is None or math.isnan(v) else f"{100 * v:6.2f}"

    width = max(8, *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}    IoU  Recall  Precision   Dice"]
    for i, name in enumerate(class_names):
        lines.append(
            f"{name:<{width}} {pct(metrics['iou'][i])}  {pct(metrics['recall'][i])}     "
            f"{pct(metrics['precision'][i])} {pct(metrics['dice'][i])}"
        )
    lines.append(
        f"mIoU {pct(metrics['miou'])}  mPA {pct(metrics['mpa'])}  pixel acc "
        f"{pct(metrics['pixel_acc'])}  mDice {pct(metrics['mdice'])}  FWIoU {pct(metrics['fwiou'])}"
    )
    return "\n".join(lines)
