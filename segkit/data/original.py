"""Validation samples paired with their masks at the original resolution (for ``eval.py``)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class OriginalSizeMasks(Dataset):
    """Wraps a dataset built with ``train=False``: item i is ``(image (3,h,w) float32 as the
    model sees it (letterboxed), mask (H0,W0) uint8 ids at the image's original size)``.

    Batch it with :func:`collate_original`, which keeps the masks as a list (sizes differ).
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self.dataset[i]
        _, mask = self.dataset.load_raw(i)
        return image, torch.from_numpy(mask)


def collate_original(batch: list[tuple[torch.Tensor, torch.Tensor]]):
    """-> (images (N,3,h,w), [mask (H0,W0) uint8, ...])."""
    images, masks = zip(*batch)
    return torch.stack(images), list(masks)
