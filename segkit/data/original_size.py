"""Validation samples paired with their masks at the original resolution (for ``eval.py``)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class OriginalSizeMasks(Dataset):
    """Wraps a dataset built with ``train=False``: item i is ``(image (C,h,w) uint8 as the model
    sees it (letterboxed, normalised on the device), mask (H0,W0) uint8 ids at the image's
    original size)``, both of the sample ``dataset[i]`` is (`original_size_item`: with
    ``on_bad_sample="skip"`` a bad sample is replaced as there). ``labels`` is the wrapped
    dataset's (its mean/std normalise the batch).

    Batch it with :func:`collate_original`, which keeps the masks as a list (sizes differ).
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    @property
    def labels(self):
        return self.dataset.labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # one read of one sample; with on_bad_sample=skip, the sample the dataset puts at i
        return self.dataset.original_size_item(i)


def collate_original(batch: list[tuple[torch.Tensor, torch.Tensor]]):
    """-> (images (N,C,h,w) uint8, [mask (H0,W0) uint8, ...])."""
    images, masks = zip(*batch)
    return torch.stack(images), list(masks)


def original_size_loader(
    dataset, batch_size: int, num_workers: int, indices: list[int] | None = None
) -> DataLoader:
    """A DataLoader over ``OriginalSizeMasks(dataset)`` in order (what eval.py and the
    calibration score), or over its items ``indices`` in that order: batches of
    ``(images (N,C,h,w) uint8, [mask (H0,W0) uint8, ...])``."""
    return DataLoader(
        OriginalSizeMasks(dataset),
        batch_size=batch_size,
        num_workers=num_workers,
        sampler=indices,
        collate_fn=collate_original,
    )
