"""Confusion-matrix segmentation metrics, accumulated on the device and summed across ranks."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


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
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

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
