"""SLURM for real: sweeps through ``hydra/launcher=slurm`` (as shipped; the tests override only
what this node lacks: GPUs, memory, cores) on a throwaway one-node cluster
(`tests.e2e.slurm_cluster`), with real signals from the real daemons: preemption with the user
signal, a time limit, a requeue by the cluster, a job that fails for a real reason, two tasks
per node. Every sweep is submitted at once (the session fixture ``slurm_sweeps``); each test
reads its own. All on one xdist worker: the cluster lives as long as that worker's session."""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.io import checkpoint as ck
from tests.conftest import TINY, start_cli
from tests.e2e.conftest import DDP_RUN, one_run_dir
from tests.e2e.slurm_cluster import SlurmCluster, install_packages

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

# What this node lacks (no GPU, 1 CPU per job so that every job runs at once); the rest of
# conf/hydra/launcher/slurm.yaml as shipped.
NODE = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]
# TINY: 2 epochs of 6 steps, the session's tiny_run straight through (the reference weights);
# a job of `case=...` waits at step 8 (epoch 2, batch 2) of its first attempt for a signal
# (tests.faults.SignalAwaitingCrossEntropy); with 2 tasks (3 steps per epoch) at step 5
WAITING = [*TINY, "dataset.check=off", "loss._target_=tests.faults.SignalAwaitingCrossEntropy"]
WAIT = "loss:\n  wait_at_step: {step}\n  marker: ${{hydra:runtime.output_dir}}/waiting\n"
# test-only config group (hydra.searchpath): one job per case in one sweep
CASES = {
    "preempt": WAIT.format(step=8),  # scancel --signal=USR2
    "requeue": WAIT.format(step=8),  # scontrol requeue
    "bad_data": WAIT.format(step=0) + "dataset:\n  root: BAD_ROOT\n",
    "time_limit": WAIT.format(step=8),  # SLURM's own signal before timeout_min
    "preempt_2_tasks": WAIT.format(step=5),  # scancel --signal=USR2 to both tasks
}
TIMEOUT_S = 600  # a whole sweep, on a loaded machine


