"""From model outputs to predictions at the size of the user's image.

Training and validation feed letterboxed inputs (the image scaled to fit ``input_shape`` and
padded); the functions here undo that for scoring at the original resolution and for
prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segkit.data.transforms import letterbox_geometry


def restore_logits(
    logits: torch.Tensor, in_hw: tuple[int, int], orig_hw: tuple[int, int]
) -> torch.Tensor:
    """(C,h,w) logits of a letterboxed input of size ``in_hw`` -> (C,H0,W0) float logits at
    the original size ``orig_hw``: the padding is cropped away, then bilinear resize."""
    nh, nw, top, left = letterbox_geometry(orig_hw, in_hw)
    crop = logits[:, top : top + nh, left : left + nw]
    return F.interpolate(crop[None].float(), size=orig_hw, mode="bilinear", align_corners=False)[0]
