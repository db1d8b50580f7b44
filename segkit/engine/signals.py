"""Signals: stopping a run cleanly on SIGINT / SIGTERM (:class:`StopRequest`), submitit's
preemption / time-limit signal and its requeue, and SLURM's own requeue (the one place that
knows how a submitit job ends; its ranks come from `segkit.dist`). The DataLoader workers'
part in it is `segkit.engine.loader`."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from typing import Any

import torch

from segkit.dist import DistInfo, all_reduce_sum
from segkit.errors import Interrupted

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


def requeued_by_slurm() -> bool:
    """Whether SLURM is requeuing this job right now (``scontrol requeue``, a preemption with
    ``PreemptMode=REQUEUE``): it signals the job with SIGTERM and has counted the restart by
    then, so ``Restarts`` of ``scontrol show job`` runs ahead of this attempt's
    ``SLURM_RESTART_COUNT``. False outside a submitit SLURM job, and when scontrol cannot tell
    (then the SIGTERM is a plain stop, as from ``scancel``)."""
    job = os.environ.get("SLURM_JOB_ID")
    if _submitit_executor() != "slurm" or not job:
        return False
    try:
        cmd = ["scontrol", "show", "job", "-o", job]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    found = re.search(r"\bRestarts=(\d+)", out)
    return found is not None and int(found.group(1)) > slurm_requeues()


def end_for_requeue() -> None:
    """End this process's part in an attempt that is requeued, without a result: a job that
    SLURM requeues itself (:func:`requeued_by_slurm`), or a rank other than 0 of a SLURM job
    of several tasks that got submitit's signal (rank 0 requeues the job). submitit then
    writes no result (it would report the interrupted attempt as the job's outcome, and the
    sweep's launcher would stop waiting for the next attempt); the next attempt resumes and
    reports. Raises SystemExit, as submitit's own requeue does."""
    log.warning("the job is requeued: the next attempt resumes from the saved checkpoint")
    raise SystemExit(143)


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


class _StopHandlers:
    """While active (main thread), ``_handle`` receives the stop signals (:func:`stop_signals`);
    the previous handlers come back on exit."""

    def __init__(self) -> None:
        self._previous: dict = {}

    def __enter__(self) -> _StopHandlers:
        for sig in stop_signals():
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        raise NotImplementedError


class StopRequest(_StopHandlers):
    """While active (``with StopRequest() as stop:``, main thread), SIGINT / SIGTERM set a flag
    instead of killing the process, so the training loop can finish its step, save and stop
    (``requested``). A second SIGINT stops at once (KeyboardInterrupt). Under submitit its
    preemption / time-limit signal (:func:`preemption_signal`) stops the loop the same way, and
    wins over the others (the job is then requeued, :func:`requeue`); SIGTERM alone stays a
    plain stop, as submitit has it (``scancel`` sends SIGTERM too)."""

    def __init__(self) -> None:
        super().__init__()
        self.signal_name: str | None = None

    def __enter__(self) -> StopRequest:
        super().__enter__()
        if _preempted:  # a DDP worker got it before training began
            self.signal_name = preemption_signal().name
        return self

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


class StopRaises(_StopHandlers):
    """While active (main thread), SIGINT / SIGTERM (and submitit's signal) raise
    :class:`~segkit.errors.Interrupted` with ``message``, instead of killing the process
    unannounced: for work after the loop (calibration, result files) that has no step to
    finish, so the run's status says where it stopped and what is intact."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        raise Interrupted(f"interrupted by {name} {self.message}", name)


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGINT, SIGTERM, and submitit's preemption signal under submitit (the last wins)."""
    sig = preemption_signal()
    return (signal.SIGINT, signal.SIGTERM) + ((sig,) if sig is not None else ())
