"""SegmentationDataset: (image path, mask path) pairs -> uint8 tensors; its LabelSpace.

Sample i of epoch e draws all its randomness from np.random.default_rng([seed, e, i]), so the
augmentation does not depend on the number of workers or ranks, and a resumed run is exact.
Batches need no special collate: torch's default one stacks samples into (images (N,C,H,W)
uint8, masks (N,H,W) uint8), one byte per value through the workers and the host-to-device
copy; the model input is made on the device (`segkit.data.transforms.Normalize` with the
LabelSpace mean/std) and losses get the masks as int64 there.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.arguments import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Channels,
    check_class_names,
    check_ids,
    check_input_shape,
    check_mean_std,
    check_palette,
)
from segkit.data.augment import Context, Pipeline, build_pipelines, dry_run
from segkit.data.io import encode_mask, read_image, read_mask
from segkit.data.transforms import Normalize, to_tensors
from segkit.errors import DataError

log = logging.getLogger("segkit.data")

BAD_SAMPLE_MODES = ("raise", "skip")


@dataclass(frozen=True)
class LabelSpace:
    """What a model trained on a dataset predicts and how its inputs were normalised.

    num_classes ids 0..num_classes-1, ignore_index (never a class id), one name and one
    [r, g, b] colour per class, and the per-channel mean / std applied to images scaled to
    [0, 1] (3 values for RGB input, 1 for gray: ``in_channels``). `to_dict` / `from_dict` give a
    plain-Python form (for checkpoints and YAML).
    """

    num_classes: int
    ignore_index: int
    class_names: list[str]
    palette: list[list[int]]
    mean: Channels
    std: Channels

    @property
    def in_channels(self) -> int:
        """Channels of the model input (1 gray, 3 RGB)."""
        return len(self.mean)

    def normalizer(self, *, channels_last: bool = False) -> Normalize:
        """The device-side step from a uint8 batch to the model input."""
        return Normalize(self.mean, self.std, channels_last=channels_last)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python only (ints, floats, strings, lists): safe for YAML, JSON, torch.save."""
        return {
            "num_classes": int(self.num_classes),
            "ignore_index": int(self.ignore_index),
            "class_names": [str(n) for n in self.class_names],
            "palette": [[int(c) for c in colour] for colour in self.palette],
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSpace:
        """Inverse of `to_dict` (an OmegaConf mapping works too); values are validated."""
        num_classes, ignore_index = int(d["num_classes"]), int(d["ignore_index"])
        check_ids(num_classes, ignore_index)
        names = check_class_names(d["class_names"], num_classes)
        mean, std = check_mean_std(d["mean"], d["std"])
        return cls(
            num_classes, ignore_index, names, check_palette(d["palette"], num_classes), mean, std
        )


class SegmentationDataset(Dataset):
    """Pairs of (image path, mask path) -> (image (C,H,W) uint8, mask (H,W) uint8).

    train=True: the ``augment["train"]`` steps (`segkit.data.augment`; the default: rare-class
    copy-paste, random aspect/scale/flip/crop, HSV jitter), train=False: the
    ``augment["val"]`` steps (the default: letterbox). Both lists are built and checked at
    construction, whichever split this is. Images are
    RGB (in_channels=3) or gray (in_channels=1, a colour file converted), not normalised:
    `labels.normalizer()` does (x/255 - mean)/std on the device. Masks hold ids in
    [0, num_classes) or ignore_index (also used for padding). A sample that cannot be loaded
    raises DataError naming index, files and cause, or with on_bad_sample="skip" is replaced
    by the next loadable sample.
    `split_file` is the split list the samples come from (VOCDataset), None when there is none.
    reduce_zero_label (ADE20K, MMSegmentation's key): raw 0 ("other") is ignored and every other
    raw value v is class v - 1, before label_map (raw 255 stays ignored).
    """

    split_file: Path | None = None

    def __init__(
        self,
        files: Iterable[tuple[str, str]],
        *,
        train: bool,
        num_classes: int,
        input_shape: Sequence[int],
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        augment: Mapping | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        in_channels: int = 3,
        label_map: Mapping | None = None,
        reduce_zero_label: bool = False,
        color_map: Mapping | None = None,
        seed: int = 0,
        on_bad_sample: str = "raise",
        max_bad_fraction: float = 0.1,
    ):
        super().__init__()
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        check_ids(self.num_classes, self.ignore_index)
        self.train = bool(train)
        self.input_shape = check_input_shape(input_shape)
        self.class_names = check_class_names(class_names, self.num_classes)
        self.palette = check_palette(palette, self.num_classes)
        self.pipelines: dict[str, Pipeline] = build_pipelines(
            augment, self.class_names, self.ignore_index
        )
        self.in_channels = int(in_channels)
        self.mean, self.std = check_mean_std(mean, std, self.in_channels)
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        if reduce_zero_label:
            self.label_map = reduce_zero(self.label_map, self.ignore_index)
        self.color_map = {int(k): _plain(v) for k, v in (color_map or {}).items()}
        self.seed = int(seed)
        # shared memory: DataLoader workers (persistent ones too) see set_epoch() of the parent
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        if on_bad_sample not in BAD_SAMPLE_MODES:
            raise DataError(f"dataset.on_bad_sample must be one of {BAD_SAMPLE_MODES}")
        self.on_bad_sample, self.max_bad_fraction = on_bad_sample, float(max_bad_fraction)
        self.files = [(str(a), str(b)) for a, b in files]
        self._bad: set[int] = set()  # bad indices seen by this process (skip mode)
        self._drop_missing_files()

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        mode = "train" if self.train else "val"
        return f"{type(self).__name__}({len(self)} samples, {mode}, {self.num_classes} classes)"

    @property
    def labels(self) -> LabelSpace:
        """The label space: classes, names, colours and the image normalisation."""
        palette = [list(colour) for colour in self.palette]
        names = list(self.class_names)
        return LabelSpace(self.num_classes, self.ignore_index, names, palette, self.mean, self.std)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream: sample i uses default_rng([seed, epoch, i]). Call it
        before iterating the loader; workers (also persistent ones) read the shared value."""
        self._epoch.fill_(int(epoch))

    def remove_samples(self, indices: Iterable[int]) -> list[tuple[str, str]]:
        """Drop samples by index (e.g. found bad by a dataset check); returns the removed pairs."""
        drop = set(int(i) for i in indices)
        removed = [f for i, f in enumerate(self.files) if i in drop]
        self.files = [f for i, f in enumerate(self.files) if i not in drop]
        self._bad.clear()
        return removed

    def _drop_missing_files(self) -> None:
        """Missing files are found up front (cheap stat) instead of mid-epoch."""
        if not self.files:
            raise DataError(f"{type(self).__name__}: the dataset has no samples")
        exists = os.path.isfile
        missing = [i for i, (a, b) in enumerate(self.files) if not (exists(a) and exists(b))]
        if not missing:
            return
        state = {True: "ok", False: "MISSING"}
        shown = "; ".join(
            f"{a} {state[exists(a)]}, {b} {state[exists(b)]}"
            for a, b in (self.files[i] for i in missing[:5])
        )
        message = f"{len(missing)} of {len(self.files)} samples have missing files: {shown}"
        if self.on_bad_sample == "raise" or len(missing) > self.max_bad_fraction * len(self.files):
            raise DataError(
                f"{message}. Fix the files or the split list, or set dataset.on_bad_sample=skip "
                f"(drops up to dataset.max_bad_fraction={self.max_bad_fraction} of the samples)"
            )
        log.warning("%s; skipping them (dataset.on_bad_sample=skip)", message)
        self.remove_samples(missing)

    def load_raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Read + encode sample i without resizing: ((H,W,C) uint8 RGB or gray, (H,W) uint8
        ids)."""
        image_path, mask_path = self.files[i]
        image = read_image(image_path, self.in_channels)
        raw = read_mask(mask_path)
        if image.shape[:2] != raw.shape[:2]:
            raise DataError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but mask "
                f"{mask_path} is {raw.shape[1]}x{raw.shape[0]}; they must be the same size "
                "(check the pairing, or an EXIF rotation on only one of them)"
            )
        return image, self.encode(raw, mask_path)

    def encode(self, raw: np.ndarray, path: str = "") -> np.ndarray:
        """Raw mask as read -> (H,W) uint8 class ids with this dataset's label/colour map;
        raises DataError naming ``path`` for values it cannot map."""
        return encode_mask(
            raw,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            label_map=self.label_map,
            color_map=self.color_map,
            path=path,
        )

    @property
    def pipeline(self) -> Pipeline:
        """The steps this split runs: ``dataset.augment.train`` or ``.val``."""
        return self.pipelines["train" if self.train else "val"]

    def transform(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, index: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw pair -> input_shape pair through this split's pipeline; ``index`` (the sample's)
        lets copy-paste draw another sample as donor."""
        pick = None
        if self.train and index >= 0 and len(self.files) > 1:
            pick = functools.partial(self.donor, index)
        ctx = Context(rng, self.input_shape, self.ignore_index, pick)
        return self.pipeline(image, mask, ctx)

    def check_pipelines(self) -> None:
        """Run both lists on generated pairs (`segkit.data.augment.dry_run`): DataError naming
        the step that breaks a pair. Reads no file."""
        dry_run(
            self.pipelines,
            self.input_shape,
            channels=self.in_channels,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
        )

    def donor(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        """Copy-paste's donor for sample i: another sample drawn uniformly, raw; None when it
        cannot be read in skip mode (it is reported when it is loaded as a sample itself)."""
        j = int(rng.integers(len(self.files) - 1))
        j += j >= i  # any sample but i
        try:
            return self.load_raw(j)
        except (DataError, OSError) as e:
            if self.on_bad_sample == "raise":
                raise DataError(
                    f"copy-paste donor sample {j} ({', '.join(self.files[j])}) of sample {i}: "
                    f"{e}. Fix or remove it, or set dataset.on_bad_sample=skip"
                ) from e
            return None

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """load_raw; its errors name the sample."""
        try:
            return self.load_raw(i)
        except (DataError, OSError) as e:
            image_path, mask_path = self.files[i]
            raise DataError(
                f"bad sample {i} (image {image_path}, mask {mask_path}): {e}. Fix or remove it, "
                "or set dataset.on_bad_sample=skip"
            ) from e

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """load_raw + transform with the (seed, epoch, i) stream; errors name the sample."""
        image, mask = self._read(i)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return self.transform(image, mask, rng, i)

    def _load_original(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample i read once: (image (C,h,w) uint8 as `_load` makes it, mask (H0,W0) ids)."""
        image, mask = self._read(i)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        boxed, boxed_mask = self.transform(image, mask, rng, i)
        return to_tensors(boxed, boxed_mask)[0], torch.from_numpy(mask)

    def original_size_item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image (C,h,w) uint8 as ``self[index]`` gives it, mask (H0,W0) uint8 ids at the
        image's original size) of the same sample: for ``on_bad_sample="skip"`` the one that
        replaces a bad sample in ``self[index]`` too (the next loadable one)."""
        if self.on_bad_sample == "skip":
            return self._load_or_skip(index, self._load_original)
        return self._load_original(index)

    def _load_or_skip(self, index: int, load: Callable[[int], Any] | None = None) -> Any:
        """Skip mode: ``load`` (default `_load`) of the first loadable sample from index on
        (wrapping), deterministic."""
        load = load or self._load
        n = len(self.files)
        for k in range(n):
            i = (index + k) % n
            try:
                return load(i)
            except DataError as e:
                if i not in self._bad:  # warn once per sample and process, not every epoch
                    log.warning("skipping %s", e)
                self._bad.add(i)
                if len(self._bad) > self.max_bad_fraction * n:
                    raise DataError(
                        f"{len(self._bad)} of {n} samples failed to load, more than "
                        f"dataset.max_bad_fraction={self.max_bad_fraction}; last error: {e}"
                    ) from e
        raise DataError("no sample of the dataset could be loaded")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image (C,H,W) uint8, mask (H,W) uint8 ids or ignore_index)."""
        if self.on_bad_sample == "skip":
            image, mask = self._load_or_skip(index)
        else:
            image, mask = self._load(index)
        return to_tensors(image, mask)


def reduce_zero(label_map: Mapping[int, int], ignore_index: int) -> dict[int, int]:
    """The full raw -> id table of ``reduce_zero_label`` followed by ``label_map``: raw 0 and
    255 -> ignore_index, raw v -> label_map.get(v - 1, v - 1). One lookup table, so the dataset
    check explains values with the same map the loader uses."""
    table = {raw: label_map.get(raw - 1, raw - 1) for raw in range(1, 255)}
    return {0: ignore_index, **table, 255: ignore_index}


def _plain(value):
    """OmegaConf lists / tuples -> nested Python lists (for color_map values)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return value
    return [_plain(v) for v in value]
