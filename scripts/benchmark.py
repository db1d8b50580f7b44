"""Throughput of the data pipeline, the metrics, training and validation, side by side with
the user's notes (bubbliiiing/unet-pytorch), in one run on this machine.

    python scripts/benchmark.py                       # numbers: results/performance.md
    python scripts/benchmark.py --models unet bisenetv2 stdc1 --train-size 512 --out b.json

Generates its own data (64 JPEGs of 500x375, 21-class palette PNG masks, VOC layout) in a temp
folder. A measure with a counterpart in the notes runs both, repeats interleaved, and reports
segkit / notes (higher is better for rates):

1. data: the training augmentation + collate at each ``--sizes`` on one core (one torch and one
   OpenCV thread, in this process): the default list (``dataset/augment=default``, the notes'
   augmentation) and the heavier ``dataset/augment=strong`` (+ vertical flip, rotation,
   photometric distortion), both against the notes' pipeline, interleaved; through DataLoaders
   with ``--workers`` workers; bytes of one collated batch of 8;
2. confusion-matrix update calls/s at 512x512, 21 classes, one core, vs the notes' fast_hist;
3. training images/s per ``--models`` config: the Trainer on in-memory batches (the model's
   ceiling) and with the real loader (``segkit.run.build_loaders``); the ratio is the loop's
   efficiency; with ``--channels-last compare`` also the in-memory rate with channels-last
   memory format vs contiguous tensors (``trainer.channels_last`` true vs false), interleaved;
   with ``--compare-precision P`` also the in-memory rate with ``trainer.precision=P`` (e.g.
   bf16 against fp32 on a CPU: native bf16 or emulated), interleaved;
4. validation images/s (``segkit.evaluation.metrics.evaluate``) and its share of time outside
   the model forward, vs the notes' validation loop (forward + CE loss + f_score) on the same model;
5. peak host memory (main process + DataLoader workers, from /proc) and on CUDA the peak
   allocated device memory.

``--memory`` instead measures what a batch costs in memory, to choose
``loader.batch_size`` and ``trainer.accumulate_grad_batches`` (docs/scaling.md): for
``--memory-model`` at ``--memory-size``, per ``--memory-batches`` batch size, with and without
``trainer.activation_checkpointing``, one training step of the Trainer: the activations autograd
keeps for backward (any device) and on CUDA the peak allocated memory (a batch that does not
fit is reported as such)::

    python scripts/benchmark.py --memory --memory-model unet_resnet50 --memory-size 512 \
        --memory-batches 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from itertools import count
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from segkit.data.arguments import voc_palette
from segkit.evaluation.metrics import ConfusionMatrix, evaluate

NUM_CLASSES = 21
TARGETS = {
    "augment_512": ">= 7x",
    "augment_256": ">= 3.5x",
    "augment-strong_512": ">= 4x",
    "batch_mb": "<= 10 MB",
    "confusion": ">= 1.5x",
    "val": ">= 1x, <= 5% outside",
    "efficiency": ">= 0.97",
}


# =========================================================================== the notes' code
# A faithful copy of the notes' pipeline (UnetDataset.get_random_data, unet_dataset_collate,
# fast_hist, CE_Loss, f_score); only formatting and names of unused variables differ.
def cvt_color(image):
    if len(np.shape(image)) == 3 and np.shape(image)[2] == 3:
        return image
    return image.convert("RGB")


def preprocess_input(image):
    image /= 255.0
    return image


class NotesUnetDataset(Dataset):
    def __init__(self, annotation_lines, input_shape, num_classes, train, dataset_path):
        self.annotation_lines, self.length = annotation_lines, len(annotation_lines)
        self.input_shape, self.num_classes = input_shape, num_classes
        self.train, self.dataset_path = train, dataset_path

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        name = self.annotation_lines[index].split()[0]
        jpg = Image.open(os.path.join(self.dataset_path, "VOC2007/JPEGImages", name + ".jpg"))
        png = Image.open(
            os.path.join(self.dataset_path, "VOC2007/SegmentationClass", name + ".png")
        )
        jpg, png = self.get_random_data(jpg, png, self.input_shape, random=self.train)
        jpg = np.transpose(preprocess_input(np.array(jpg, np.float64)), [2, 0, 1])
        png = np.array(png)
        png[png >= self.num_classes] = self.num_classes
        seg_labels = np.eye(self.num_classes + 1)[png.reshape([-1])]
        h, w = int(self.input_shape[0]), int(self.input_shape[1])
        return jpg, png, seg_labels.reshape((h, w, self.num_classes + 1))

    def rand(self, a=0, b=1):
        return np.random.rand() * (b - a) + a

    def get_random_data(
        self, image, label, input_shape, jitter=0.3, hue=0.1, sat=0.7, val=0.3, random=True
    ):
        image = cvt_color(image)
        label = Image.fromarray(np.array(label))
        iw, ih = image.size
        h, w = input_shape
        if not random:
            scale = min(w / iw, h / ih)
            nw, nh = int(iw * scale), int(ih * scale)
            image = image.resize((nw, nh), Image.BICUBIC)
            new_image = Image.new("RGB", [w, h], (128, 128, 128))
            new_image.paste(image, ((w - nw) // 2, (h - nh) // 2))
            label = label.resize((nw, nh), Image.NEAREST)
            new_label = Image.new("L", [w, h], (0))
            new_label.paste(label, ((w - nw) // 2, (h - nh) // 2))
            return new_image, new_label
        new_ar = iw / ih * self.rand(1 - jitter, 1 + jitter) / self.rand(1 - jitter, 1 + jitter)
        scale = self.rand(0.25, 2)
        if new_ar < 1:
            nh = int(scale * h)
            nw = int(nh * new_ar)
        else:
            nw = int(scale * w)
            nh = int(nw / new_ar)
        image = image.resize((nw, nh), Image.BICUBIC)
        label = label.resize((nw, nh), Image.NEAREST)
        if self.rand() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            label = label.transpose(Image.FLIP_LEFT_RIGHT)
        dx, dy = int(self.rand(0, w - nw)), int(self.rand(0, h - nh))
        new_image = Image.new("RGB", (w, h), (128, 128, 128))
        new_label = Image.new("L", (w, h), (0))
        new_image.paste(image, (dx, dy))
        new_label.paste(label, (dx, dy))
        image, label = new_image, new_label
        image_data = np.array(image, np.uint8)
        r = np.random.uniform(-1, 1, 3) * [hue, sat, val] + 1
        hue, sat, val = cv2.split(cv2.cvtColor(image_data, cv2.COLOR_RGB2HSV))
        dtype = image_data.dtype
        x = np.arange(0, 256, dtype=r.dtype)
        lut_hue = ((x * r[0]) % 180).astype(dtype)
        lut_sat = np.clip(x * r[1], 0, 255).astype(dtype)
        lut_val = np.clip(x * r[2], 0, 255).astype(dtype)
        image_data = cv2.merge(
            (cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val))
        )
        return cv2.cvtColor(image_data, cv2.COLOR_HSV2RGB), label


def unet_dataset_collate(batch):
    images, pngs, seg_labels = zip(*batch)
    images = torch.from_numpy(np.array(images)).type(torch.FloatTensor)
    pngs = torch.from_numpy(np.array(pngs)).long()
    seg_labels = torch.from_numpy(np.array(seg_labels)).type(torch.FloatTensor)
    return images, pngs, seg_labels


def fast_hist(a, b, n):
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n**2).reshape(n, n)


def ce_loss(inputs, target, cls_weights, num_classes=21):
    n, c, h, w = inputs.size()
    nt, ht, wt = target.size()
    if h != ht and w != wt:
        inputs = F.interpolate(inputs, size=(ht, wt), mode="bilinear", align_corners=True)
    temp_inputs = inputs.transpose(1, 2).transpose(2, 3).contiguous().view(-1, c)
    temp_target = target.view(-1)
    return nn.CrossEntropyLoss(weight=cls_weights, ignore_index=num_classes)(
        temp_inputs, temp_target
    )


def f_score(inputs, target, beta=1, smooth=1e-5, threhold=0.5):
    n, c, h, w = inputs.size()
    nt, ht, wt, ct = target.size()
    if h != ht and w != wt:
        inputs = F.interpolate(inputs, size=(ht, wt), mode="bilinear", align_corners=True)
    temp_inputs = torch.softmax(
        inputs.transpose(1, 2).transpose(2, 3).contiguous().view(n, -1, c), -1
    )
    temp_target = target.view(n, -1, ct)
    temp_inputs = torch.gt(temp_inputs, threhold).float()
    tp = torch.sum(temp_target[..., :-1] * temp_inputs, axis=[0, 1])
    fp = torch.sum(temp_inputs, axis=[0, 1]) - tp
    fn = torch.sum(temp_target[..., :-1], axis=[0, 1]) - tp
    score = ((1 + beta**2) * tp + smooth) / ((1 + beta**2) * tp + beta**2 * fn + fp + smooth)
    return torch.mean(score)


def notes_validate(model: nn.Module, loader, device: torch.device) -> None:
    """The validation part of the notes' fit_one_epoch: forward, CE loss, f_score, .item()."""
    model.eval()
    weights = torch.ones(NUM_CLASSES, device=device)
    val_loss = val_f_score = 0
    for imgs, pngs, labels in loader:
        with torch.no_grad():
            imgs, pngs, labels = imgs.to(device), pngs.to(device), labels.to(device)
            outputs = model(imgs)["out"]
            loss = ce_loss(outputs, pngs, weights, num_classes=NUM_CLASSES)
            val_loss += loss.item()
            val_f_score += f_score(outputs, labels).item()


