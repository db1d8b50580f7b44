"""Shared machinery of the segmentation losses: output-dict handling, resizing, label checks.

Conventions (see the repo contracts):

* logits: float ``(N, C, H, W)``, no softmax applied;
* target: int64 ``(N, H, W)``, values in ``[0, C)`` or ``ignore_index``;
* model output: a plain logits Tensor, or ``{"out": logits, "aux": [logits, ...]}``; the aux
  heads only exist in training mode, and may have another spatial size than the label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_to_target(logits: Tensor, target: Tensor) -> Tensor:
    """Bilinearly resize ``(N, C, h, w)`` logits to the label's ``(H, W)``.

    Resizes when EITHER dimension differs (the notes test ``h != ht and w != wt``, which skips
    e.g. a 1-row mismatch and then fails, or silently broadcasts, inside the loss). Resized
    logits are float32 (low-precision logits are cast before the resize): the losses compute in
    float32 anyway, and on the CPU a bf16 resize + cross-entropy is slower than casting the small
    map first.
    """
    size = tuple(target.shape[-2:])
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def check_target(target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise ValueError when a label is outside ``[0, num_classes)`` and is not ``ignore_index``.

    Checked before any loss kernel: on CUDA an out-of-range class index would otherwise end as
    an opaque device-side assert, and the notes silently mapped such values to "ignore".
    Costs one device->host sync per call.
    """
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(
            f"target must be an integer (int64) label tensor, got dtype {target.dtype}"
        )
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()
        raise ValueError(
            f"target holds label values {values[:20]} outside [0, {num_classes}) that are not "
            f"ignore_index={ignore_index}; fix the masks (or dataset.num_classes / "
            f"dataset.ignore_index) so every pixel is a class id or the ignore index"
        )


def class_weights_buffer(class_weights: Sequence[float] | Tensor | None) -> Tensor | None:
    """Validate ``loss.class_weights`` and turn it into a float32 1-D tensor (or None)."""
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        raise ValueError(
            f"loss.class_weights={class_weights!r}: a string is not accepted here; 'auto' must be "
            "replaced by run.py with a list of floats before the loss is built"
        )
    weights = torch.as_tensor(
        list(class_weights) if not isinstance(class_weights, Tensor) else class_weights,
        dtype=torch.float32,
    )
    if weights.dim() != 1 or weights.numel() == 0:
        raise ValueError(f"loss.class_weights must be a flat list of floats, got {class_weights}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"loss.class_weights must be finite and >= 0, got {weights.tolist()}")
    return weights


def _parse_aux_weights(aux_weights: float | Sequence[float]) -> float | tuple[float, ...]:
    if isinstance(aux_weights, int | float) and not isinstance(aux_weights, bool):
        return float(aux_weights)
    if isinstance(aux_weights, Sequence) and not isinstance(aux_weights, str):
        return tuple(float(w) for w in aux_weights)
    raise ValueError(f"loss.aux_weights must be a float or a list of floats, got {aux_weights!r}")


class SegLoss(nn.Module):
    """Base class: applies :meth:`pixel_loss` to the main head and the weighted aux heads.

    ``forward(outputs, target)`` returns ``pixel_loss(out) + sum_i w_i * pixel_loss(aux_i)``
    (a scalar). ``aux_weights`` is a float used for every aux head, or a list with one weight
    per aux head. When the output has no aux heads (eval mode) the weights are not used.

    Subclasses implement ``pixel_loss(logits (N,C,H,W), target (N,H,W) int64) -> scalar``; the
    logits they receive already match the label size, are at least float32 (fp16/bf16 logits
    from autocast are upcast so softmax/log stay accurate), and the labels are validated.
    """

    def __init__(self, ignore_index: int = 255, aux_weights: float | Sequence[float] = 0.4):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.aux_weights = _parse_aux_weights(aux_weights)

    def forward(self, outputs: Mapping[str, Tensor] | Tensor, target: Tensor) -> Tensor:
        main, aux = self._split_outputs(outputs)
        if target.dim() != 3 or main.shape[0] != target.shape[0]:
            raise ValueError(
                f"expected logits (N,C,H,W) and target (N,H,W) with the same N, got "
                f"{tuple(main.shape)} and {tuple(target.shape)}"
            )
        check_target(target, main.shape[1], self.ignore_index)
        target = target.long()  # torch's CE kernels take int64 only; uint8/int32 masks are fine
        total = self._head_loss(main, target)
        for weight, logits in zip(self._aux_weight_list(len(aux)), aux):
            total = total + weight * self._head_loss(logits, target)
        return total

    def pixel_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def _head_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return self.pixel_loss(resize_to_target(logits, target), target)

    @staticmethod
    def _split_outputs(outputs: Mapping[str, Tensor] | Tensor) -> tuple[Tensor, list[Tensor]]:
        if isinstance(outputs, Tensor):
            main, aux = outputs, []
        elif isinstance(outputs, Mapping) and "out" in outputs:
            main, aux = outputs["out"], list(outputs.get("aux") or [])
        else:
            raise ValueError(
                "loss input must be a logits Tensor or a dict with key 'out' (and optional 'aux'), "
                f"got {type(outputs).__name__} with keys {list(getattr(outputs, 'keys', list)())}"
            )
        for t in [main, *aux]:
            if t.dim() != 4:
                raise ValueError(f"logits must be (N,C,H,W), got shape {tuple(t.shape)}")
        return main, aux

    def _aux_weight_list(self, num_aux: int) -> tuple[float, ...]:
        if num_aux == 0:
            return ()
        if isinstance(self.aux_weights, float):
            return (self.aux_weights,) * num_aux
        if len(self.aux_weights) != num_aux:
            raise ValueError(
                f"loss.aux_weights has {len(self.aux_weights)} entries {list(self.aux_weights)} "
                f"but the model returned {num_aux} aux heads; give one weight per aux head or a "
                "single float for all"
            )
        return self.aux_weights

    def _weights_for(self, logits: Tensor) -> Tensor | None:
        """The ``class_weights`` buffer checked against C and cast to the logits dtype."""
        weights = getattr(self, "class_weights", None)
        if weights is None:
            return None
        if weights.numel() != logits.shape[1]:
            raise ValueError(
                f"loss.class_weights has {weights.numel()} entries but the logits have "
                f"{logits.shape[1]} classes; give one weight per class (dataset.num_classes)"
            )
        return weights.to(logits.dtype)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, aux_weights={self.aux_weights}"
