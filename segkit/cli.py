"""What the entry points share: turning a user error into a clean message.

Errors caused by the user's input (data, checkpoint, config values) are printed as one
message naming the file / key and the fix, and the process exits with status 1
(``SEGKIT_TRACEBACK=1`` shows the traceback too). In a
Hydra multirun the error is re-raised instead, so Hydra records the job as failed, the
sweep goes on, and the sweep exits non-zero.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode

from segkit.checkpoint import CheckpointError
from segkit.errors import ConfigError

log = logging.getLogger("segkit")


def _user_error(e: BaseException) -> BaseException | None:
    """The user-facing cause of ``e``, or None for a bug (which keeps its traceback)."""
    from segkit.data.io import DataError

    if isinstance(e, InstantiationException):
        # a constructor refused a config value (or a config key does not exist)
        cause = e.__cause__
        if cause is None or isinstance(cause, ValueError | TypeError | FileNotFoundError):
            return cause or e
        return _user_error(cause)
    if isinstance(e, DataError | CheckpointError | ConfigError | FileNotFoundError):
        return e
    return None


def run_task(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Call ``fn(cfg)`` with segkit's error policy (see module docstring)."""
    try:
        return fn(cfg)
    except Exception as e:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        cause = _user_error(e)
        if cause is None or multirun or os.environ.get("SEGKIT_TRACEBACK"):
            log.exception("job failed")
            raise
        log.error("%s: %s", type(cause).__name__, cause)
        print(f"\nsegkit: error: {cause}", file=sys.stderr)
        sys.exit(1)
