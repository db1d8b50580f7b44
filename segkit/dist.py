"""Processes and ranks: the one place that knows about them.

segkit runs as one process (``launch.devices=1``), as N processes it starts itself
(``launch.devices=N``, one Hydra run directory shared by all), or under ``torchrun``
(rank/world read from the environment), or as the tasks of a SLURM job that submitit started
(SLURM's task variables become torch's). This module resolves devices, joins and leaves the
process group, wraps models in DDP, and holds the collectives and the samplers (the resumable
training sampler, the validation shard sampler). Everything else asks it; spawning the workers
is `segkit.engine.spawn`, numeric precision `segkit.precision`.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

from segkit.errors import ConfigError

log = logging.getLogger("segkit")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. ``device`` is the torch device it computes on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's rendezvous variables."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def launcher_rank() -> int:
    """This process's global rank as its launcher gave it (``RANK``: torchrun, segkit's workers,
    a SLURM job's tasks), also outside a process group; 0 without one."""
    return int(os.environ.get("RANK", "0"))


def adopt_slurm_tasks() -> None:
    """A submitit job on SLURM with several tasks (``tasks_per_node`` x ``nodes`` > 1): srun
    started every rank, each running the whole train task. Give each torch's rendezvous
    variables from SLURM's (RANK = SLURM_PROCID, LOCAL_RANK = SLURM_LOCALID, WORLD_SIZE =
    SLURM_NTASKS, MASTER_ADDR = the job's first node, MASTER_PORT from the job id: the same in
    every task and attempt), so the job trains as under torchrun. Nothing when torchrun already
    set them, or with one task."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or launched_by_torchrun():
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def select_device(accelerator: str, local_rank: int) -> torch.device:
    """``accelerator``: auto | cpu | cuda. ``cuda:<local_rank>`` counts only the GPUs that
    CUDA_VISIBLE_DEVICES shows."""
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "launch.accelerator=cuda but no CUDA device is visible; "
                "use launch.accelerator=cpu (or auto), or check CUDA_VISIBLE_DEVICES"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if accelerator != "cpu":
        raise ConfigError(f"launch.accelerator={accelerator!r}: expected auto, cpu or cuda")
    return torch.device("cpu")


def init(accelerator: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group when RANK/WORLD_SIZE are set (torchrun or our own spawn).

    Backend: NCCL when computing on CUDA, gloo otherwise.
    """
    if not launched_by_torchrun():
        return DistInfo(device=select_device(accelerator, 0))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = select_device(accelerator, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=timeout_s)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if attempt == "0":
            dist.init_process_group(backend, timeout=timeout)
        else:  # a torchrun restart: keys of this attempt only, never the dead attempt's ports
            store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
            store = dist.PrefixStore(f"segkit/attempt{attempt}", store)
            dist.init_process_group(
                backend, store=store, rank=rank, world_size=world, timeout=timeout
            )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM across ranks (no-op in a single process). Returns ``t``."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank: control-flow decisions are agreed,
    so no rank can leave a collective the others wait in."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def broadcast_object(obj: object, src: int = 0) -> object:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """In-place: every rank gets rank ``src``'s values (no-op in a single process)."""
    if is_initialized():
        for t in tensors:
            dist.broadcast(t, src=src)


def all_gather_object(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_initialized():
        dist.barrier()


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (``skip`` samples of this rank's
    share), for an exact mid-epoch resume without loading the skipped samples."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)


class ShardSampler(Sampler[int]):
    """Validation sampler: rank r gets indices r, r+W, r+2W, ... of ``range(n)``.

    Unlike ``DistributedSampler`` it never pads with duplicates, so every sample is
    evaluated exactly once across ranks and summed confusion matrices equal a
    single-process evaluation.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


# --------------------------------------------------------------------------- devices, autocast
def resolve_devices(devices: Any, accelerator: str) -> int:
    """``launch.devices``: an int, or ``auto`` = every visible GPU (1 on CPU)."""
    if devices == "auto":
        use_cuda = accelerator in ("auto", "cuda") and torch.cuda.is_available()
        return torch.cuda.device_count() if use_cuda else 1
    try:
        n = int(devices)
    except (TypeError, ValueError):
        raise ConfigError(
            f"launch.devices={devices!r}: expected a positive int or 'auto'"
        ) from None
    if n < 1:
        raise ConfigError(f"launch.devices={n}: expected >= 1")
    if accelerator == "cuda" and n > torch.cuda.device_count():
        raise ConfigError(
            f"launch.devices={n} but only {torch.cuda.device_count()} CUDA devices are visible "
            "(CUDA_VISIBLE_DEVICES); lower launch.devices"
        )
    return n


def wrap_ddp(model: nn.Module, info: DistInfo, find_unused_parameters: bool) -> nn.Module:
    """``model`` under DistributedDataParallel when the job has several ranks, else as is."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def log_devices(info: DistInfo) -> None:
    """World size, backend and the rank -> device map (logged by rank 0)."""
    devices = all_gather_object(str(info.device))
    if not info.distributed:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    log.info("world size %d, backend %s", info.world_size, dist.get_backend())
    log.info(
        "rank -> device: %s%s",
        ", ".join(f"{r}: {d}" for r, d in enumerate(devices)),
        f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "",
    )
