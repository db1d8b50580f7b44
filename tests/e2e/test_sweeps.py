"""Sweeps that lose nothing: own folders, launch-time configs, relaunch, fail-fast, Optuna,
submitit (a preempted or timed-out job is requeued and resumes)."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from segkit.io import checkpoint as ck
from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow

QUICK = [
    *TINY,
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "dataset.check=off",
]


def _rows(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_sweeps_started_together_keep_separate_folders(tmp_path):
    """Two ``train.py -m`` started in the same instant (two threads asking the warm
    interpreter: forks, no import between them) in one folder."""
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(run_cli, "train.py", "-m", *QUICK, "seed=1,2", cwd=tmp_path)
            for _ in range(2)
        ]
        for proc in (run.result() for run in runs):
            assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = sorted((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 2
    for sweep in sweeps:
        assert [r["status"] for r in _rows(sweep)] == ["completed", "completed"]


def test_jobs_use_the_config_composed_at_launch(tmp_path):
    extra = tmp_path / "extra" / "loss"
    extra.mkdir(parents=True)
    record = tmp_path / "smoothing.txt"
    (extra / "probe.yaml").write_text(
        "_target_: tests.faults.ConfigEditingLoss\n"
        f"path: {extra / 'probe.yaml'}\nrecord: {record}\n"
        "ignore_index: ${dataset.ignore_index}\nlabel_smoothing: 0.0\n"
    )
    proc = run_cli(
        "train.py", "-m", *QUICK, "loss=probe", "seed=1,2",
        f"hydra.searchpath=[file://{tmp_path / 'extra'}]", f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0.3" in (extra / "probe.yaml").read_text()  # the first job did edit it
    assert record.read_text().split() == ["0.0", "0.0"]  # the second job kept the launch config


def test_relaunched_sweep_skips_finished_jobs_one_row_each(tmp_path):
    args = ["train.py", "-m", *QUICK, "seed=1,2", f"hydra.sweep.dir={tmp_path / 's'}"]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already finished") + again.stderr.count("already finished") == 2
    rows = _rows(tmp_path / "s")
    assert [r["job"] for r in rows] == ["0", "1"]


def test_fail_fast_stops_the_sweep_at_the_first_failure(tmp_path):
    proc = run_cli(
        "train.py", "-m", *QUICK, "loss._target_=tests.faults.FailingCrossEntropy",
        "+loss.fail_at_step=1,null,null", "hydra.launcher.fail_fast=true",
        f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert [r["status"] for r in _rows(tmp_path / "s")] == ["failed"]
    assert "stopping the sweep (fail_fast)" in proc.stdout + proc.stderr


def test_optuna_search_example_with_sqlite_storage_maximises_miou(tmp_path):
    """The shipped search (hparams_search=optuna) with its study in a sqlite file."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    db, sweep = tmp_path / "study.db", tmp_path / "s"
    proc = run_cli(
        "train.py", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *QUICK,
        f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(sweep)
    assert db.is_file() and len(rows) == 2
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert all("optimizer.lr=" in r["overrides"] for r in rows)
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_value" in best and "optimizer.lr" in best


def test_submitit_requeues_a_preempted_job_which_resumes_from_its_interrupt_checkpoint(
    tiny_run, tmp_path
):
    """The submitit launcher (hydra/launcher=submitit_local) runs every job of the sweep and the
    summary has them all; a job signalled before its time limit or preempted is requeued and
    resumes exactly: to the weights of ``TINY`` straight through (the session's tiny_run)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "s"
    # 2 epochs of 6 steps. At step 8 (epoch 2, batch 2) of its first attempt, job 0 gets
    # SIGUSR2 (what submitit's controller sends before the time limit), job 1 SIGTERM then
    # SIGUSR2 (a preemption, as submitit's SlurmJob._interrupt() sends it).
    proc = run_cli(
        "train.py", "-m", "hydra/launcher=submitit_local", *TINY, "dataset.check=off",
        "loss._target_=tests.faults.PreemptedCrossEntropy", "+loss.signal_at_step=8",
        "+loss.signals=[SIGUSR2],[SIGTERM,SIGUSR2]",
        "+loss.marker=${hydra:runtime.output_dir}/signalled", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [(r["job"], r["status"]) for r in _rows(sweep)]
    assert rows == [("0", "completed"), ("1", "completed")]
    straight = ck.load(tiny_run / "checkpoints" / "last.pt")
    for job in ("0", "1"):
        run = sweep / job
        assert (run / "result.json").is_file()
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "finished" and status["restarts"] == 1, status
        assert "requeued by submitit" in status["restart_cause"]
        assert "interrupted by SIGUSR2 at step 8" in status["restart_cause"]
        log = (run / "train.log").read_text()
        assert "interrupt.pt at epoch 1, step 8" in log  # resumed there, not from step 0
        assert not (run / "checkpoints" / "interrupt.pt").exists()  # superseded by last.pt
        resumed = ck.load(run / "checkpoints" / "last.pt")
        assert resumed["step"] == straight["step"] == 12
        for name, tensor in straight["model"].items():
            assert torch.equal(tensor, resumed["model"][name]), (job, name)
