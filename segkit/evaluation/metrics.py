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
from tqdm import tqdm

from segkit import dist, precision
from segkit.evaluation.predictors import restore_logits


class ConfusionMatrix:
    """Accumulates ``mat[target, pred]`` (rows = label, cols = prediction; int64, C x C).

    Same layout as the notes' ``fast_hist(label, pred, n)``. Use: ``update`` per batch,
    ``all_reduce`` once (DDP) before ``compute``, ``reset`` per evaluation. All metrics come
    from this one matrix, never from per-batch or per-rank averages.

    ``device``: where the matrix lives; inputs are moved there. ``None``: the matrix follows the
    inputs (it moves, with its counts, to the device of the tensors given to ``update``).

    How it stays cheap: ``update`` never syncs with the host. Every target value gets a row
    (uint8 masks: 256 rows, one per value, ``ignore_index`` and out-of-range values included),
    so one bincount over ``target * C + pred`` in int32 fills the matrix with no masking pass;
    ``mat`` is the C x C view of the class rows. Out-of-range labels and predictions are found
    from those rows and from running min/max values when the pass is read (``compute``), where
    they raise the same ValueError as before.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device=None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._follow_inputs = device is None
        # target values lo..hi-1 have a row; others are clamped onto lo / hi-1 and flagged
        self._lo = min(0, self.ignore_index)
        self._hi = max(256, self.ignore_index + 1, self.num_classes)
        device = device or "cpu"
        self._full = torch.zeros(
            (self._hi - self._lo) * self.num_classes, dtype=torch.int64, device=device
        )
        # running min/max of pred and (int targets only) target; neutral values when empty
        self._range = torch.zeros(4, dtype=torch.int64, device=device)
        self._range[2:] = self._lo
        self._reduced: Tensor | None = None  # bad-value flags summed over ranks

    @property
    def mat(self) -> Tensor:
        """The (C, C) int64 matrix (a view of the class rows)."""
        n = self.num_classes
        return self._full.view(-1, n)[-self._lo : -self._lo + n]

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch. ``pred``: class ids (N,H,W) int (argmax of the logits, not the logits);
        ``target``: labels (N,H,W) int (uint8 is cheapest). Pixels with ``target ==
        ignore_index`` are not counted.

        Shapes and dtypes are checked here; label values outside ``[0, C)`` other than
        ``ignore_index`` and predicted ids outside ``[0, C)`` raise ValueError in ``compute``
        (checked once per pass, so no host sync per call).
        """
        pred, target = self._to_device(pred), self._to_device(target)
        self._check(pred, target)
        n, lo, r = self.num_classes, self._lo, self._range
        _track_range(pred, r[0], r[1])
        if target.dtype != torch.uint8:  # uint8 values all have a row: nothing to clamp
            _track_range(target, r[2], r[3])
            target = target.clamp(lo, self._hi - 1).to(torch.int32)
        # out-of-range ids are clamped (kept inside the bins) and reported by compute()
        index = pred.to(torch.int32, copy=True).clamp_(0, n - 1)
        index.add_(target, alpha=n)  # (value - lo) * n + pred: row of the value, column pred
        if lo:
            index.add_(-lo * n)
        _count(self._full, index.view(-1))
        self._reduced = None

    def all_reduce(self) -> None:
        """Sum the matrix (and the out-of-range flags) over all ranks, in place; no-op without an
        initialised process group."""
        flags = self._flags()
        dist.all_reduce_sum(self._full)
        self._reduced = dist.all_reduce_sum(flags)

    def reset(self) -> None:
        self._full.zero_()
        self._range.zero_()
        self._range[2:] = self._lo
        self._reduced = None

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

        Raises ValueError when the pass held labels outside ``[0, C)`` (other than
        ``ignore_index``) or predicted ids outside ``[0, C)``, on any rank after ``all_reduce``.
        """
        self._raise_on_bad_values()
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

    def _bad_rows(self) -> Tensor:
        """(rows,) bool: target values that are neither a class nor ignore_index."""
        values = torch.arange(self._lo, self._hi, device=self._full.device)
        return ((values < 0) | (values >= self.num_classes)) & (values != self.ignore_index)

    def _flags(self) -> Tensor:
        """[pixels with bad labels, bad predictions seen, labels beyond the rows seen] (device)."""
        n, r = self.num_classes, self._range
        rows = self._full.view(-1, n).sum(1)
        bad_labels = rows[self._bad_rows()].sum()
        bad_pred = (r[0] < 0) | (r[1] >= n)
        beyond = (r[2] < self._lo) | (r[3] > self._hi - 1)
        return torch.stack([bad_labels, bad_pred.long(), beyond.long()])

    def _raise_on_bad_values(self) -> None:
        flags = (self._reduced if self._reduced is not None else self._flags()).tolist()
        if not any(flags):
            return
        n, r = self.num_classes, self._range.tolist()
        if flags[0] or flags[2]:
            counts = self._full.view(-1, n).sum(1).cpu()
            rows = torch.nonzero(counts.gt(0) & self._bad_rows().cpu()).flatten()
            values = {v + self._lo for v in rows.tolist()}
            values |= {v for v in r[2:] if not self._lo <= v < self._hi}  # clamped extremes
            raise ValueError(
                f"target holds labels {sorted(values)[:20]} outside [0, {n}) that are not "
                f"ignore_index={self.ignore_index}; fix the masks or dataset.num_classes"
            )
        raise ValueError(
            f"pred holds class ids outside [0, {n}) (seen: min {r[0]}, max {r[1]}); "
            "pass logits.argmax(1) of a model with num_classes outputs"
        )

    def _to_device(self, t: Tensor) -> Tensor:
        if t.device == self._full.device:
            return t
        if self._follow_inputs:
            self._full, self._range = self._full.to(t.device), self._range.to(t.device)
            return t
        return t.to(self._full.device, non_blocking=True)

    def _check(self, pred: Tensor, target: Tensor) -> None:
        """Shapes and dtypes (tensor metadata: no sync)."""
        if pred.shape != target.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same "
                "shape; pass class ids (logits.argmax(1)), not logits (N,C,H,W)"
            )
        for name, t in (("pred", pred), ("target", target)):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")


def _track_range(t: Tensor, low: Tensor, high: Tensor) -> None:
    """``low = min(low, t.min())``, ``high = max(high, t.max())`` in place, on the device."""
    tmin, tmax = torch.aminmax(t)
    torch.minimum(low, tmin, out=low)
    torch.maximum(high, tmax, out=high)


def _count(bins: Tensor, index: Tensor) -> None:
    """``bins[index[i]] += 1`` for every i. CPU: bincount (fastest); CUDA: `_count_scatter`,
    since CUDA's bincount reads the max back to the host on every call."""
    if index.is_cuda:
        _count_scatter(bins, index)
    else:
        bins += torch.bincount(index, minlength=bins.numel())


