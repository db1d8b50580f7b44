"""Any ``torchvision.transforms.v2`` transform as an augmentation step, and the check that it
leaves masks intact.

The pair crosses as ``tv_tensors.Image`` (C,H,W) uint8 and ``tv_tensors.Mask`` (H,W) uint8, so
torchvision moves the mask with nearest-neighbour and passes it through colour transforms. Its
random numbers come from the sample's stream (a torch generator seeded from it), so a seed gives
the same samples in any worker and after a resume.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segkit.data.geometric_steps import Pair

PROBE_IDS = (3, 40, 90, 200)  # far apart: an interpolated mask shows values between them
PROBE_DRAWS = 8


def is_torchvision_transform(cls: Any) -> bool:
    return inspect.isclass(cls) and issubclass(cls, v2.Transform)


def mask_fill(cls: type, kwargs: dict[str, Any], ignore_index: int) -> dict[str, Any]:
    """``kwargs`` with ``fill`` split per type where ``cls`` takes one: the image keeps the
    given value (torchvision's default 0), the mask gets ignore_index (torchvision would pad
    it with 0, a class id)."""
    if "fill" not in inspect.signature(cls).parameters or isinstance(kwargs.get("fill"), dict):
        return kwargs
    return {
        **kwargs,
        "fill": {tv_tensors.Image: kwargs.get("fill", 0), tv_tensors.Mask: ignore_index},
    }


class TorchvisionStep:
    """A ``torchvision.transforms.v2`` transform applied to image and mask together."""

    def __init__(self, transform: v2.Transform) -> None:
        self.transform = transform

    def __repr__(self) -> str:
        return f"TorchvisionStep({self.transform!r})"

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx) -> Pair:
        seed = int(ctx.rng.integers(2**63))
        with torch.random.fork_rng(devices=[]):  # the global torch stream stays untouched
            torch.manual_seed(seed)
            out_image, out_mask = self.transform(*_to_tv(image, mask))
        return _from_tv(out_image, out_mask)


def _to_tv(image: np.ndarray, mask: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return tv_tensors.Image(chw), tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))


def _from_tv(image: torch.Tensor, mask: torch.Tensor) -> Pair:
    if image.dtype != torch.uint8 or mask.dtype != torch.uint8 or mask.ndim != 2:
        raise ValueError(
            f"it returned an image of {image.dtype} and a mask of {mask.dtype} {tuple(mask.shape)}"
            "; steps keep uint8 pictures (dataset.mean/std normalise on the device)"
        )
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy()), mask.numpy()


def mask_problem(step: TorchvisionStep, ignore_index: int) -> str | None:
    """Why ``step`` would corrupt masks, or None: it is run on a probe pair whose mask holds
    ids far apart (and ignore_index); an output mask with another value was interpolated or
    filled with a class id, one of another type or dtype is not a mask any more."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = np.full((48, 64), ignore_index, np.uint8)
    for k, value in enumerate(PROBE_IDS):
        mask[4 + 10 * k : 14 + 10 * k, 4 + 12 * k : 30 + 8 * k] = value
    allowed = set(PROBE_IDS) | {ignore_index}
    ctx = _ProbeContext(rng, ignore_index)
    for _ in range(PROBE_DRAWS):
        try:
            _, out = step(image, mask, ctx)
        except (TypeError, ValueError, RuntimeError) as e:
            return f"it fails on an image/mask pair ({type(e).__name__}: {e})"
        new = sorted(set(np.unique(out).tolist()) - allowed)
        if new:
            return (
                f"it turns mask ids {sorted(PROBE_IDS)} into new values {new[:6]} (it interpolates "
                "the mask or fills it with a class id); masks take nearest-neighbour only"
            )
    return None


class _ProbeContext:
    """What a step reads from a Context, for the probe."""

    def __init__(self, rng: np.random.Generator, ignore_index: int) -> None:
        self.rng, self.ignore_index, self.out_hw, self.donor = rng, ignore_index, (48, 64), None