@dataclass
class Sweep:
    folder: Path
    returncode: int
    output: str

    def rows(self) -> list[dict]:
        with open(self.folder / "summary.csv", newline="") as f:
            return list(csv.DictReader(f))

    def job_log(self, job: int) -> str:
        """What submitit's job ``job`` printed, every attempt (``--open-mode=append``)."""
        logs = list(self.folder.glob(f".submitit/*_{job}/*_{job}_0_log.out"))
        if not logs:  # a one-job sweep is a plain job, not an array
            logs = list(self.folder.glob(".submitit/*/*_0_log.out"))
        (log,) = logs
        return log.read_text()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """The cluster, its daemons stopped at the end of the session (its logs stay in the
    session's folder)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    why = install_packages()
    if why:
        pytest.skip(f"no SLURM cluster: {why}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm-cluster")).start()
    yield cluster
    cluster.stop()


def _bad_demo_root(root: Path) -> Path:
    """A demo cache of TINY's demo set whose every train mask holds class 9 (of 5)."""
    from segkit.data.demo import make_demo_dataset

    voc = make_demo_dataset(root, num_train=24, num_val=7, size=(32, 32))
    split = (voc / "VOC2007" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    for name in split:
        path = voc / "VOC2007" / "SegmentationClass" / f"{name}.png"
        Image.fromarray(np.full((32, 32), 9, np.uint8)).save(path)
    return root


def _cases(folder: Path, bad_root: Path) -> Path:
    group = folder / "case"
    group.mkdir(parents=True)
    for name, text in CASES.items():
        body = text.replace("BAD_ROOT", str(bad_root))
        (group / f"{name}.yaml").write_text("# @package _global_\n" + body)
    return folder


def _start(cluster: SlurmCluster, root: Path, name: str, *args: str):
    """The sweep's launcher (``train.py -m``, warm: tests.conftest.start_cli), its output in
    ``<name>.out``."""
    args = (*NODE, *args, f"hydra.sweep.dir={root / name}")
    out = root / f"{name}.out"
    return start_cli("train.py", "-m", *args, cwd=root, output=out, env=cluster.env)


def _when_waiting(marker: Path, deadline: float) -> str:
    """The SLURM job id a job waiting for a signal wrote into ``marker``."""
    while not marker.is_file():
        assert time.monotonic() < deadline, f"no job reached {marker}"
        time.sleep(0.2)
    return marker.read_text().strip()


@pytest.fixture(scope="session")
def slurm_sweeps(slurm_cluster, tmp_path_factory) -> dict[str, Sweep]:
    """Three sweeps at once: ``main`` (preempt, requeue, bad_data), ``time_limit``
    (timeout_min=2, signal_delay_s=20: SLURM checks its timers every 30 s, so USR2 comes 70 to
    100 s into the job, after the start on a loaded machine) and ``tasks`` (tasks_per_node=2).
    The USR2 and the requeue go to main's jobs 0 and 1 once they wait."""
    root = tmp_path_factory.mktemp("slurm")
    search = f"hydra.searchpath=[file://{_cases(root / 'conf', _bad_demo_root(root / 'bad'))}]"
    procs = {
        "main": _start(slurm_cluster, root, "main", *WAITING, search,
                       "+case=preempt,requeue,bad_data"),
        "time_limit": _start(slurm_cluster, root, "time_limit", *WAITING, search,
                             "+case=time_limit", "hydra.launcher.timeout_min=2",
                             "hydra.launcher.signal_delay_s=20"),
        "tasks": _start(slurm_cluster, root, "tasks", *DDP_RUN[:-2], "trainer.log_every=1",
                        "loss._target_=tests.faults.SignalAwaitingCrossEntropy", search,
                        "+case=preempt_2_tasks", "hydra.launcher.tasks_per_node=2"),
    }  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    try:
        job = _when_waiting(root / "main" / "0" / "waiting", deadline)
        slurm_cluster.run("scancel", "--signal=USR2", job)  # PreemptParameters=send_user_signal
        job = _when_waiting(root / "main" / "1" / "waiting", deadline)
        slurm_cluster.run("scontrol", "requeue", job)  # PreemptMode=REQUEUE
        job = _when_waiting(root / "tasks" / "0" / "waiting", deadline)
        slurm_cluster.run("scancel", "--signal=USR2", job)  # to both ranks
        for proc in procs.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:  # a launcher still waiting for its jobs is a failure: its output tells why
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        name: Sweep(root / name, proc.returncode, (root / f"{name}.out").read_text())
        for name, proc in procs.items()
    }


def _submitit_says(log: str, text: str) -> int:
    """How often submitit logged ``text`` (once Hydra configured logging, each line twice)."""
    return sum(line.startswith("submitit ") and text in line for line in log.splitlines())


def _assert_resumed_to_the_reference(
    run: Path, reference: Path, cause: str, at_step: int = 8
) -> dict:
    """The job restarted once from its interrupt checkpoint at ``at_step`` in the same run
    folder and ended with weights bit-identical to the run ``reference`` (straight through)."""
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["restarts"] >= 1, status
    assert cause in status["restart_cause"], status
    assert f"interrupted by SIGUSR2 at step {at_step}" in status["restart_cause"] or (
        "SIGTERM" in cause
    )
    log = (run / "train.log").read_text()
    assert f"interrupt.pt at epoch 1, step {at_step}" in log  # resumed there, not from step 0
    assert not (run / "checkpoints" / "interrupt.pt").exists()  # superseded by last.pt
    straight, resumed = (ck.load(r / "checkpoints" / "last.pt") for r in (reference, run))
    assert resumed["step"] == straight["step"] > at_step
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    return status


def test_sweep_runs_as_slurm_jobs_and_ends_with_its_summary(slurm_sweeps, tiny_run):
    """Three jobs of one array; the two that completed and the one that failed (its own
    test below) are in the summary, once each."""
    main = slurm_sweeps["main"]
    assert main.returncode != 0, main.output[-3000:]  # bad_data failed
    rows = main.rows()
    assert [(r["job"], r["overrides"].split()[-1], r["status"]) for r in rows] == [
        ("0", "+case=preempt", "completed"),
        ("1", "+case=requeue", "completed"),
        ("2", "+case=bad_data", "failed"),
    ], main.output[-3000:]
    straight = json.loads((tiny_run / "result.json").read_text())["best_miou"]
    for row in rows[:2]:  # the same weights as straight through, the same score
        assert float(row["best_miou"]) == round(straight, 4), row
    assert "DataError: bad sample" in main.output  # why the sweep exits non-zero
    for job in range(3):  # SLURM ran each as a task of one job array
        assert re.search(rf"job_id=\d+_{job}, hostname=", main.job_log(job))


