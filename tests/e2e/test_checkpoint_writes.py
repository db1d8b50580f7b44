"""Checkpoint writes that survive a real kill: SIGKILL during the first best.pt write, then a
resume (a failed write, in-process: tests/unit/test_checkpoint.py)."""

from __future__ import annotations

import os

import pytest

from segkit.io import checkpoint as ck
from tests.conftest import REPO, TINY, run_cli


def test_a_kill_during_the_first_best_write_ends_with_a_matching_best(tmp_path):
    args = [*TINY, "trainer.max_epochs=2", "hydra.run.dir=run", "dataset.check=off"]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "killer"), str(REPO)])}
    killed = run_cli("train.py", *args, cwd=tmp_path, env=env)
    assert killed.returncode == -9  # SIGKILL inside the first best.pt write
    ckpts = tmp_path / "run" / "checkpoints"
    assert not (ckpts / "best.pt").exists() and list(ckpts.glob(".best.pt.tmp-*"))
    resumed = run_cli("train.py", *args, "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(ckpts.glob(".*.tmp-*"))
    last, best = ck.load(ckpts / "last.pt"), ck.load(ckpts / "best.pt")
    assert best["epoch"] == last["best_epoch"]
    assert best["metrics"]["miou"] == pytest.approx(last["best_miou"])
