"""What the ONNX export tests share: labels, the export size and the other sizes the parity check
runs at, real pictures, and random BatchNorm statistics."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from segkit.data.base import LabelSpace
from segkit.data.demo import make_demo_sample

LABELS = LabelSpace.from_dict(
    {
        "num_classes": 3,
        "ignore_index": 255,
        "class_names": ["a", "b", "c"],
        "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
)


EXPORT_HW = (64, 64)


SIZES = [EXPORT_HW, (50, 75), (37, 29), (96, 80)]  # the export size, then others


def demo_images(n: int = 2) -> list[np.ndarray]:
    """Real pictures (the demo generator's), not noise: logits have realistic ranges."""
    return [make_demo_sample(i, (90, 120))[0] for i in range(n)]


def with_statistics(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics, so that a wrong graph cannot hide behind identity BNs."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()
