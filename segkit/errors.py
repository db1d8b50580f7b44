"""Every user-facing error of segkit, and how the entry points report them.

An error caused by the user's input (a config value, a file on disk, a checkpoint) is one of
the classes below; its message names the key or file, what was expected, what was found and
the fix. :func:`run_task` prints such an error as one message, without a traceback, and exits
with its code (``SEGKIT_TRACEBACK=1`` shows the traceback too). Anything else is a bug and keeps
its traceback. Exit codes: 2 config or checkpoint, 3 data, 4 diverged, 5 distributed,
6 storage, 7 run directory taken, 130/143 interrupted (SIGINT/SIGTERM), 1 anything else. In a
Hydra multirun the job's error goes to its log file and is raised again as a :class:`JobFailed`
(Hydra records the job as failed, the sweep goes on, and at its end Hydra prints the message
once, without a traceback, and exits 1).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import CompactHydraException

log = logging.getLogger("segkit")


class UserError(Exception):
    """Base of the errors caused by the user's input rather than by a bug in segkit.
    ``exit_code``: the process exit status it ends with (documented in docs/errors.md)."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and the fix."""

    exit_code = 2


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the config."""

    exit_code = 2


class DataError(UserError, ValueError):
    """A problem with the data on disk or with the dataset config; the message names the file or
    the ``dataset.<key>`` and says how to fix it."""

    exit_code = 3


class DivergedError(UserError, RuntimeError):
    """Training diverged: too many consecutive non-finite steps."""

    exit_code = 4


class DistributedError(UserError, RuntimeError):
    """A rank or DataLoader worker died, or the process group failed."""

    exit_code = 5


class StorageError(UserError, OSError):
    """A file could not be written (disk full, permissions, read-only folder)."""

    exit_code = 6


class RunDirError(UserError):
    """The run directory belongs to another run: a live one, or an earlier one whose work a new
    run would overwrite (resume it, ``overwrite=true``, or choose another directory)."""

    exit_code = 7


class JobFailed(CompactHydraException):
    """A sweep job's user error as Hydra reports it at the end of the sweep: the message alone
    (Hydra prints a ``CompactHydraException`` without a traceback). ``kind``: the error's class
    name; ``exit_code``: its exit code."""

    def __init__(self, message: str, kind: str = "", exit_code: int = 1) -> None:
        super().__init__(message)
        self.kind, self.exit_code = kind, exit_code


class Interrupted(UserError):
    """SIGINT / SIGTERM: the run stopped after its current step and saved an ``interrupt``
    checkpoint; ``resume=auto`` continues from it."""

    exit_code = 130

    def __init__(self, message: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.exit_code = 143 if signal_name == "SIGTERM" else 130


def user_error(e: BaseException) -> BaseException | None:
    """The user-facing cause of ``e``, or None for a bug (which keeps its traceback).

    Hydra wraps a constructor's exception in ``InstantiationException``: a constructor that
    refused a config value (ValueError / TypeError / FileNotFoundError) is the user's error.
    """
    from hydra.errors import InstantiationException

    if isinstance(e, InstantiationException):
        cause = e.__cause__
        if isinstance(cause, UserError):
            return cause
        if cause is None or isinstance(cause, ValueError | TypeError | FileNotFoundError):
            return ConfigError(str(cause or e))
        return user_error(cause)
    if isinstance(e, UserError):
        return e
    if isinstance(e, FileNotFoundError):  # a path given in the config
        return ConfigError(str(e))
    return _worker_error(e)


def _worker_error(e: BaseException) -> UserError | None:
    """DataLoader failures that are about the machine, not segkit: a killed worker, a full
    ``/dev/shm``; a user error raised inside a worker comes back wrapped in its traceback."""
    text = str(e)
    if "Original Traceback" in text:  # DataLoader re-raise of an error in a worker
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        kind, _, message = last.partition(": ")
        cls = {c.__name__: c for c in UserError.__subclasses__()}.get(kind.rsplit(".", 1)[-1])
        return cls(message) if cls else None
    if "DataLoader worker" in text and "killed" in text:
        return DistributedError(
            f"{text.strip()}: a data-loading process was killed, most likely because the host ran "
            "out of memory (check `dmesg`); lower loader.num_workers or loader.batch_size"
        )
    if "shared memory" in text or "/dev/shm" in text:
        return DistributedError(
            f"{text.strip().splitlines()[0]}: /dev/shm is too small for the DataLoader workers; "
            "in Docker start the container with --shm-size=8g (or --ipc=host), or set "
            "loader.num_workers=0"
        )
    return None


def log_to_files(cause: BaseException) -> None:
    """A user error into the log files only (the console gets it once, from the caller)."""
    record = logging.LogRecord("segkit", logging.ERROR, "", 0, "%s: %s", None, None)
    record.args = (type(cause).__name__, cause)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def report(cause: BaseException) -> None:
    """Print a user error once (stderr; the run's log files get it too) and exit with its
    ``exit_code``."""
    log_to_files(cause)
    print(f"segkit: error: {cause}", file=sys.stderr, flush=True)
    sys.exit(getattr(cause, "exit_code", 1))


def exit_on_error(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` outside Hydra (e.g. checks of the command line); a user error is
    reported as one message and ends the process."""
    try:
        return fn(*args)
    except UserError as e:
        if os.environ.get("SEGKIT_TRACEBACK"):
            raise
        report(e)


def run_task(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Call ``fn(cfg)`` with segkit's error policy (see the module docstring)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return fn(cfg)
    except Exception as e:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        cause = user_error(e)
        if cause is None or os.environ.get("SEGKIT_TRACEBACK"):
            log.exception("job failed")
            raise
        if multirun:  # Hydra prints it when the sweep ends; a JobFailed has no traceback
            log_to_files(cause)
            kind = type(cause).__name__
            raise JobFailed(f"{kind}: {cause}", kind, cause.exit_code) from None
        report(cause)