def _count_scatter(bins: Tensor, index: Tensor) -> None:
    """``bins[index[i]] += 1`` with index_add_ (no host sync on any device)."""
    ones = torch.ones((), dtype=bins.dtype, device=bins.device).expand(index.numel())
    bins.index_add_(0, index, ones)


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
    normalize: Callable[[Tensor], Tensor] | None = None,
    progress: bool = False,
) -> dict:
    """Score ``model`` on ``loader`` into ``cm`` (reset first, summed across ranks at the end).

    The loader yields ``(images (N,C,h,w) uint8, masks)``; ``normalize`` turns the images into
    the model input on the device (default: ``loader.dataset.labels.normalizer()``, the
    dataset's mean/std; images pass as they are when the dataset has no ``labels``).
    ``masks`` is either a ``(N,h,w)`` tensor at the input size (training-time validation: the
    letterboxed label, padding = ignore), or a list of N ``(H0,W0)`` tensors at each image's
    original size (``eval.py``, ``dataset.val_original_size``): then each prediction is cropped
    out of the letterbox and its logits resized back before scoring (and before the loss).
    ``loss_fn`` adds ``"loss"``, the mean over images. ``on_batch`` is called with
    ``(normalised images, masks, pred)`` of every batch (e.g. to keep a few for pictures).
    ``progress``: a tqdm bar (its total honours ``limit_batches``). Nothing here waits for the
    device until the end of the pass.

    Returns ``cm.compute()`` plus ``"confusion"`` ((C,C) int64 numpy) and ``"loss"`` (or NaN).
    """
    model.eval()
    cm.reset()
    normalize = normalize or dataset_normalizer(loader)
    total = len(loader) if limit_batches is None else min(len(loader), limit_batches)
    bar = tqdm(loader, total=total, desc="val", leave=False, disable=not progress)
    loss_sum, scored = torch.zeros((), device=device, dtype=torch.float64), 0
    for i, (images, masks) in enumerate(bar):
        if i >= total:
            break
        images = normalize(images.to(device, non_blocking=True))
        with precision.autocast(device, amp_dtype):
            out = model(images)
        logits = out["out"]
        if isinstance(masks, Tensor):
            masks = masks.to(device, non_blocking=True)
            pred = _score_batch(cm, logits, masks)
            if loss_fn is not None:
                loss_sum += loss_fn(out, masks.long()).double() * images.shape[0]
                scored += images.shape[0]
        else:
            pred, losses = _score_original_size(cm, logits, masks, device, loss_fn)
            if loss_fn is not None:
                loss_sum += losses
                scored += images.shape[0]
        if on_batch is not None:
            on_batch(images, masks, pred)
    bar.close()
    cm.all_reduce()
    totals = dist.all_reduce_sum(torch.stack([loss_sum, loss_sum.new_tensor(scored)])).tolist()
    metrics = cm.compute()
    metrics["loss"] = totals[0] / totals[1] if totals[1] > 0 else math.nan
    metrics["confusion"] = cm.mat.cpu().numpy()
    return metrics


