"""Starting and stopping processes: spawning the workers of ``trainer.devices=N`` and reporting
their errors, worker logging, the job's one run directory (torchrun, elastic restarts),
SIGINT / SIGTERM handling, and submitit's preemption / time-limit signal (the one place that
knows a job runs under submitit). Ranks, collectives and devices are ``segkit.dist``."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from segkit.dist import DistInfo, all_reduce_sum, broadcast_object

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


def _note_preemption(signum: int, frame: Any = None) -> None:
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
        for sig in _stop_signals():
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
            _note_preemption(signum)
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
        names = [s.name for s in _stop_signals()]  # the same list on every rank
        flags = torch.tensor([self.signal_name == n for n in names])
        flags = all_reduce_sum(flags.to(info.device, torch.float32)).cpu()
        got = [n for n, f in zip(names, flags.tolist()) if f > 0]
        return got[-1] if got else None  # the preemption signal, else SIGTERM, else SIGINT


def _stop_signals() -> tuple[signal.Signals, ...]:
    """SIGINT, SIGTERM, and submitit's preemption signal under submitit (the last wins)."""
    sig = preemption_signal()
    return (signal.SIGINT, signal.SIGTERM) + ((sig,) if sig is not None else ())


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``. Samples draw from their own (seed, epoch, index) generator;
    this only keeps a library that uses numpy's global RNG from repeating the same stream in
    every worker process. Ctrl-C reaches the workers too: they ignore it, the main process
    saves and stops them; so does submitit's preemption signal (SLURM signals every process
    of the job)."""
    np.random.seed(torch.initial_seed() % 2**32)
    for sig in (signal.SIGINT, preemption_signal()):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (``skip`` samples of this rank's
    share), for an exact mid-epoch resume without loading the skipped samples."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_workers(fn: Callable[[dict, Path], Any], plain_cfg: dict, run_dir: Path, n: int) -> None:
    """Run ``fn(plain_cfg, run_dir)`` in ``n`` DDP processes on this machine.

    ``fn`` must be a module-level function (it is pickled for the spawn). ``torch.multiprocessing``
    joins the processes and, if one fails, stops the rest, so no rank is left waiting in a
    collective. A user error in a rank comes back as that error (one message, "rank r: ..."),
    a rank killed by a signal as a DistributedError with the likely cause.
    """
    import torch.multiprocessing as mp

    port = _free_port()
    errors = mp.get_context("spawn").SimpleQueue()
    log.info("starting %d worker processes (DDP, master port %d)", n, port)
    context = mp.start_processes(
        _worker,
        args=(fn, plain_cfg, str(run_dir), n, port, errors),
        nprocs=n,
        start_method="spawn",
        join=False,
    )
    forward = _forward_signals(context.processes)
    try:
        while not context.join(timeout=1.0):
            pass
    except mp.ProcessExitedException as e:
        raise _rank_error(e.error_index, e.exit_code, e.signal_name, errors) from None
    except mp.ProcessRaisedException as e:
        # a bug: keep the rank's traceback, and lead with its last line
        last = [ln for ln in str(e).splitlines() if ln.strip()][-1]
        raise RuntimeError(f"rank {e.error_index} failed: {last}\n{e}") from None
    finally:
        forward()


def _forward_signals(processes: list) -> Callable[[], None]:
    """Pass SIGINT / SIGTERM (and submitit's preemption signal, noted for :func:`requeue`) on to
    the workers (which save and stop) instead of dying here; returns the function that restores
    the previous handlers."""
    sigs = _stop_signals()
    previous = {sig: signal.getsignal(sig) for sig in sigs}

    def handle(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:  # Ctrl-C: the terminal sent it to the workers already
            return
        if signum == preemption_signal():
            _note_preemption(signum)
            name = signal.Signals(signum).name
            log.warning("%s received (time limit or preemption): stopping the workers", name)
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    for sig in sigs:
        signal.signal(sig, handle)
    return lambda: [signal.signal(sig, h) for sig, h in previous.items()]


def _rank_error(rank: int, code: int | None, signal_name: str | None, errors) -> Exception:
    """The error to raise in the parent for a rank that exited: its own user error, if it
    reported one, else what the exit says."""
    from segkit import errors as errs

    reported = []
    while not errors.empty():
        reported.append(errors.get())
    first = sorted(reported, key=lambda r: not r[1].startswith(f"rank {rank}:"))
    for kind, message, exit_code in first:
        err = getattr(errs, kind, errs.DistributedError)(message)
        err.exit_code = exit_code
        return err
    if code in (130, 143):
        name = "SIGTERM" if code == 143 else "SIGINT"
        return errs.Interrupted(f"interrupted by {name}; resume with trainer.resume=auto", name)
    if signal_name:
        return errs.DistributedError(
            f"rank {rank} was killed by {signal_name}; likely cause: the host ran out of memory "
            "(check `dmesg`; lower loader.batch_size or loader.num_workers) or a scheduler "
            "killed it; the other ranks were stopped. Resume with trainer.resume=auto"
        )
    return errs.DistributedError(f"rank {rank} exited with status {code}; see train.log")


def _worker(
    local_rank: int, fn, plain_cfg: dict, run_dir: str, world: int, port: int, errors
) -> None:
    from segkit.errors import UserError, user_error

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if (sig := preemption_signal()) is not None:  # not fatal before training: StopRequest acts
        signal.signal(sig, _note_preemption)
    setup_worker_logging(Path(run_dir), local_rank)
    try:
        fn(plain_cfg, Path(run_dir))
    except Exception as e:
        cause = user_error(e)
        if not isinstance(cause, UserError):
            raise  # a bug: torch.multiprocessing sends the traceback to the parent
        errors.put((type(cause).__name__, f"rank {local_rank}: {cause}", cause.exit_code))
        raise SystemExit(cause.exit_code) from None
    _exit_finished_worker()


def _exit_finished_worker() -> None:
    """End a rank whose work is done and written (files closed, process group destroyed)
    without interpreter finalization: there gloo's threads can still be releasing tensors, or
    a library's daemon thread holds stderr, and CPython aborts (SIGABRT): a finished run,
    then reported as a killed rank. Once in a few hundred runs under load (a CI sweep)."""
    import multiprocessing

    for child in multiprocessing.active_children():  # DataLoader workers a cycle kept alive
        child.terminate()
        child.join()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def setup_worker_logging(run_dir: Path, rank: int) -> None:
    """Spawned processes do not inherit Hydra's logging: rank 0 appends to the run's log, the
    others print warnings only."""
    root = logging.getLogger()
    root.handlers.clear()
    fmt = logging.Formatter(f"[%(asctime)s][%(name)s][%(levelname)s][rank{rank}] - %(message)s")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    root.addHandler(console)
    main = rank == 0
    if main:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    root.setLevel(logging.INFO if main else logging.WARNING)


def shared_run_dir(run_dir: Path, info: DistInfo) -> Path:
    """The job's one run directory: rank 0's.

    Under torchrun every rank ran Hydra; the others adopt rank 0's directory, stop writing to
    their own log file, and remove the (empty) directory their Hydra made.
    """
    if not info.distributed:
        return run_dir
    if info.is_main:
        return Path(broadcast_object(str(first_attempt_dir(run_dir))))
    main_dir = Path(broadcast_object(str(run_dir)))
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.WARNING)
    if run_dir.resolve() != main_dir.resolve() and _only_hydra_files(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    return main_dir


def elastic_restarts() -> int:
    """How often torchrun restarted this job's workers (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def first_attempt_dir(run_dir: Path) -> Path:
    """Under torchrun, the run directory of the job's first attempt (restarts continue there,
    so ``trainer.resume=auto`` finds its checkpoints): a marker named after torchrun's run id
    in the runs folder remembers it. The directory a restart's Hydra made is removed."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id or run_id == "none":
        return run_dir
    marker = run_dir.parent / f".elastic-{run_id}"
    if not marker.is_file():
        marker.write_text(str(run_dir))
        return run_dir
    first = Path(marker.read_text().strip())
    if first.resolve() != run_dir.resolve() and _only_hydra_files(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    return first


def _only_hydra_files(d: Path) -> bool:
    return d.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in d.iterdir())
