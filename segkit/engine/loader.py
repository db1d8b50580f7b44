"""The training and validation DataLoader: worker processes that never die of a stop signal
(they ignore it; the main process finishes its step, saves, and ends them at exit), and a
numpy seed per worker."""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # noqa: F401  registers its exit handler before segkit's
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from segkit.engine.signals import stop_signals


class StopSafeLoader(DataLoader):
    """DataLoader whose worker processes never die of a stop signal (SIGINT, SIGTERM,
    submitit's). Ctrl-C, ``kill -- -PGID``, ``pkill -f train.py`` and SLURM's ``scancel`` reach
    every process of the job; a worker killed by one would fail the run (and look like an
    out-of-memory kill) instead of letting the main process finish its step, save and stop
    (:class:`StopRequest`). Workers start with the signals blocked (a worker started by spawn,
    the default on macOS, imports torch for seconds before its ``worker_init_fn`` runs),
    ignore them from :func:`seed_worker` on, and are ended by the main process at exit
    (:func:`end_worker_processes`); a worker whose main process was killed outright ends by
    itself (torch's watchdog, within 5 s). A signal sent while workers start reaches the main
    process when they have."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, worker_init_fn=seed_worker, **kwargs)

    def __iter__(self) -> Any:
        with held_signals(stop_signals()):  # starts the workers, or resets persistent ones
            return super().__iter__()


@contextlib.contextmanager
def held_signals(sigs: tuple[signal.Signals, ...]) -> Iterator[set[signal.Signals]]:
    """Block ``sigs`` in this thread (and in processes it starts) for the block's duration; a
    signal sent meanwhile is delivered when it ends. Yields the mask before the block."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield previous
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` (:class:`StopSafeLoader`). Samples draw from their own
    (seed, epoch, index) generator; this only keeps a library that uses numpy's global RNG from
    repeating the same stream in every worker process. Then the worker ignores the stop
    signals (a pending one is dropped) and stops blocking them."""
    np.random.seed(torch.initial_seed() % 2**32)
    sigs = stop_signals()
    for sig in sigs:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)


def end_worker_processes() -> None:
    """Kill the child processes still alive (DataLoader workers that a DataLoader still held,
    which ignore SIGTERM: :class:`StopSafeLoader`) and reap them. Runs at exit, before
    multiprocessing's own exit handler, whose terminate-then-join would wait for them forever,
    and which a rank of ``launch.devices=N`` skips (it ends by ``os._exit``)."""
    children = multiprocessing.active_children()
    if not children:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler: "worker killed" error
    for child in children:
        child.kill()
        child.join()


# at exit, before multiprocessing's exit handler (registered when multiprocessing.util was
# imported, above; atexit runs the last registered first)
atexit.register(end_worker_processes)
