"""A checkpoint from someone else that runs code when unpickled, for the safety tests of both
folders (tests/unit/test_safety.py in-process, tests/e2e/test_safety_cli.py through the CLIs).
A pytest plugin of tests/conftest.py: the ``crafted`` fixture is seen everywhere."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from segkit.errors import CheckpointError

RISK = r"(?s)posix\.system.*arbitrary code.*convert_checkpoint\.py .*--trust"
EXIT = getattr(CheckpointError, "exit_code", 1)  # what the CLI ends with on a refused file


class RunsShell:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.fixture
def crafted(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``(a real segkit checkpoint plus one RunsShell object, the file it would create)``."""
    import torch  # here, not at import: tests/conftest.py loads this plugin in xdist's controller

    from segkit.io import checkpoint as ck

    ckpt = ck.load(tiny_run / "checkpoints" / "last.pt")
    marker = tmp_path / "marker"
    ckpt["metrics"]["note"] = RunsShell(marker)
    path = tmp_path / "crafted.pt"
    torch.save(ckpt, path)
    return path, marker
