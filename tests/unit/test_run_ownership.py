"""Who owns a run directory (segkit.reporting.run_ownership, segkit.run.start_checks): live and
dead runs on this and other hosts, earlier work refused, resumed or moved aside, the ranks of a
job, and a sweep job's user error reported without a traceback."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import OmegaConf

from segkit.errors import ConfigError, JobFailed, RunDirError, run_task
from segkit.reporting import run_ownership as own
from segkit.reporting.run_files import read_status, write_status
from segkit.run import start_checks

HOST = socket.gethostname()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _running(pid: int, host: str = HOST) -> dict:
    return {"status": "running", "pid": pid, "host": host, "command": "python train.py"}


def test_a_run_is_live_while_its_process_is_on_this_host_or_its_heartbeat_elsewhere():
    assert own.is_live(_running(os.getppid()), age_s=10_000)  # alive: the age does not matter
    assert not own.is_live(_running(_dead_pid()), age_s=0)
    assert not own.is_live(_running(os.getpid()), age_s=0)  # this process: the same run
    assert own.is_live(_running(1, host="other-node"), age_s=own.STALE_AFTER_S - 1)
    assert not own.is_live(_running(1, host="other-node"), age_s=own.STALE_AFTER_S + 1)
    assert not own.is_live({**_running(os.getppid()), "status": "finished"}, age_s=0)
    assert not own.is_live(None, age_s=0)


def _earlier_run(run_dir: Path, status: str = "finished") -> dict[str, bytes]:
    """A run directory as a finished run leaves it; returns its files' bytes."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"weights")
    (run_dir / "metrics.csv").write_text("epoch,step\n1,6\n")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    write_status(run_dir, "running")
    write_status(run_dir, status, best_miou=0.639, best_epoch=40, reason="")
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_an_earlier_run_is_refused_resumed_or_moved_aside(tmp_path):
    run_dir = tmp_path / "exp1"
    files = _earlier_run(run_dir)
    with pytest.raises(RunDirError) as err:
        own.claim_run_dir(run_dir, resume=False, overwrite=False)
    assert err.value.exit_code == 7
    message = str(err.value)
    assert f"{run_dir} holds an earlier run (finished, best val mIoU 0.6390 at epoch 40" in message
    assert "resume=auto" in message and "overwrite=true" in message and "hydra.run.dir" in message
    assert read_status(run_dir)["status"] == "finished"

    moved = own.claim_run_dir(run_dir, resume=False, overwrite=True)
    assert moved.parent == run_dir / "replaced"
    kept = {str(p.relative_to(moved)): p.read_bytes() for p in moved.rglob("*") if p.is_file()}
    assert kept == files  # .hydra/ included: the claim comes before Hydra writes
    assert sorted(p.name for p in run_dir.iterdir()) == ["replaced", "status.json"]
    status = read_status(run_dir)
    assert (status["status"], status["pid"]) == ("running", os.getpid())

    _earlier_run(run_dir)  # overwritten twice (in one second): two folders
    assert own.claim_run_dir(run_dir, resume=False, overwrite=True) != moved


def test_resuming_keeps_what_the_restart_bookkeeping_reads(tmp_path):
    _earlier_run(tmp_path, status="interrupted")
    write_status(tmp_path, "interrupted", reason="SIGTERM at step 5", requeued=True, restarts=1)
    assert own.claim_run_dir(tmp_path, resume=True, overwrite=False) is None
    status = read_status(tmp_path)
    assert status["status"] == "running" and status["pid"] == os.getpid()
    assert (status["reason"], status["requeued"], status["restarts"]) == ("SIGTERM at step 5", 1, 1)
    assert (tmp_path / "checkpoints" / "best.pt").read_bytes() == b"weights"


def test_a_directory_without_work_is_free(tmp_path):
    """A run that failed while starting (a config error) left only Hydra's files."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "train.log").write_text("error\n")
    write_status(tmp_path, "failed", reason="ConfigError: optimizer.lr='abc'")
    assert own.claim_run_dir(tmp_path, resume=False, overwrite=False) is None
    assert own.claim_run_dir(tmp_path / "new" / "dir", resume=False, overwrite=False) is None


def test_a_live_run_keeps_its_directory_whatever_the_new_run_asks(tmp_path):
    _earlier_run(tmp_path)
    status = {**_running(os.getppid()), "started_at": "2026-01-01T00:00:00+0000"}
    (tmp_path / "status.json").write_text(json.dumps(status))
    for resume, overwrite in ((False, False), (True, False), (False, True)):
        with pytest.raises(RunDirError, match="belongs to a run that is still going") as err:
            own.claim_run_dir(tmp_path, resume=resume, overwrite=overwrite)
    assert f"pid {os.getppid()} on {HOST}" in str(err.value)
    assert "command: python train.py" in str(err.value)
    assert not (tmp_path / "replaced").exists()
    assert json.loads((tmp_path / "status.json").read_text()) == status
    with pytest.raises(ConfigError, match="resume and overwrite=true together"):
        own.claim_run_dir(tmp_path, resume=True, overwrite=True)


def _config(run_dir: Path, **keys) -> OmegaConf:
    return OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}}, "resume": None, **keys})


def test_the_other_ranks_and_restarts_of_a_job_claim_nothing(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _earlier_run(run_dir)  # a first attempt's files: a restart continues there
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")  # rank 1 on a second node
    assert start_checks.claim(_config(run_dir)) is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
    with pytest.raises(SystemExit) as end:  # its first attempt was refused: so is the restart
        start_checks.TrainStartChecks().on_run_start(_config(run_dir))
    assert end.value.code == 7
    (tmp_path / ".elastic-job7").write_text(str(run_dir))  # the first attempt trained
    assert start_checks.claim(_config(run_dir)) is None
    assert read_status(run_dir)["status"] == "finished"
    with pytest.raises(ConfigError, match="overwrite='yes': expected true or false"):
        start_checks.overwrite_flag(_config(run_dir, overwrite="yes"))


def test_a_claim_that_ends_before_training_leaves_a_failed_status(tmp_path):
    heartbeat = start_checks.claim(_config(tmp_path / "run", overwrite=False))
    assert read_status(tmp_path / "run")["status"] == "running"
    heartbeat.stop()  # what atexit does when a config error ends the process
    status = read_status(tmp_path / "run")
    assert status["status"] == "failed" and "ended before training" in status["reason"]


def test_the_heartbeat_refreshes_the_status_time(tmp_path):
    write_status(tmp_path, "running")
    os.utime(tmp_path / "status.json", (0, 0))
    beat = own.Heartbeat(tmp_path, every_s=0.01).start()
    try:
        for _ in range(500):
            if own.status_age_s(tmp_path) < 60:
                break
            beat._stop.wait(0.01)
    finally:
        beat.stop()
    assert own.status_age_s(tmp_path) < 60


def test_a_sweep_jobs_user_error_fails_the_job_without_a_traceback(monkeypatch):
    class Multirun:
        mode = RunMode.MULTIRUN

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: Multirun))

    def task(cfg):
        raise ConfigError("optimizer.lr='abc': expected a number > 0")

    with pytest.raises(JobFailed) as err:
        run_task(task, None)
    assert isinstance(err.value, CompactHydraException)  # Hydra prints its message alone
    assert str(err.value) == "ConfigError: optimizer.lr='abc': expected a number > 0"
    back = pickle.loads(pickle.dumps(err.value))  # submitit sends it between processes
    assert (back.kind, back.exit_code, str(back)) == ("ConfigError", 2, str(err.value))