def test_preempted_with_the_user_signal_requeued_by_submitit_resumes_exactly(
    slurm_sweeps, tiny_run
):
    main = slurm_sweeps["main"]
    run = main.folder / "0"
    _assert_resumed_to_the_reference(run, tiny_run, "requeued by submitit")
    log = main.job_log(0)
    assert "this job is preempted" in log  # submitit's verdict: not counted as a time-out
    assert _submitit_says(log, "Starting with JobEnvironment") == 2


def test_requeue_by_the_cluster_resumes_from_the_last_state_nothing_lost(slurm_sweeps, tiny_run):
    main = slurm_sweeps["main"]
    status = _assert_resumed_to_the_reference(
        main.folder / "1", tiny_run, "requeued by SLURM after Interrupted: "
        "interrupted by SIGTERM at step 8"
    )  # fmt: skip
    assert status["restarts"] == 1
    log = main.job_log(1)
    assert _submitit_says(log, "Starting with JobEnvironment") == 2
    # the first attempt left no result: the sweep waited for the second one
    assert "the job is requeued: the next attempt resumes" in log
    assert _submitit_says(log, "Job completed successfully") == 1


def test_time_limit_signal_before_timeout_saves_requeues_and_finishes(slurm_sweeps, tiny_run):
    sweep = slurm_sweeps["time_limit"]
    assert sweep.returncode == 0, sweep.output[-3000:]
    assert [r["status"] for r in sweep.rows()] == ["completed"]
    _assert_resumed_to_the_reference(sweep.folder / "0", tiny_run, "requeued by submitit")
    log = sweep.job_log(0)
    assert "this job is timed-out" in log  # counted against max_num_timeout
    assert "remaining timeouts" in log


def test_a_job_failing_for_a_real_reason_fails_once_with_its_message(slurm_sweeps):
    main = slurm_sweeps["main"]
    row = main.rows()[2]
    assert row["status"] == "failed" and row["error"].startswith("DataError: bad sample"), row
    assert "SegmentationClass/" in row["error"]  # the file (the summary keeps 300 characters)
    status = json.loads((main.folder / "2" / "status.json").read_text())
    assert status["status"] == "failed" and "restarts" not in status, status
    assert "label values outside [0, 5)" in status["reason"] and "9 (1024 px)" in status["reason"]
    assert _submitit_says(main.job_log(2), "Starting with JobEnvironment") == 1  # not requeued


def test_two_tasks_per_node_train_like_launch_devices_2(slurm_sweeps, ddp_run):
    """srun's two tasks are the two ranks of one job (SLURM's task variables), preempted with
    USR2 at step 5 (both ranks get it; rank 0 requeues the job): the same weights and
    validation as ``launch.devices=2`` uninterrupted (the session's ddp_run)."""
    sweep = slurm_sweeps["tasks"]
    assert sweep.returncode == 0, sweep.output[-3000:]
    assert [r["status"] for r in sweep.rows()] == ["completed"]
    assert len((sweep.folder / "summary_rows.jsonl").read_text().splitlines()) == 1  # rank 0's
    run = sweep.folder / "0"
    log = (run / "train.log").read_text()
    assert "world size 2, backend gloo" in log and "rank -> device: 0: cpu, 1: cpu" in log
    spawned = one_run_dir(ddp_run)
    status = _assert_resumed_to_the_reference(run, spawned, "requeued by submitit", at_step=5)
    assert status["restarts"] == 1
    slurm_ckpt, spawned_ckpt = (ck.load(r / "checkpoints" / "last.pt") for r in (run, spawned))
    assert slurm_ckpt["world_size"] == 2
    for key in ("miou", "pixel_acc", "loss"):
        assert slurm_ckpt["metrics"][key] == spawned_ckpt["metrics"][key], key
    iou = spawned_ckpt["metrics"]["iou"]
    assert slurm_ckpt["metrics"]["iou"] == pytest.approx(iou, nan_ok=True, abs=0)