# =========================================================================== helpers
def make_data(root: Path, n: int = 64, n_val: int = 16, seed: int = 0) -> list[str]:
    """``n`` JPEGs of 500x375 with 21-class palette PNG masks (ellipses and boxes on background,
    255 bands along their borders, like VOC) in ``root/VOC2007``; train.txt lists all, val.txt
    the first ``n_val``. Returns the names."""
    year = root / "VOC2007"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    rng, palette = np.random.default_rng(seed), sum(voc_palette(256), [])
    names = [f"{i:06d}" for i in range(n)]
    for name in names:
        mask = np.zeros((375, 500), np.uint8)
        for _ in range(int(rng.integers(2, 6))):
            c, (x, y) = int(rng.integers(1, NUM_CLASSES)), rng.integers((0, 0), (500, 375))
            axes = tuple(int(v) for v in rng.integers(20, 120, 2))
            if rng.random() < 0.5:
                cv2.ellipse(mask, (int(x), int(y)), axes, 0, 0, 360, c, -1)
            else:
                cv2.rectangle(mask, (int(x), int(y)), (int(x) + axes[0], int(y) + axes[1]), c, -1)
        edges = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        colours = rng.integers(0, 256, (256, 3)).astype(np.float32)
        image = colours[mask] + rng.normal(0, 20, (375, 500, 3))
        mask[edges] = 255
        cv2.imwrite(
            str(year / "JPEGImages" / f"{name}.jpg"),
            np.clip(image, 0, 255).astype(np.uint8)[..., ::-1].copy(),
        )
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(year / "SegmentationClass" / f"{name}.png")
    (year / "ImageSets/Segmentation/train.txt").write_text("\n".join(names) + "\n")
    (year / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[:n_val]) + "\n")
    return names


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median over ``repeats`` of each callable's result (a rate), the callables taking turns
    so that load from elsewhere on the machine hits all of them alike."""
    results: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    return {k: statistics.median(v) for k, v in results.items()}


def timed(fn: Callable[[], object], count: int, sync: Callable[[], None]) -> float:
    """``count / seconds`` of one call of ``fn``."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return count / (time.perf_counter() - t0)


