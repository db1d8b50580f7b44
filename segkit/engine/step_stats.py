"""What the training loop measures per step, kept on the device between logging points, and
what it says when training diverges."""

from __future__ import annotations

import itertools
import time

import torch
from torch import nn

from segkit.errors import DivergedError


class StepStats:
    """What the loop measures. Per step, on the device (no sync): sums of the finite losses and
    gradient norms, finite and non-finite step counts, the current run of consecutive
    non-finite steps. On the host: images and seconds spent waiting for batches. ``read`` (at
    a logging point) syncs once and returns the window since the previous read; the epoch
    totals add up the windows."""

    KEYS = ("loss_sum", "finite", "nonfinite", "grad_norm_sum", "run")

    def __init__(self, device: torch.device, world_size: int = 1) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)
        self.run = torch.zeros((), dtype=torch.int64, device=device)  # kept across epochs
        self.world_size = world_size
        self.start_epoch()

    def start_epoch(self) -> None:
        self.t_epoch = self.t_window = time.perf_counter()
        self.window = {"images": 0, "wait": 0.0}
        self.epoch = dict.fromkeys(("images", "wait", "loss_sum", "finite", "nonfinite"), 0.0)

    def waited(self, seconds: float, images: int) -> None:
        self.window["images"] += images
        self.window["wait"] += seconds

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, bad: torch.Tensor) -> None:
        ok, zero = ~bad, torch.zeros((), dtype=torch.float64, device=loss.device)
        loss, grad_norm = loss.detach().double(), grad_norm.detach().double()
        self.sums += torch.stack(
            [torch.where(ok, loss, zero), ok, bad, torch.where(ok, grad_norm, zero)]
        )
        self.run.add_(1).mul_(bad)  # +1 on a non-finite step, back to 0 on a finite one

    def read(self) -> dict[str, float]:
        """The window: the KEYS plus images, wait and seconds (wall time, real now that the
        device has caught up); then a new window starts."""
        window = dict(zip(self.KEYS, torch.cat([self.sums, self.run.view(1).double()]).tolist()))
        self.sums.zero_()
        now = time.perf_counter()
        window.update(self.window, seconds=now - self.t_window)
        self.t_window, self.window = now, {"images": 0, "wait": 0.0}
        for key in self.epoch:
            self.epoch[key] += window[key]
        return window

    def open_window(self) -> dict[str, float]:
        """The device sums of the window not yet read, and the run (one sync): what a
        mid-epoch checkpoint keeps so that the resumed run logs this window whole."""
        return dict(zip(self.KEYS, torch.cat([self.sums, self.run.view(1).double()]).tolist()))

    def restore(self, epoch: dict[str, float], window: dict[str, float]) -> None:
        """Continue an epoch from a mid-epoch checkpoint: its epoch totals and open window."""
        self.epoch.update(epoch)
        if window:
            values = [window[k] for k in self.KEYS[:4]]
            self.sums.copy_(torch.tensor(values, dtype=torch.float64))
            self.run.fill_(int(window["run"]))

    def scalars(self, w: dict[str, float]) -> dict[str, float]:
        """TensorBoard scalars of a window (images/s counts the images of every rank)."""
        seconds = max(w["seconds"], 1e-9)
        out = {
            "train/images_per_s": w["images"] * self.world_size / seconds,
            "train/data_wait": w["wait"] / seconds,
        }
        if w["finite"]:
            out["train/loss"] = w["loss_sum"] / w["finite"]
            out["train/grad_norm"] = w["grad_norm_sum"] / w["finite"]
        if w["nonfinite"]:
            out["train/nonfinite_steps"] = w["nonfinite"]
        return out

    def epoch_summary(self) -> tuple[float, int, str]:
        """(mean loss over the epoch's finite steps, non-finite steps, a log line part)."""
        e, seconds = self.epoch, max(time.perf_counter() - self.t_epoch, 1e-9)
        rate = e["images"] * self.world_size / seconds
        text = f"{seconds:.1f}s, {rate:.1f} img/s, {100 * e['wait'] / seconds:.0f}% data wait"
        return e["loss_sum"] / max(e["finite"], 1), int(e["nonfinite"]), text


def batch_files(loader: torch.utils.data.DataLoader, position: int) -> list[str]:
    """Image files of batch ``position`` of the current epoch (a deterministic sampler, e.g.
    the DistributedSampler, gives the same order again; others are not replayed)."""
    sampler, size = loader.sampler, loader.batch_size
    if size is None or not isinstance(
        sampler, torch.utils.data.DistributedSampler | torch.utils.data.SequentialSampler
    ):
        return [f"(unknown: {type(sampler).__name__} does not replay its order)"]
    order = (
        torch.utils.data.DistributedSampler.__iter__(sampler)
        if hasattr(sampler, "skip")
        else iter(sampler)
    )
    indices = list(itertools.islice(order, position * size, (position + 1) * size))
    files = getattr(loader.dataset, "files", None)
    return [files[i][0] if files else f"index {i}" for i in indices]


def divergence_error(
    run: int, step: int, limit: int, lr: float, scale: str, precision: str, files, first: int
) -> DivergedError:
    """The error for ``run`` consecutive non-finite steps ending at ``step``."""
    where = "batch" if first >= 0 else "last batch (the run began in an earlier epoch)"
    return DivergedError(
        f"training diverged: {run} consecutive non-finite steps (loss or gradients NaN/Inf) "
        f"at steps {step - run + 1}..{step}, trainer.max_nonfinite_steps={limit}; "
        f"lr {lr:.4g}, loss scale {scale} (trainer.precision={precision}); "
        f"samples of the first bad {where}: {files}. "
        "The last finite checkpoint is kept. Fix: lower optimizer.lr or add warmup "
        "(scheduler.warmup_epochs), set trainer.grad_clip, or check those samples"
    )


def finite_weights(model: nn.Module) -> bool:
    """True when every floating-point tensor of the model's state is finite."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())
