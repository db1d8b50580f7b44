"""Which run owns a run directory. A run starting in a directory claims it: refused while
another run is live there (same host: its pid is alive; another host: its ``status.json`` is
younger than :data:`STALE_AFTER_S`), refused where an earlier run left its work unless the new
run resumes it or ``overwrite`` moves that work aside into ``replaced/<date>/``. The owner keeps
a heartbeat: the modification time of ``status.json``, refreshed every :data:`HEARTBEAT_S`."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segkit.errors import ConfigError, RunDirError, StorageError
from segkit.io.checkpoint import CKPT_DIR
from segkit.reporting.run_files import (
    METRICS_CSV,
    REPLACED_DIR,
    RESULT_FILE,
    STATUS_FILE,
    read_status,
    write_status,
)

HEARTBEAT_S = 30.0
# a run on another host whose status.json is older than this is gone (crashed host, SIGKILL);
# NFS clients may cache a file's times for up to a minute, so this is several heartbeats
STALE_AFTER_S = 300.0
# what an earlier run leaves that a new run would overwrite: a directory with none of these
# (a run that failed while starting) is free
WORK = (CKPT_DIR, RESULT_FILE, METRICS_CSV)
# status.json fields that the restart bookkeeping of a resumed run reads (training.restart_record)
RESTART_FIELDS = ("reason", "requeued", "restarts", "restart_cause")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def status_age_s(run_dir: Path) -> float:
    """Seconds since ``status.json`` was written or its heartbeat refreshed it."""
    return time.time() - (Path(run_dir) / STATUS_FILE).stat().st_mtime


def is_live(status: dict[str, Any] | None, age_s: float) -> bool:
    """Whether the run that wrote ``status`` (``age_s`` seconds ago) is still running, as seen
    from this process: on this host its pid is alive (and is not this process), on another host
    its heartbeat is younger than :data:`STALE_AFTER_S`."""
    if not status or status.get("status") != "running":
        return False
    if status.get("host") == socket.gethostname():
        pid = int(status.get("pid") or 0)
        return pid > 0 and pid != os.getpid() and pid_alive(pid)
    return age_s < STALE_AFTER_S


def holds_work(run_dir: Path) -> bool:
    """Whether an earlier run left checkpoints, metrics or a result in ``run_dir``."""
    ckpts = Path(run_dir) / CKPT_DIR
    if ckpts.is_dir() and any(ckpts.iterdir()):
        return True
    return any((Path(run_dir) / name).is_file() for name in WORK[1:])


def read_status_safe(run_dir: Path) -> dict[str, Any] | None:
    """``status.json``, or None where there is none or it is not JSON (written by hand)."""
    try:
        return read_status(run_dir)
    except (OSError, ValueError):
        return None


def check_not_live(run_dir: Path) -> None:
    """Stop when another live run writes into ``run_dir`` (:func:`is_live`)."""
    status = read_status_safe(run_dir)
    if status and is_live(status, status_age_s(run_dir)):
        raise RunDirError(live_run_message(Path(run_dir), status, status_age_s(run_dir)))


def live_run_message(run_dir: Path, status: dict[str, Any], age_s: float) -> str:
    here = status.get("host") == socket.gethostname()
    seen = "" if here else f" (its status.json was refreshed {age_s:.0f} s ago)"
    return (
        f"{run_dir} belongs to a run that is still going: pid {status.get('pid')} on "
        f"{status.get('host')}, started {status.get('started_at')}{seen}, command: "
        f"{status.get('command')}. Two runs in one directory would mix their checkpoints, "
        "metrics.csv and TensorBoard events, so this run did not start and wrote nothing there. "
        "Fix: wait for that run to end, or give this one its own directory (another "
        "hydra.run.dir=..., or none for a new timestamped one). A run on another host counts as "
        f"gone once its status.json is {STALE_AFTER_S:.0f} s old"
    )


def earlier_run_message(run_dir: Path, status: dict[str, Any] | None) -> str:
    return (
        f"{run_dir} holds an earlier run ({describe(status)}); starting a new run there would "
        "replace its checkpoints, metrics.csv and result.json, so this run did not start. "
        "Choose: resume=auto (continue that run), overwrite=true (start over in this directory; "
        f"the earlier files move to {run_dir / REPLACED_DIR}/<date>/), or another "
        "hydra.run.dir=... (none: a new timestamped directory)"
    )


def describe(status: dict[str, Any] | None) -> str:
    """How an earlier run ended, in words, from its ``status.json``."""
    if not status:
        return "no status.json"
    word = status.get("status")
    if word == "running":  # not live: the process died without a word
        return f"its process, pid {status.get('pid')} on {status.get('host')}, ended while running"
    text = f"{word}"
    if status.get("best_miou") is not None:
        text += f", best val mIoU {status['best_miou']:.4f} at epoch {status.get('best_epoch')}"
    if status.get("reason"):
        text += f", {str(status['reason'])[:200]}"
    if status.get("ended_at"):
        text += f", ended {status['ended_at']}"
    return text


@contextlib.contextmanager
def _claim_lock(run_dir: Path) -> Iterator[None]:
    """Two runs starting together on this host claim one after the other (a lock on the folder
    itself: no lock file is left in it)."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def claim_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Make ``run_dir`` this run's (status.json ``running`` with this pid, host and command),
    before anything else is written there. Returns the folder the earlier run's files moved to
    (``overwrite``), else None.

    Raises:
        RunDirError: another run is live there, or an earlier run's work is there and the new
            run neither resumes it nor overwrites it.
        ConfigError: ``resume`` and ``overwrite`` together.
    """
    if resume and overwrite:
        raise ConfigError(
            "resume and overwrite=true together: resume continues the run in the directory, "
            "overwrite=true moves it aside and starts over; keep one of them"
        )
    run_dir = Path(run_dir).absolute()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(
            f"cannot create the run directory {run_dir}: {e.strerror}; "
            "set hydra.run.dir=/a/writable/path"
        ) from None
    with _claim_lock(run_dir):
        check_not_live(run_dir)
        status, moved = read_status_safe(run_dir), None
        if holds_work(run_dir) and overwrite:
            moved = move_aside(run_dir)
        elif holds_work(run_dir) and not resume:
            raise RunDirError(earlier_run_message(run_dir, status))
        kept = {k: v for k, v in (status or {}).items() if k in RESTART_FIELDS and resume}
        write_status(run_dir, "running", **kept)
    return moved


def move_aside(run_dir: Path) -> Path:
    """Move every file and folder of ``run_dir`` (except earlier moves) into a new
    ``replaced/<date>/`` sub-folder: renames on one filesystem, nothing copied or deleted."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    dest = run_dir / REPLACED_DIR / stamp
    n = 1
    while dest.exists():  # two overwrites in one second
        dest, n = run_dir / REPLACED_DIR / f"{stamp}_{n}", n + 1
    dest.mkdir(parents=True)
    for entry in sorted(run_dir.iterdir()):
        if entry.name != REPLACED_DIR:
            os.rename(entry, dest / entry.name)
    return dest


class Heartbeat:
    """While the run that claimed ``run_dir`` lives: refresh status.json's modification time
    every ``every_s`` (what another host reads, :func:`is_live`); at exit, a status still
    ``running`` with this pid (the run ended before its training wrote a status: a config or
    data error) becomes ``failed``."""

    def __init__(self, run_dir: Path, every_s: float = HEARTBEAT_S) -> None:
        self.path = Path(run_dir).absolute() / STATUS_FILE
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="segkit-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        atexit.register(self.stop)
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def stop(self) -> None:
        self._stop.set()
        status = read_status_safe(self.path.parent)
        if status and status.get("status") == "running" and status.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                reason = "the process ended before training wrote a status; see train.log"
                write_status(self.path.parent, "failed", reason=reason)
