"""Past one machine: two torchrun "nodes" on localhost (gloo) make one job."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import REPO, start_cli
from tests.e2e.conftest import DDP_ARGS, one_run_dir
from tests.e2e.test_distributed import _assert_metrics_match_single_process

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_torchrun_on_localhost_is_one_job(tmp_path):
    """Global rank 0's run directory is the job's (one config snapshot, one event stream); also
    with an EMA of the weights: its BatchNorm statistics (which differ per rank) come from rank
    0 at validation, so the metrics are those of the saved average. (``--standalone`` torchrun:
    the restart test below.)"""
    port = _free_port()
    procs = []
    for node in (0, 1):
        args = [
            "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=job{port}", str(REPO / "train.py"),
            *DDP_ARGS, "trainer.ema_decay=0.9",
        ]  # fmt: skip
        workdir = tmp_path / f"node{node}"
        workdir.mkdir()
        out = tmp_path / f"node{node}.out"
        procs.append((start_cli("torch.distributed.run", *args, cwd=workdir, output=out), out))
        time.sleep(0.5)
    try:
        for proc, out in procs:
            assert proc.wait(timeout=300) == 0, out.read_text()[-4000:]
    finally:  # a node that failed leaves the other one waiting for it
        for proc, _ in procs:
            proc.kill()
    run = one_run_dir(tmp_path / "node0")  # global rank 0 writes the one run directory
    runs1 = tmp_path / "node1" / "outputs" / "train" / "runs"
    assert not runs1.exists() or not any(p.is_dir() for p in runs1.iterdir())  # node 1: none
    log = (run / "train.log").read_text()
    assert "world size 2, backend gloo" in log and "rank -> device: 0: cpu, 1: cpu" in log
    _assert_metrics_match_single_process(run)


def test_torchrun_restart_after_a_rank_failure_resumes_to_the_same_weights(ddp_run, tmp_path):
    """Against the same 2 epochs with ``launch.devices=2`` straight through (the session's
    ddp_run, tests/e2e/conftest.py)."""
    import json

    import torch

    from segkit.io import checkpoint as ck
    from tests.conftest import run_cli

    args = [*DDP_ARGS, "trainer.max_epochs=2"]
    fail_once = [
        "loss._target_=tests.faults.FailingCrossEntropy",
        "+loss.fail_at_step=5",  # 3 steps per epoch: in epoch 2, after epoch 1's checkpoint
        "+loss.first_attempt_only=true",
    ]
    proc = run_cli(
        "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=3",
        str(REPO / "train.py"), *args, *fail_once, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = [p for p in (tmp_path / "outputs" / "train" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1  # the restart continued in the first attempt's run directory
    status = json.loads((runs[0] / "status.json").read_text())
    # 1 restart for the injected failure; a loaded machine may add one for a slow gloo connect
    assert status["status"] == "finished" and status["restarts"] >= 1
    assert "injected failure at training step 5" in (runs[0] / "train.log").read_text()
    a = ck.load(one_run_dir(ddp_run) / "checkpoints" / "last.pt")
    b = ck.load(runs[0] / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
