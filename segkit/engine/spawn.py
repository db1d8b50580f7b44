"""Starting and ending processes: starting the workers of ``launch.devices=N`` (passing the stop
signals on to them) and reporting their errors, worker logging, the job's one run directory
(torchrun, elastic restarts). Signals themselves are ``segkit.engine.signals``; ranks,
collectives, samplers and devices are ``segkit.dist``."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from segkit import errors as errs
from segkit.dist import DistInfo, broadcast_object
from segkit.engine.loader import end_worker_processes, held_signals
from segkit.engine.signals import (
    note_preemption,
    preemption_signal,
    stop_signals,
)
from segkit.errors import Interrupted, UserError, user_error

log = logging.getLogger("segkit")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_workers(fn: Callable[[dict, Path], Any], plain_cfg: dict, run_dir: Path, n: int) -> None:
    """Run ``fn(plain_cfg, run_dir)`` in ``n`` DDP processes on this machine.

    ``fn`` must be a module-level function (it is pickled to the workers). The workers are
    forks of one fresh interpreter that has imported ``fn``'s module (:func:`_start_rank_server`):
    the imports are paid once per launching process, not once per rank and sweep job, and no
    state of this process (CUDA, threads) reaches a rank. ``torch.multiprocessing`` joins the
    processes and, if one fails, stops the rest, so no rank is left waiting in a collective. A
    user error in a rank comes back as that error (one message, "rank r: ..."), a rank killed
    by a signal as a DistributedError with the likely cause.
    """
    import torch.multiprocessing as mp

    port = _free_port()
    mask = _start_rank_server(fn.__module__)
    errors = mp.get_context("forkserver").SimpleQueue()
    log.info("starting %d worker processes (DDP, master port %d)", n, port)
    env = dict(os.environ)  # as now: the server's environment is that of its start
    context = mp.start_processes(
        _worker,
        args=(fn, plain_cfg, str(run_dir), n, port, errors, env, mask),
        nprocs=n,
        start_method="forkserver",
        join=False,
    )
    received: list[str] = []  # the stop signals this process got
    forward = _forward_signals(context.processes, received)
    try:
        _wait_for_the_ranks(context.processes, received)
        while not context.join(timeout=1.0):  # raises for a failed rank, ending the others
            pass
    except mp.ProcessExitedException as e:
        if e.signal_name in received:  # sent to the whole job, outside a rank's training loop
            raise Interrupted(
                f"interrupted by {e.signal_name} while rank {e.error_index} was starting or "
                "finishing (outside training, where it cannot save); the last checkpoint is "
                "intact: run the command again with resume=auto (without it if the run "
                "had no checkpoint yet)",
                e.signal_name,
            ) from None
        raise _rank_error(e.error_index, e.exit_code, e.signal_name, errors) from None
    except mp.ProcessRaisedException as e:
        # a bug: keep the rank's traceback, and lead with its last line
        last = [ln for ln in str(e).splitlines() if ln.strip()][-1]
        raise RuntimeError(f"rank {e.error_index} failed: {last}\n{e}") from None
    finally:
        forward()


# Stop and user signals (SIGINT, SIGTERM, SIGHUP, SLURM's and submitit's SIGUSR1/2): a signal to
# the whole process group (Ctrl-C, ``kill -- -PGID``, ``scancel``) must not end the rank server.
SERVER_BLOCKED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _start_rank_server(module: str) -> set[signal.Signals]:
    """Start this process's fork server (multiprocessing's ``forkserver``: a fresh interpreter
    that imports ``module``, then forks a rank per request), once per process, and return this
    thread's signal mask, which the ranks restore (:func:`_worker`).

    A signal to the process group never ends the server: it is what reports the ranks' exit
    statuses here, and a rank may still be saving. It starts with ``SERVER_BLOCKED`` ignored
    and holds them from its first import on (``segkit.engine.rank_server``); its forks
    inherit the hold, so a signal sent while a rank starts waits for the rank's handlers."""
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(["segkit.engine.rank_server", module])  # once running: no-op
    with held_signals(SERVER_BLOCKED) as mask:  # a signal meanwhile reaches the handler restored
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in SERVER_BLOCKED}
        try:
            forkserver.ensure_running()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return mask


def _default_signal_handling(mask: set[signal.Signals]) -> None:
    """In a rank forked by the rank server: Python's own handlers, as in a fresh interpreter, and
    then the launcher's signal mask (a signal held since the fork is delivered now)."""
    for sig in SERVER_BLOCKED:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    if (sig := preemption_signal()) is not None:  # not fatal before training: StopRequest acts
        signal.signal(sig, note_preemption)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


STOP_GRACE_S = 120.0  # how long stopping ranks may take to save before the rest are ended
INTERRUPTED = (130, 143)  # a rank's exit status after a stop signal (it saved first)


