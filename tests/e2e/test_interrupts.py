"""SIGTERM mid-epoch: an interrupt checkpoint, exit 143, and an exact resume (1 and 2 processes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from segkit.io import checkpoint as ck
from tests.conftest import TINY, run_cli
from tests.e2e.conftest import one_run_dir

# 6 steps per epoch with 1 process (24 images, batch 4), 3 with 2; log every step. Straight
# through, BASE is the session's tiny_run (tests/conftest.py; TINY gives the same weights) and,
# with launch.devices=2, its ddp_run (tests/e2e/conftest.py): the references of the exact resumes.
BASE = [*TINY, "trainer.max_epochs=2", "trainer.log_every=1", "dataset.check=off"]


def _signal_at(step: int, to_parent: bool = False, to_group: bool = False) -> list[str]:
    return [
        "loss._target_=tests.faults.SignalingCrossEntropy",
        f"+loss.signal_at_step={step}",
        f"+loss.to_parent={str(to_parent).lower()}",
        f"+loss.to_group={str(to_group).lower()}",
    ]


def _weights(run: Path) -> dict:
    return ck.load(run / "checkpoints" / "last.pt")


def _interrupted_then_resumed(
    tmp_path: Path, extra: list[str], signal: list[str], new_session: bool = False
) -> Path:
    run = ["hydra.run.dir=interrupted"]
    first = run_cli(
        "train.py", *BASE, *extra, *signal, *run, cwd=tmp_path, timeout=180, new_session=new_session
    )
    assert first.returncode == 143, first.stderr[-3000:]
    assert first.stderr.count("segkit: error:") == 1 and "Traceback" not in first.stderr
    assert "resume=auto" in first.stderr
    ckpts = tmp_path / "interrupted" / "checkpoints"
    mid = ck.load(ckpts / "interrupt.pt")
    assert mid["epoch"] == 1 and mid["epoch_step"] > 0  # inside epoch 2
    status = json.loads((tmp_path / "interrupted" / "status.json").read_text())
    assert status["status"] == "interrupted" and "SIGTERM" in status["reason"]
    resume = [*run, "resume=auto"]
    again = run_cli("train.py", *BASE, *extra, *signal, *resume, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (ckpts / "interrupt.pt").exists()  # superseded by the epoch's last.pt
    return tmp_path / "interrupted"


def _same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"] == b["history"]


@pytest.mark.slow
def test_sigterm_to_the_launcher_of_two_processes_then_resume(ddp_run, tmp_path):
    two = ["launch.devices=2"]
    resumed = _interrupted_then_resumed(tmp_path, two, _signal_at(5, to_parent=True))
    _same_weights(_weights(one_run_dir(ddp_run)), _weights(resumed))  # straight through


def _processes_in(folder: Path) -> list[int]:
    """PIDs of the processes whose working directory is ``folder`` (left over from a run)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == folder:
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours
            pass
    return pids


def test_sigterm_to_every_process_with_loader_workers_then_resume(tiny_run, tmp_path):
    """``kill -- -PGID`` (``scancel``, ``pkill -f train.py``) signals the DataLoader workers
    too: they must not die of it (the run would fail, reported as an out-of-memory kill) nor
    keep the run from exiting; the run saves, exits 143, and resumes exactly. (A SIGTERM to
    the main process alone, ``kill PID``, is the same handler: this run's main process gets it
    too.) The SIGTERM arrives during training step 8 (epoch 2, batch 2); the step finishes
    first, and the resumed run, with the same loss class, signals nothing again."""
    extra = ["loader.num_workers=2"]  # the samples do not depend on it: tiny_run is the reference
    signal = _signal_at(8, to_group=True)
    resumed = _interrupted_then_resumed(tmp_path, extra, signal, new_session=True)
    _same_weights(_weights(tiny_run), _weights(resumed))
    assert _processes_in(tmp_path.resolve()) == []


@pytest.mark.slow
def test_sigterm_to_every_process_of_two_ranks_with_loader_workers(tmp_path):
    """The same with ``launch.devices=2``, whose ranks (forks of the rank server) end without
    atexit: an interrupt (143) with its checkpoint, no process left behind. No resume
    here, so the signal comes in epoch 1 (step 2 of 3): every spawn of the loader workers of a
    later epoch (and of validation) would only add time."""
    args = [*BASE, "loader.num_workers=2", "launch.devices=2", *_signal_at(2, to_group=True)]
    proc = run_cli(
        "train.py", *args, "hydra.run.dir=r", cwd=tmp_path, timeout=180, new_session=True
    )
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert proc.stderr.count("segkit: error:") == 1 and "Traceback" not in proc.stderr
    assert ck.load(tmp_path / "r" / "checkpoints" / "interrupt.pt")["epoch_step"] > 0
    assert _processes_in(tmp_path.resolve()) == []
