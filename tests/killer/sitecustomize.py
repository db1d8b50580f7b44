"""Test-only: on PYTHONPATH of a training subprocess, SIGKILLs the process half-way through the
first write of ``best.pt`` (after part of the temp file is on disk), like a kill at that instant.
"""

import os
import signal

from segkit.io import checkpoint

_write = checkpoint.write_file_atomic


def _killing_write(path, write, nbytes=0):
    if path.name == checkpoint.BEST:
        tmp = path.with_name(f".{path.name}{checkpoint.TMP_MARK}{os.getpid()}")
        tmp.write_bytes(b"\0" * 1000)  # a partial file, as a kill mid-write leaves it
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(path, write, nbytes)


checkpoint.write_file_atomic = _killing_write