def _wait_for_the_ranks(processes: list, received: list[str]) -> None:
    """Return when every rank has ended, or when one failed. A rank that ends because of a stop
    signal (``received`` here, or its own exit status) is not a failure of the others: they
    stop at the same step and save, and torch's join would end them mid-write, so they get
    ``STOP_GRACE_S`` to end by themselves."""
    from multiprocessing.connection import wait

    while alive := [p for p in processes if p.exitcode is None]:
        wait([p.sentinel for p in alive], timeout=1.0)
        codes = [p.exitcode for p in processes if p.exitcode is not None]
        if any(code in INTERRUPTED for code in codes) or (received and codes):
            deadline = time.monotonic() + STOP_GRACE_S
            for p in processes:
                p.join(max(0.0, deadline - time.monotonic()))
            return
        if any(code != 0 for code in codes):
            return


def _forward_signals(processes: list, received: list[str]) -> Callable[[], None]:
    """Pass SIGINT / SIGTERM (and submitit's preemption signal, noted for :func:`requeue`) on to
    the workers (which save and stop) instead of dying here, and append their names to
    ``received``; returns the function that restores the previous handlers."""
    sigs = stop_signals()
    previous = {sig: signal.getsignal(sig) for sig in sigs}

    def handle(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        if signum == signal.SIGINT:  # Ctrl-C: the terminal sent it to the workers already
            return
        if signum == preemption_signal():
            note_preemption(signum)
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

    reported = []
    while not errors.empty():
        reported.append(errors.get())
    first = sorted(reported, key=lambda r: not r[1].startswith(f"rank {rank}:"))
    for kind, message, exit_code in first:
        err = getattr(errs, kind, errs.DistributedError)(message)
        err.exit_code = exit_code
        return err
    if code in INTERRUPTED:
        name = "SIGTERM" if code == 143 else "SIGINT"
        return errs.Interrupted(f"interrupted by {name}; resume with resume=auto", name)
    if signal_name:
        return errs.DistributedError(
            f"rank {rank} was killed by {signal_name}; likely cause: the host ran out of memory "
            "(check `dmesg`; lower loader.batch_size or loader.num_workers) or a scheduler "
            "killed it; the other ranks were stopped. Resume with resume=auto"
        )
    return errs.DistributedError(f"rank {rank} exited with status {code}; see train.log")


def _worker(
    local_rank: int,
    fn,
    plain_cfg: dict,
    run_dir: str,
    world: int,
    port: int,
    errors,
    env: dict[str, str],
    mask: set[signal.Signals],
) -> None:
    os.environ.clear()
    os.environ.update(
        env,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _default_signal_handling(mask)
    # tqdm's default lock is a multiprocessing semaphore, which a rank (ended by os._exit) would
    # leave registered: "resource_tracker: ... leaked semaphore objects" at the job's end
    tqdm.set_lock(threading.RLock())
    multiprocessing.set_start_method(None, force=True)  # loader workers: the platform's default,
    # as in any other process (not the server's forkserver: one more interpreter per rank)
    setup_worker_logging(Path(run_dir), local_rank)
    try:
        fn(plain_cfg, Path(run_dir))
    except Exception as e:
        cause = user_error(e)
        if not isinstance(cause, UserError):
            raise  # a bug: torch.multiprocessing sends the traceback to the parent
        errors.put((type(cause).__name__, f"rank {local_rank}: {cause}", cause.exit_code))
        raise SystemExit(cause.exit_code) from None
    finally:  # a spawned process ends without atexit: multiprocessing's join would wait for them
        end_worker_processes()
    _exit_finished_worker()


def _exit_finished_worker() -> None:
    """End a rank whose work is done and written (files closed, process group destroyed)
    without interpreter finalization: there gloo's threads can still be releasing tensors, or
    a library's daemon thread holds stderr, and CPython aborts (SIGABRT): a finished run,
    then reported as a killed rank. Once in a few hundred runs under load (a CI sweep)."""
    logging.shutdown()  # DataLoader workers are ended already (_worker)
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


def elastic_marker(run_dir: Path) -> Path | None:
    """Under torchrun, the file in the runs folder of ``run_dir`` that names the job's first
    run directory (written when the first attempt starts training); None outside torchrun."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id or run_id == "none":
        return None
    return run_dir.parent / f".elastic-{run_id}"


def first_attempt_dir(run_dir: Path) -> Path:
    """Under torchrun, the run directory of the job's first attempt (restarts continue there,
    so ``resume=auto`` finds its checkpoints): a marker named after torchrun's run id
    in the runs folder remembers it. The directory a restart's Hydra made is removed."""
    marker = elastic_marker(run_dir)
    if marker is None:
        return run_dir
    if not marker.is_file():
        marker.write_text(str(run_dir))
        return run_dir
    first = Path(marker.read_text().strip())
    if first.resolve() != run_dir.resolve() and _only_hydra_files(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    return first


def _only_hydra_files(d: Path) -> bool:
    return d.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in d.iterdir())
