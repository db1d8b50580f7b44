"""Every user-facing error of segkit, and how the entry points report them.

An error caused by the user's input (a config value, a file on disk, a checkpoint) is one of
the classes below; its message names the key or file, what was expected, what was found and
the fix. :func:`run_task` prints such an error as one message, without a traceback, and exits
with status 1 (``SEGKIT_TRACEBACK=1`` shows the traceback too). Anything else is a bug and keeps
its traceback. In a Hydra multirun the error is re-raised instead, so Hydra records the job as
failed, the sweep goes on, and the sweep exits non-zero.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("segkit")


class UserError(Exception):
    """Base of the errors caused by the user's input rather than by a bug in segkit."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and the fix."""


class DataError(UserError, ValueError):
    """A problem with the data on disk or with the dataset config; the message names the file or
    the ``dataset.<key>`` and says how to fix it."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or not a segkit checkpoint."""


def user_error(e: BaseException) -> BaseException | None:
    """The user-facing cause of ``e``, or None for a bug (which keeps its traceback).

    Hydra wraps a constructor's exception in ``InstantiationException``: a constructor that
    refused a config value (ValueError / TypeError / FileNotFoundError) is the user's error.
    """
    from hydra.errors import InstantiationException

    if isinstance(e, InstantiationException):
        cause = e.__cause__
        if cause is None or isinstance(cause, ValueError | TypeError | FileNotFoundError):
            return cause or e
        return user_error(cause)
    if isinstance(e, UserError | FileNotFoundError):
        return e
    return None


def report(cause: BaseException) -> None:
    """Print a user error as one message (to the log and to stderr) and exit with status 1."""
    log.error("%s: %s", type(cause).__name__, cause)
    print(f"\nsegkit: error: {cause}", file=sys.stderr)
    sys.exit(1)


def exit_on_error(fn: Callable[[Any], Any], arg: Any) -> Any:
    """Call ``fn(arg)`` outside Hydra (e.g. checks of the command line); a user error is
    reported as one message and ends the process."""
    try:
        return fn(arg)
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
        if cause is None or multirun or os.environ.get("SEGKIT_TRACEBACK"):
            log.exception("job failed")
            raise
        report(cause)


# --------------------------------------------------------------------------- renamed keys
# old key -> new key (None: removed, with the reason in REMOVED_KEYS)
RENAMED_KEYS: dict[str, str | None] = {
    "data.batch_size": "loader.batch_size",
    "data.val_batch_size": "loader.val_batch_size",
    "data.num_workers": "loader.num_workers",
    "data.train_split": "dataset.train_split",
    "data.val_split": "dataset.val_split",
    "data.check": "dataset.check",
    "batch_size": "loader.batch_size",  # eval.py
    "num_workers": "loader.num_workers",  # eval.py
    "trainer.fail_at_step": None,
    "dataset.one_hot": None,
}
REMOVED_KEYS = {
    "trainer.fail_at_step": "fault injection is test machinery and lives in the tests now",
    "dataset.one_hot": "losses that need one-hot targets build them on the device",
}


def renamed_key_error(key: str) -> ConfigError | None:
    """The error for an old key name (``data.batch_size``, or the whole old ``data`` block),
    or None."""
    key = key.lstrip("+~")
    matches = [old for old in RENAMED_KEYS if key == old or (key == "data" and old[:5] == "data.")]
    if not matches:
        return None
    if key in REMOVED_KEYS:
        return ConfigError(f"{key} was removed: {REMOVED_KEYS[key]}; drop it from your config")
    pairs = ", ".join(f"{old} -> {RENAMED_KEYS[old]}" for old in matches if RENAMED_KEYS[old])
    return ConfigError(f"{key} was renamed ({pairs}); see 'Renamed keys' in README.md")


def check_overrides(args: Iterable[str]) -> None:
    """Stop on old key names in command-line overrides, before Hydra composes anything."""
    for arg in args:
        if "=" in arg and not arg.startswith("-"):
            err = renamed_key_error(arg.split("=", 1)[0])
            if err is not None:
                raise err