def batch_bytes(batch) -> int:
    return sum(t.numel() * t.element_size() for t in batch)


class PeakMemory:
    """Samples the resident memory of this process and its children (DataLoader workers)
    from /proc every ``interval`` s; ``peak_mb`` is the largest sum seen since ``reset``."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak_mb, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.peak_mb = 0.0

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            pids = [me] + [p for p in _children(me)]
            self.peak_mb = max(self.peak_mb, sum(_rss_mb(p) for p in pids))

    def close(self) -> None:
        self._stop.set()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def compose(root: Path, args: argparse.Namespace, *overrides: str):
    """The real training config with the benchmark's data and settings."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from segkit.run import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(
            "train",
            overrides=[
                "dataset=voc",
                f"dataset.root={root}",
                "dataset.check=off",
                "model.pretrained=false",
                f"loader.batch_size={args.batch_size}",
                f"loader.num_workers={args.workers}",
                "trainer.progress_bar=false",
                f"launch.accelerator={args.device}",
                f"trainer.precision={args.precision}",
                f"trainer.channels_last={memory_format(args.channels_last)}",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


# =========================================================================== measures
def bench_data(root: Path, names: list[str], args, mem: PeakMemory) -> dict:
    """Section 1: augmentation + collate on one core and through DataLoaders; batch bytes."""
    from segkit.data.voc import VOCDataset
    from segkit.dist import DistInfo
    from segkit.run import build_datasets, build_loaders

    out: dict = {}
    epochs = count()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    strong = compose(root, args, "dataset/augment=strong").dataset.augment
    for size in args.sizes:
        common = dict(train=True, num_classes=NUM_CLASSES, input_shape=(size, size))
        ours = VOCDataset(root, "train", **common)
        heavy = VOCDataset(root, "train", augment=strong, **common)
        notes = NotesUnetDataset(names, (size, size), NUM_CLASSES, True, str(root))
        batches = [range(i, i + 8) for i in range(0, len(names), 8)]
        runs = {
            "notes": partial(augment_rate, notes, unet_dataset_collate, batches, epochs),
            "segkit": partial(augment_rate, ours, default_collate, batches, epochs),
            "strong": partial(augment_rate, heavy, default_collate, batches, epochs),
        }
        rates = interleaved(runs, args.repeats)
        out[f"augment_{size}"] = {
            "notes": rates["notes"],
            "segkit": rates["segkit"],
            "ratio": rates["segkit"] / rates["notes"],
        }
        out[f"augment-strong_{size}"] = {
            "notes": rates["notes"],
            "segkit": rates["strong"],
            "ratio": rates["strong"] / rates["notes"],
        }
        if size == 512 or size == max(args.sizes):
            out["batch_bytes"] = {
                "size": size,
                "notes": batch_bytes(unet_dataset_collate([notes[i] for i in range(8)])),
                "segkit": batch_bytes(default_collate([ours[i] for i in range(8)])),
            }
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    # through DataLoaders (the segkit one as training builds it), largest size
    size = max(args.sizes)
    mem.reset()
    cfg = compose(root, args, f"dataset.input_shape=[{size},{size}]")
    train_ds, val_ds = build_datasets(cfg)
    loader, _ = build_loaders(cfg, train_ds, val_ds, DistInfo(device=torch.device(args.device)))
    notes_loader = DataLoader(
        NotesUnetDataset(names, (size, size), NUM_CLASSES, True, str(root)),
        batch_size=args.batch_size,
        num_workers=args.workers,
        shuffle=True,
        drop_last=True,
        collate_fn=unet_dataset_collate,
    )
    n = len(loader) * args.batch_size
    loader_rate(loader, n, epochs)  # workers start (once with persistent workers)
    runs = {"notes": partial(loader_rate, notes_loader, n, epochs)}
    runs["segkit"] = partial(loader_rate, loader, n, epochs)
    rates = interleaved(runs, args.repeats)
    out[f"loader_{size}"] = {
        **rates,
        "ratio": rates["segkit"] / rates["notes"],
        "workers": args.workers,
        "peak_host_mb": mem.peak_mb,
    }
    return out


def augment_rate(ds, collate, batches: list, epochs: Iterator[int]) -> float:
    """Samples/s of reading, augmenting and collating ``batches`` of ``ds`` in this process
    (each call a new augmentation epoch)."""
    getattr(ds, "set_epoch", lambda e: None)(next(epochs))
    t0 = time.perf_counter()
    for batch in batches:
        collate([ds[i] for i in batch])
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def loader_rate(loader: DataLoader, samples: int, epochs: Iterator[int]) -> float:
    """Samples/s of one pass over a DataLoader (a new epoch for its sampler)."""
    getattr(loader.sampler, "set_epoch", lambda e: None)(next(epochs))
    return timed(lambda: [None for _ in loader], samples, _no_sync)


def bench_confusion(args) -> dict:
    """Section 2: ConfusionMatrix.update vs the notes' fast_hist, 512x512, one core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    label = rng.integers(0, NUM_CLASSES, (512, 512)).astype(np.uint8)
    label[rng.random(label.shape) < 0.1] = 255
    pred = rng.integers(0, NUM_CLASSES, (512, 512)).astype(np.int64)
    cm = ConfusionMatrix(NUM_CLASSES)
    target_t, pred_t = torch.from_numpy(label)[None], torch.from_numpy(pred)[None]
    calls = args.cm_calls

    def ours() -> float:
        return timed(lambda: [cm.update(pred_t, target_t) for _ in range(calls)], calls, _no_sync)

    def notes() -> float:
        a, b = label.flatten(), pred.flatten()
        return timed(lambda: [fast_hist(a, b, NUM_CLASSES) for _ in range(calls)], calls, _no_sync)

    rates = interleaved({"notes": notes, "segkit": ours}, args.repeats)
    torch.set_num_threads(threads)
    return {**rates, "ratio": rates["segkit"] / rates["notes"]}


def _no_sync() -> None:
    pass


class InMemoryLoader:
    """Pre-collated batches replayed like a DataLoader: the loop without any data work."""

    def __init__(self, batches: list, loader: DataLoader) -> None:
        self.batches, self.sampler, self.dataset = batches, loader.sampler, loader.dataset
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def build_trainer(cfg, device: torch.device):
    """The Trainer as segkit.run builds it (no run directory, no tracker)."""
    from segkit.dist import DistInfo
    from segkit.run import build_trainer as build

    return build(cfg, DistInfo(device=device))[0]


def bench_train(root: Path, args, mem: PeakMemory) -> dict:
    """Section 3: training images/s on in-memory batches vs the real loader, per model."""
    device, out = torch.device(args.device), {}
    sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
    size = args.train_size
    for name in args.models:
        cfg = compose(
            root,
            args,
            f"model={name}",
            f"dataset.input_shape=[{size},{size}]",
            f"trainer.limit_train_batches={args.train_steps}",
        )
        trainer = build_trainer(cfg, device)
        real = trainer.train_loader
        mem.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train_one_epoch(0)  # warm-up: workers, allocator, cuDNN autotuning
        batches = [
            (x.pin_memory(), y.pin_memory()) if device.type == "cuda" else (x, y)
            for (x, y), _ in zip(real, range(trainer.batches_per_epoch))
        ]
        memory = InMemoryLoader(batches, real)
        images, epochs = len(batches) * args.batch_size, count(1)
        runs = {"in_memory": partial(epoch_rate, trainer, memory, images, epochs, sync)}
        runs["loader"] = partial(epoch_rate, trainer, real, images, epochs, sync)
        variants = {}  # the same model and batches with one setting changed
        if args.channels_last == "compare":
            variants["contiguous"] = ("trainer.channels_last", False)
        if args.compare_precision:
            variants[args.compare_precision] = ("trainer.precision", args.compare_precision)
        for label, (key, value) in variants.items():
            other = build_trainer(cfg_with(cfg, key, value), device)
            other.train_one_epoch(0)
            runs[f"in_memory_{label}"] = partial(
                epoch_rate, other, InMemoryLoader(batches, real), images, epochs, sync
            )
        rates = interleaved(runs, args.slow_repeats)
        out[name] = {
            **rates,
            "efficiency": rates["loader"] / rates["in_memory"],
            "size": size,
            "batch_size": args.batch_size,
            "peak_host_mb": mem.peak_mb,
            "precision": trainer.precision,
            "channels_last": memory_format(args.channels_last),
        }
        if "in_memory_contiguous" in rates:
            out[name]["channels_last_speedup"] = rates["in_memory"] / rates["in_memory_contiguous"]
        if args.compare_precision:
            other = rates[f"in_memory_{args.compare_precision}"]
            out[name]["compare_precision"] = args.compare_precision
            out[name]["precision_speedup"] = rates["in_memory"] / other
        if device.type == "cuda":
            out[name]["peak_cuda_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        del trainer, real, memory, batches
    return out


class SavedActivations:
    """While active: the bytes of the distinct tensors autograd saves for backward, model
    parameters aside (what activation checkpointing and the batch size change)."""

    def __init__(self, params: Iterator[nn.Parameter]) -> None:
        self.params = {p.data_ptr() for p in params}
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.params:
            self.storages[ptr] = t.untyped_storage().nbytes()
        return t

    @property
    def mb(self) -> float:
        return sum(self.storages.values()) / 2**20

    def __enter__(self) -> SavedActivations:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def bench_memory(root: Path, args) -> list[dict]:
    """``--memory``: per batch size, with and without activation checkpointing, one training
    step (after a warm-up step, so that the optimiser state exists): saved activations (MB),
    peak CUDA memory (MB, CUDA only) and the step's seconds."""
    device, size, rows = torch.device(args.device), args.memory_size, []
    for checkpointing in (False, True):
        cfg = compose(
            root,
            args,
            f"model={args.memory_model}",
            f"dataset.input_shape=[{size},{size}]",
            f"trainer.activation_checkpointing={str(checkpointing).lower()}",
        )
        trainer = build_trainer(cfg, device)
        for batch in args.memory_batches:
            row = {"model": args.memory_model, "size": size, "batch_size": batch}
            row["activation_checkpointing"] = checkpointing
            rows.append({**row, **memory_step(trainer, batch, size, cfg.dataset.num_classes)})
            print(rows[-1], flush=True)
        del trainer
    return rows


def memory_step(trainer, batch: int, size: int, num_classes: int) -> dict:
    """One measured training step on a random batch (``oom`` when it does not fit)."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    masks = torch.randint(0, num_classes, (batch, size, size), dtype=torch.uint8)
    device = trainer.info.device
    sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
    try:
        trainer.train_step([(images, masks)])  # warm-up: optimiser state, allocator
        if device.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats(device)
        with SavedActivations(trainer.model.parameters()) as saved:
            t0 = time.perf_counter()
            trainer.train_step([(images, masks)])
            sync()
            seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError:
        trainer.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return {"oom": True}
    out = {"saved_activations_mb": round(saved.mb, 1), "step_s": round(seconds, 3)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def memory_table(rows: list[dict]) -> str:
    """``--memory`` rows as a markdown table."""
    keys = ["model", "size", "batch_size", "activation_checkpointing"]
    keys += ["saved_activations_mb", "peak_cuda_mb", "step_s", "oom"]
    keys = [k for k in keys if any(k in r for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def memory_format(choice: str) -> str:
    """``--channels-last`` -> ``trainer.channels_last``: compare times true against false."""
    return "true" if choice == "compare" else choice


def cfg_with(cfg, key: str, value):
    """A copy of ``cfg`` with ``key`` set to ``value``."""
    from omegaconf import OmegaConf

    copy = cfg.copy()
    OmegaConf.update(copy, key, value)
    return copy


def epoch_rate(trainer, loader, images: int, epochs: Iterator[int], sync) -> float:
    """Images/s of one training epoch of ``trainer`` over ``loader``."""
    trainer.train_loader = loader
    return timed(lambda: trainer.train_one_epoch(next(epochs)), images, sync)


class TimedForward(nn.Module):
    """Wraps a model and adds up the wall time of its forward calls (synchronised)."""

    def __init__(self, model: nn.Module, sync: Callable[[], None]) -> None:
        super().__init__()
        self.model, self.sync, self.seconds = model, sync, 0.0

    def forward(self, x: torch.Tensor):
        self.sync()
        t0 = time.perf_counter()
        out = self.model(x)
        self.sync()
        self.seconds += time.perf_counter() - t0
        return out


def bench_val(root: Path, names: list[str], args) -> dict:
    """Section 4: a validation pass (loader + forward + loss + metrics) vs the notes' one."""
    from segkit import precision

    device, size = torch.device(args.device), args.val_size
    sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
    cfg = compose(
        root,
        args,
        f"model={args.val_model}",
        f"dataset.input_shape=[{size},{size}]",
        f"loader.val_batch_size={args.val_batch}",
    )
    trainer = build_trainer(cfg, device)
    model, n = TimedForward(trainer.model, sync), len(trainer.val_loader.dataset)
    notes_loader = DataLoader(
        NotesUnetDataset(names[:n], (size, size), NUM_CLASSES, False, str(root)),
        batch_size=args.val_batch,
        num_workers=args.workers,
        collate_fn=unet_dataset_collate,
    )
    outside: dict[str, list[float]] = {"notes": [], "segkit": []}

    def run(name: str, fn: Callable[[], object]) -> Callable[[], float]:
        def go() -> float:
            model.seconds = 0.0
            with precision.autocast(device, trainer.amp_dtype):
                rate = timed(fn, n, sync)
            outside[name].append(1 - model.seconds * rate / n)
            return rate

        return go

    ours = run(
        "segkit",
        lambda: evaluate(
            model,
            trainer.val_loader,
            trainer.cm,
            device=device,
            amp_dtype=trainer.amp_dtype,
            loss_fn=trainer.loss_fn,
            normalize=trainer.normalize,
        ),
    )
    notes = run("notes", lambda: notes_validate(model, notes_loader, device))
    ours()  # warm-up (persistent workers start; the notes' workers restart every pass anyway)
    for values in outside.values():
        values.clear()
    rates = interleaved({"notes": notes, "segkit": ours}, args.slow_repeats)
    return {
        **rates,
        "ratio": rates["segkit"] / rates["notes"],
        "images": n,
        "size": size,
        "model": args.val_model,
        "outside_forward": {k: statistics.median(v) for k, v in outside.items()},
    }


# =========================================================================== report
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"CPU: {line.split(':', 1)[1].strip()}"
    return f"CPU: {platform.processor() or platform.machine()}"


def table(results: dict) -> str:
    """The printed summary: one row per measure, notes | segkit | ratio | target."""
    meta, rows = results["meta"], []

    def row(measure: str, notes, ours, ratio: str, target: str = "") -> None:
        rows.append((measure, notes, ours, ratio, target))

    data = results.get("data", {})
    for key in sorted(k for k in data if k.startswith("augment")):
        (kind, size), r = key.split("_"), data[key]
        preset = "strong" if kind == "augment-strong" else "default"
        row(
            f"augment ({preset}) + collate {size}x{size}, 1 core (samples/s)",
            f"{r['notes']:.1f}",
            f"{r['segkit']:.1f}",
            f"{r['ratio']:.2f}x",
            TARGETS.get(key, ""),
        )
    if "batch_bytes" in data:
        b, mb = data["batch_bytes"], 2**20
        row(
            f"bytes of a collated batch of 8 at {b['size']} (MiB)",
            f"{b['notes'] / mb:.1f}",
            f"{b['segkit'] / mb:.1f}",
            f"{b['segkit'] / b['notes']:.3f}",
            TARGETS["batch_mb"],
        )
    for key in (k for k in data if k.startswith("loader_")):
        r = data[key]
        row(
            f"DataLoader {r['workers']} workers at {key[7:]} (samples/s)",
            f"{r['notes']:.1f}",
            f"{r['segkit']:.1f}",
            f"{r['ratio']:.2f}x",
        )
    if "confusion" in results:
        r = results["confusion"]
        row(
            "confusion matrix 512x512, 21 cl., 1 core (calls/s)",
            f"{r['notes']:.0f}",
            f"{r['segkit']:.0f}",
            f"{r['ratio']:.2f}x",
            TARGETS["confusion"],
        )
    if "val" in results:
        r, o = results["val"], results["val"]["outside_forward"]
        row(
            f"validation {r['images']} img {r['size']}, {r['model']} (img/s)",
            f"{r['notes']:.2f}",
            f"{r['segkit']:.2f}",
            f"{r['ratio']:.2f}x",
            TARGETS["val"],
        )
        row(
            "  share of it outside the forward",
            f"{100 * o['notes']:.1f}%",
            f"{100 * o['segkit']:.1f}%",
            "",
        )
    for name, r in results.get("train", {}).items():
        mem = f", peak {r['peak_cuda_gb']:.1f} GB" if "peak_cuda_gb" in r else ""
        row(
            f"train {name} {r['size']} b{r['batch_size']} {r['precision']}: in-memory | loader "
            f"(img/s{mem})",
            f"{r['in_memory']:.2f}",
            f"{r['loader']:.2f}",
            f"eff {r['efficiency']:.3f}",
            TARGETS["efficiency"],
        )
        if "channels_last_speedup" in r:
            row(
                f"  {name} in-memory: contiguous | channels-last (img/s)",
                f"{r['in_memory_contiguous']:.2f}",
                f"{r['in_memory']:.2f}",
                f"{r['channels_last_speedup']:.2f}x",
            )
        if "precision_speedup" in r:
            other = r["compare_precision"]
            row(
                f"  {name} in-memory: {other} | {r['precision']} (img/s)",
                f"{r[f'in_memory_{other}']:.2f}",
                f"{r['in_memory']:.2f}",
                f"{r['precision_speedup']:.2f}x",
            )
    peak = max(
        [v.get("peak_host_mb", 0) for v in results.get("train", {}).values()]
        + [v.get("peak_host_mb", 0) for k, v in data.items() if k.startswith("loader_")],
        default=0,
    )
    row("peak host memory, main + workers (MB)", "", f"{peak:.0f}", "")
    head = (
        f"device: {meta['device_name']} | torch {meta['torch']} | threads {meta['threads']} "
        f"| cpus {meta['cpu_count']} | repeats {meta['repeats']}"
    )
    widths = [
        max(len(str(r[i])) for r in rows + [("measure", "notes", "segkit", "ratio", "target")])
        for i in range(5)
    ]
    lines = [head, ""]
    for r in [("measure", "notes", "segkit", "ratio", "target"), *rows]:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="write every figure and the settings as JSON")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="augmentation sizes")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (data, metrics)")
    p.add_argument("--slow-repeats", type=int, default=2, help="interleaved repeats (train, val)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cm-calls", type=int, default=100, help="confusion-matrix calls per repeat")
    p.add_argument(
        "--models",
        nargs="+",
        default=["unet", "bisenetv2"],
        help="model configs to train (conf/model); 'all' for every one",
    )
    p.add_argument("--train-size", type=int, default=128, help="training input size (square)")
    p.add_argument("--train-steps", type=int, default=4, help="steps per timed epoch")
    p.add_argument("--precision", default="auto", help="trainer.precision for training/validation")
    p.add_argument(
        "--channels-last",
        default="auto",
        choices=["auto", "true", "false", "compare"],
        help="trainer.channels_last for training; compare: true vs false side by side",
    )
    p.add_argument(
        "--compare-precision",
        choices=["fp32", "fp16", "bf16"],
        help="also time training with this trainer.precision, side by side with --precision",
    )
    p.add_argument("--val-model", default="unet")
    p.add_argument("--val-size", type=int, default=512)
    p.add_argument("--val-batch", type=int, default=4)
    p.add_argument("--skip", nargs="*", default=[], choices=["data", "confusion", "train", "val"])
    p.add_argument("--memory", action="store_true", help="only the memory per batch size")
    p.add_argument("--memory-model", default="unet", help="model config for --memory")
    p.add_argument("--memory-size", type=int, default=256, help="crop size for --memory")
    p.add_argument("--memory-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    args = p.parse_args(argv)
    if args.models == ["all"]:
        from segkit.run import model_config_names

        args.models = model_config_names()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    results: dict = {
        "meta": {
            "device_name": device_name(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "repeats": f"{args.repeats}/{args.slow_repeats}",
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        }
    }
    if args.memory:
        return main_memory(args, results)
    mem = PeakMemory()
    with tempfile.TemporaryDirectory(prefix="segkit-bench-") as tmp:
        root = Path(tmp) / "VOCdevkit"
        names = make_data(root)
        steps = [
            ("data", lambda: bench_data(root, names, args, mem)),
            ("confusion", lambda: bench_confusion(args)),
            ("val", lambda: bench_val(root, names, args)),
            ("train", lambda: bench_train(root, args, mem)),
        ]
        for name, step in steps:
            if name not in args.skip:
                t0 = time.perf_counter()
                results[name] = step()
                print(f"[{name}: {time.perf_counter() - t0:.0f} s]", flush=True)
    mem.close()
    results["meta"]["peak_main_hwm_mb"] = _hwm_mb()
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"written {args.out}")
    return 0


def main_memory(args: argparse.Namespace, results: dict) -> int:
    """``--memory``: the memory table (and JSON with ``--out``)."""
    with tempfile.TemporaryDirectory(prefix="segkit-bench-") as tmp:
        root = Path(tmp) / "VOCdevkit"
        make_data(root, n=max(*args.memory_batches, args.batch_size), n_val=2)
        results["memory"] = bench_memory(root, args)
    print(memory_table(results["memory"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"written {args.out}")
    return 0


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    raise SystemExit(main())
