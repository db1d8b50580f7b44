"""Fixtures of the end-to-end tests: a two-process run of ``train.py`` that several tests read
(its checkpoints are the reference of every exact-resume test with 2 processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY, built_once, run_cli

DDP_ARGS = [*TINY, "dataset.check=off"]


def one_run_dir(root: Path) -> Path:
    """The one run directory a ``train.py`` run started in ``root`` made (default location),
    with one event stream and its config snapshots."""
    runs = [p for p in (root / "outputs" / "train" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert (run / "config.yaml").is_file() and (run / ".hydra" / "config.yaml").is_file()
    return run


# ddp_run: 2 epochs of 3 steps (24 images, 2 x 4 per step); a train/loss every step (with 2
# processes a SIGTERM is acted on at logging points: the interrupt tests log every step too)
DDP_RUN = [*DDP_ARGS, "launch.devices=2", "trainer.log_every=1"]


DDP_STDERR = "stderr.txt"  # in ddp_run's folder: what the launcher and its ranks printed


def _train_ddp(root: Path) -> None:
    proc = run_cli("train.py", *DDP_RUN, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (root / DDP_STDERR).write_text(proc.stderr)


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory, segkit_cache) -> Path:
    """The folder ``python train.py DDP_RUN`` ran in (its run directory: ``one_run_dir``), once
    per test session. Read-only: copy what a test changes."""
    return built_once(tmp_path_factory, "ddp-run", _train_ddp)
