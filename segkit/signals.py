"""Signals: stopping a run cleanly on SIGINT / SIGTERM (:class:`StopRequest`), submitit's
preemption / time-limit signal and its requeue (the one place that knows a job runs under
submitit), and the DataLoader workers' part in it (they ignore the stop signals; the main
process ends them)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.util  # noqa: F401  registers its exit handler before segkit's
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from segkit.dist import DistInfo, all_reduce_sum

log = logging.getLogger("segkit")


def preemption_signal() -> signal.Signals | None:
    """The signal submitit delivers before a job's time limit and when the cluster preempts it
    (SLURM ``--signal=USR2@signal_delay_s``; its local controller ``signal_delay_s`` before
    ``timeout_min``): SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` names another. None when this
    process does not run a submitit job (its controller and sbatch script export
    ``SUBMITIT_EXECUTOR``; segkit's DDP workers inherit it)."""
    if not _submitit_executor():
        return None
    from submitit import JobEnvironment

    return signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]


def slurm_requeues() -> int:
    """How often SLURM requeued this submitit job (``SLURM_RESTART_COUNT``): submitit's requeue,
    or the cluster's own (a preemption with ``PreemptMode=REQUEUE``, a node failure); else 0."""
    if _submitit_executor() != "slurm":
        return 0
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def _submitit_executor() -> str | None:
    """``local`` or ``slurm`` inside a submitit job (its controller and its sbatch script export
    ``SUBMITIT_EXECUTOR``), else None: the one test for "this runs under submitit"."""
    return os.environ.get("SUBMITIT_EXECUTOR") or None


_preempted = False  # this process got preemption_signal() while segkit handled it


def preempted() -> bool:
    """Whether this process got submitit's preemption / time-limit signal (then the job, once
    its interrupt checkpoint is saved, goes back to submitit: :func:`requeue`)."""
    return _preempted


def note_preemption(signum: int, frame: Any = None) -> None:
    global _preempted
    _preempted = True


def requeue() -> None:
    """Hand a preempted or timed-out job back to submitit: call the handler submitit installed
    for :func:`preemption_signal` (``SignalHandler.checkpoint_and_try_requeue``, which segkit's
    own handlers held back). It pickles the job again (hydra-submitit's ``checkpoint()``: the
    same overrides, so the same run directory), counts a time-out against ``max_num_timeout``,
    requeues (SLURM: ``scontrol requeue``; local: exit status 144, which its controller reruns)
    and ends the process (SystemExit). Raises submitit's ``UncompletedJobError`` when it will
    not requeue (timed out too often)."""
    sig = preemption_signal()
    handler = signal.getsignal(sig) if sig is not None else None
    if not callable(handler):
        raise RuntimeError(f"no submitit handler for {sig!r}: this is not a submitit job")
    handler(sig, None)


class StopRequest:
    """While active (``with StopRequest() as stop:``, main thread), SIGINT / SIGTERM set a flag
    instead of killing the process, so the training loop can finish its step, save and stop
    (``requested``). A second SIGINT stops at once (KeyboardInterrupt). Under submitit its
    preemption / time-limit signal (:func:`preemption_signal`) stops the loop the same way, and
    wins over the others (the job is then requeued, :func:`requeue`); SIGTERM alone stays a
    plain stop, as submitit has it (``scancel`` sends SIGTERM too)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        for sig in stop_signals():
            self._previous[sig] = signal.signal(sig, self._handle)
        if _preempted:  # a DDP worker got it before training began
            self.signal_name = preemption_signal().name
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt
        if signum == preemption_signal() and self.signal_name != name:
            note_preemption(signum)
            self.signal_name = name
            log.warning(
                "%s received (time limit or preemption): saving after the current step, "
                "then handing the job back to submitit to requeue it",
                name,
            )
        elif self.signal_name is None:
            self.signal_name = name
            log.warning("%s received: saving and stopping after the current step", name)

    def requested(self, info: DistInfo) -> str | None:
        """The signal name once any rank got one (agreed across ranks), else None."""
        if not info.distributed:
            return self.signal_name
        names = [s.name for s in stop_signals()]  # the same list on every rank
        flags = torch.tensor([self.signal_name == n for n in names])
        flags = all_reduce_sum(flags.to(info.device, torch.float32)).cpu()
        got = [n for n, f in zip(names, flags.tolist()) if f > 0]
        return got[-1] if got else None  # the preemption signal, else SIGTERM, else SIGINT


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGINT, SIGTERM, and submitit's preemption signal under submitit (the last wins)."""
    sig = preemption_signal()
    return (signal.SIGINT, signal.SIGTERM) + ((sig,) if sig is not None else ())


class StopSafeLoader(DataLoader):
    """DataLoader whose worker processes never die of a stop signal (SIGINT, SIGTERM,
    submitit's). Ctrl-C, ``kill -- -PGID``, ``pkill -f train.py`` and SLURM's ``scancel`` reach
    every process of the job; a worker killed by one would fail the run (and look like an
    out-of-memory kill) instead of letting the main process finish its step, save and stop
    (:class:`StopRequest`). Workers start with the signals blocked (a spawned worker, as in the
    ranks of ``trainer.devices=N``, imports torch for seconds before its ``worker_init_fn``
    runs), ignore them from :func:`seed_worker` on, and are ended by the main process at exit
    (:func:`end_worker_processes`); a worker whose main process was killed outright ends by
    itself (torch's watchdog, within 5 s). A signal sent while workers start reaches the main
    process when they have."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, worker_init_fn=seed_worker, **kwargs)

    def __iter__(self) -> Any:
        with _held(stop_signals()):  # starts the workers, or resets persistent ones
            return super().__iter__()


@contextlib.contextmanager
def _held(sigs: tuple[signal.Signals, ...]) -> Iterator[None]:
    """Block ``sigs`` in this thread (and in processes it starts) for the block's duration; a
    signal sent meanwhile is delivered when it ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
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
    and where a spawned rank skips that handler (``launch``)."""
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