def dataset_normalizer(loader: Iterable) -> Callable[[Tensor], Tensor]:
    """The dataset's own normaliser (its mean/std), or the images as given without labels."""
    labels = getattr(getattr(loader, "dataset", None), "labels", None)
    return labels.normalizer() if labels is not None else _as_given


def _as_given(images: Tensor) -> Tensor:
    return images


def _score_batch(cm: ConfusionMatrix, logits: Tensor, masks: Tensor) -> Tensor:
    """(N,C,h,w) logits vs (N,H,W) masks at the input size -> (N,H,W) predictions, scored."""
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear")
    pred = logits.max(1).indices  # = argmax(1), faster on CPU for (N,C,H,W) logits
    cm.update(pred, masks)
    return pred


def _score_original_size(
    cm: ConfusionMatrix,
    logits: Tensor,
    masks: list[Tensor],
    device: torch.device,
    loss_fn: nn.Module | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Each (C,h,w) letterboxed logit map back to its mask's (H0,W0), argmax, scored.
    -> (the N (H0,W0) predictions, the sum of the N per-image losses (0 without loss_fn))."""
    preds, loss_sum = [], torch.zeros((), device=device, dtype=torch.float64)
    in_hw = tuple(logits.shape[-2:])
    for lg, mask in zip(logits, masks):
        mask = mask.to(device)
        restored = restore_logits(lg, in_hw, tuple(mask.shape))
        pred = restored.max(0).indices
        cm.update(pred[None], mask[None])
        if loss_fn is not None:
            loss_sum += loss_fn({"out": restored[None]}, mask[None].long()).double()
        preds.append(pred)
    return preds, loss_sum


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
