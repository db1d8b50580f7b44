"""What a SLURM job's environment tells segkit, without a cluster (the real daemons:
tests/e2e/test_slurm.py): the ranks of a job of several tasks, and whether SLURM is requeuing
the job that got a SIGTERM."""

from __future__ import annotations

import os
import stat

import pytest

from segkit import dist
from segkit.engine import signals

TORCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def slurm_task(monkeypatch):
    """Task 3 of a 2-node x 2-task submitit job (no torch variables yet)."""
    for name in TORCH_VARS:
        monkeypatch.delenv(name, raising=False)
    env = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "77",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_tasks_of_a_slurm_job_become_torch_ranks(slurm_task):
    dist.adopt_slurm_tasks()
    got = {name: os.environ[name] for name in TORCH_VARS}
    port = got.pop("MASTER_PORT")
    assert got == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu07",  # the job's first node
    }
    assert dist.launched_by_torchrun() and dist.launcher_rank() == 3
    for name in TORCH_VARS:  # the next attempt (or another task) starts without them
        del os.environ[name]
    dist.adopt_slurm_tasks()
    assert os.environ["MASTER_PORT"] == port  # every task, every attempt: the same port


def test_torchrun_variables_and_single_tasks_are_left_alone(slurm_task, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    dist.adopt_slurm_tasks()  # torchrun inside a SLURM job: torchrun's ranks win
    assert os.environ["WORLD_SIZE"] == "8" and "MASTER_PORT" not in os.environ
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    dist.adopt_slurm_tasks()  # one task: segkit starts its own workers
    assert "RANK" not in os.environ and dist.launcher_rank() == 0


@pytest.mark.parametrize(
    ("restarts", "this_attempt", "requeuing"), [(1, "0", True), (2, "1", True), (1, "1", False)]
)
def test_a_requeue_is_told_by_the_restart_count_of_scontrol(
    slurm_task, monkeypatch, tmp_path, restarts, this_attempt, requeuing
):
    """``scontrol requeue`` counts the restart before its SIGTERM reaches the job; ``scancel``
    does not."""
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(
        f"#!/bin/sh\necho 'JobId=77 JobState=COMPLETING Requeue=1 Restarts={restarts} x=1'\n"
    )
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_RESTART_COUNT", this_attempt)
    assert signals.requeued_by_slurm() is requeuing
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert signals.requeued_by_slurm() is False  # not a SLURM job


def test_no_scontrol_means_a_plain_stop(slurm_task, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert signals.requeued_by_slurm() is False
