"""Checkpoint writes that survive anything: a failed write, a kill during the best write."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from segkit.errors import StorageError
from segkit.io import checkpoint as ck
from tests.conftest import REPO, TINY, run_cli


def test_a_failed_write_leaves_the_previous_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    ck.save_atomic({"model": {"w": torch.ones(3)}, "config": {}, "epoch": 1}, path)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StorageError) as e:
        ck.save_atomic({"model": {"w": torch.zeros(1000)}, "config": {}, "epoch": 2}, path)
    monkeypatch.undo()
    message = str(e.value)
    assert "No space left on device" in message and str(path.parent) in message
    assert "the file needs about 0.0 MB" in message and "trainer.resume=auto" in message
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left
    assert ck.load(path)["epoch"] == 1


def test_a_kill_during_the_first_best_write_ends_with_a_matching_best(tmp_path):
    args = [*TINY, "trainer.max_epochs=2", "hydra.run.dir=run", "dataset.check=off"]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "killer"), str(REPO)])}
    killed = run_cli("train.py", *args, cwd=tmp_path, env=env)
    assert killed.returncode == -9  # SIGKILL inside the first best.pt write
    ckpts = tmp_path / "run" / "checkpoints"
    assert not (ckpts / "best.pt").exists() and list(ckpts.glob(".best.pt.tmp-*"))
    resumed = run_cli("train.py", *args, "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(ckpts.glob(".*.tmp-*"))
    last, best = ck.load(ckpts / "last.pt"), ck.load(ckpts / "best.pt")
    assert best["epoch"] == last["best_epoch"]
    assert best["metrics"]["miou"] == pytest.approx(last["best_miou"])
