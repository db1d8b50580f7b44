"""Multi-process training on CPU (gloo), the way users launch it: `launch.devices=2` and
torchrun. Each job must make one run directory with one config snapshot and one event
stream, and its val metrics must equal a single-process evaluation of its checkpoint."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from segkit import dist
from segkit.engine import spawn
from segkit.evaluation.metrics import ConfusionMatrix, evaluate
from segkit.io import checkpoint as ck
from segkit.run import build_datasets, build_loaders, build_loss
from segkit.run.models import load_model
from tests.conftest import compose_train, run_cli
from tests.e2e.conftest import DDP_ARGS, DDP_STDERR, one_run_dir

pytestmark = pytest.mark.slow


def _single_process_metrics(ckpt_path: Path) -> dict:
    """Evaluate a checkpoint's weights in this process on the full val split."""
    model, _ = load_model(ckpt_path)
    cfg = compose_train(*DDP_ARGS)
    info = dist.DistInfo()
    train_ds, val_ds = build_datasets(cfg)
    _, val_loader = build_loaders(cfg, train_ds, val_ds, info)
    cm = ConfusionMatrix(val_ds.num_classes, val_ds.ignore_index)
    return evaluate(model, val_loader, cm, device=info.device, loss_fn=build_loss(cfg, train_ds))


def _assert_metrics_match_single_process(run: Path) -> None:
    ckpt = ck.load(run / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2
    single = _single_process_metrics(run / "checkpoints" / "last.pt")
    assert ckpt["metrics"]["miou"] == single["miou"]
    assert ckpt["metrics"]["pixel_acc"] == single["pixel_acc"]
    assert ckpt["metrics"]["iou"] == pytest.approx(single["iou"], nan_ok=True, abs=0)


def test_devices_2_on_cpu_spawns_ddp_with_one_run_dir(ddp_run):
    """``python train.py launch.devices=2`` (the session's ddp_run, tests/e2e/conftest.py)."""
    run = one_run_dir(ddp_run)
    log = (run / "train.log").read_text()
    assert "starting 2 worker processes" in log and "world size 2, backend gloo" in log
    assert "rank -> device: 0: cpu, 1: cpu" in log
    # the ranks end without interpreter finalization: nothing of theirs is left registered
    assert "leaked" not in (ddp_run / DDP_STDERR).read_text()
    _assert_metrics_match_single_process(run)


def _record_launch(plain: dict, run_dir: Path) -> None:
    """A rank's work in the test below: note its launch's variable and its parent process."""
    rank = os.environ["RANK"]
    (run_dir / f"rank{rank}.txt").write_text(f"{os.environ['SEGKIT_TEST_LAUNCH']} {os.getppid()}")


def test_a_second_launch_forks_its_ranks_from_the_same_server_with_its_environment(
    tmp_path, monkeypatch
):
    """Two launches in one process (a sweep's jobs): every rank is a fork of one rank server,
    which imported segkit once, and each sees the environment of its own launch (as a
    spawned process would: hydra.job.env_set differs per job), not that of the server's start."""
    parents = set()
    for launch in ("first", "second"):
        monkeypatch.setenv("SEGKIT_TEST_LAUNCH", launch)
        run_dir = tmp_path / launch
        run_dir.mkdir()
        spawn.launch_workers(_record_launch, {}, run_dir, 2)
        notes = [(run_dir / f"rank{r}.txt").read_text().split() for r in range(2)]
        assert [name for name, _ in notes] == [launch, launch]
        parents |= {int(parent) for _, parent in notes}
    assert len(parents) == 1 and parents != {os.getpid()}, parents


def test_resume_with_a_different_world_size(ddp_run, tmp_path):
    shutil.copytree(one_run_dir(ddp_run), tmp_path / "run")  # 2 epochs with 2 processes
    proc = run_cli(
        "train.py",
        *DDP_ARGS,
        "trainer.max_epochs=3",
        "resume=auto",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = ck.load(tmp_path / "run" / "checkpoints" / "last.pt")
    # 2 epochs at 2 x 4 images per step (3 steps), then 1 epoch alone (6 steps)
    assert ckpt["epoch"] == 3 and ckpt["step"] == 2 * 3 + 6 and ckpt["world_size"] == 1
    assert "saved by 2 process(es)" in (tmp_path / "run" / "train.log").read_text()


def test_sweep_of_ddp_jobs_records_failures_and_writes_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train.py",
        "-m",
        *DDP_ARGS,
        "trainer.max_epochs=1",
        "launch.devices=2",
        "loss._target_=tests.faults.FailingCrossEntropy",
        "+loss.fail_at_step=null,2,null",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode != 0, "a sweep with a failed job must exit non-zero"
    assert "injected failure at training step 2" in proc.stderr  # rank 1's, reported by job 1
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"], [
        r["error"] for r in rows
    ]
    assert "injected failure at training step 2" in rows[1]["error"]
    assert "+loss.fail_at_step=2" in rows[1]["overrides"]
    for r in (rows[0], rows[2]):
        assert 0.0 <= float(r["best_miou"]) <= 1.0 and r["best_epoch"] == "1"
    assert (sweep / "0" / "result.json").is_file() and (sweep / "2" / "result.json").is_file()
    assert "injected failure at training step 2" in (sweep / "1" / "train.log").read_text()
    md = (sweep / "summary.md").read_text()
    assert "| job" in md and "failed" in md
    assert "Sweep" in proc.stdout


def test_accumulation_on_two_processes_equals_one_process_with_the_same_global_batch(tmp_path):
    """Per step 4 single images: 2 processes x 2 accumulated batches of 1, against 1 process
    x 4 accumulated batches of 1 (run in this process). Each image is its own batch, so
    BatchNorm sees the same batches in both, and every batch weighs 1/4 of the step: the
    parameters agree to float rounding after 2 SGD steps (Adam would turn rounding in tiny
    gradients into whole steps; BatchNorm running statistics are rank 0's alone under DDP and
    are not compared)."""
    import torch

    from segkit.run import train_rank

    common = [*DDP_ARGS, "loader.batch_size=1", "trainer.max_epochs=1", "optimizer=sgd"]
    two = [*common, "launch.devices=2", "trainer.accumulate_grad_batches=2"]
    proc = run_cli(
        "train.py", *two, "trainer.limit_train_batches=4", "hydra.run.dir=two", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = [*common, "trainer.accumulate_grad_batches=4", "trainer.limit_train_batches=8"]
    train_rank(compose_train(*one), tmp_path / "one")
    a = ck.load(tmp_path / "two" / "checkpoints" / "last.pt")
    b = ck.load(tmp_path / "one" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 2 and a["world_size"] == 2
    params = [n for n in b["model"] if not n.endswith(("running_mean", "running_var", "tracked"))]
    for name in params:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-4, atol=1e-6)
