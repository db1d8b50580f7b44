"""The confusion matrix summed across two gloo processes (and a bad label found on one rank
raised on every rank); the metrics in one process: tests/unit/test_metrics.py."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segkit.evaluation.metrics import ConfusionMatrix
from tests.unit.test_metrics import LABEL, PRED


def _all_reduce_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cm = ConfusionMatrix(3)
        cm.update(PRED[:, rank : rank + 1], LABEL[:, rank : rank + 1])  # each rank one row
        cm.all_reduce()
        mat = cm.mat.clone()
        cm.reset()  # a second pass: only rank 1 sees a bad label; every rank must raise
        cm.update(PRED[:, :1], LABEL[:, :1] + 2 * rank)
        cm.all_reduce()
        try:
            cm.compute()
            raised = ""
        except ValueError as e:
            raised = str(e)
        if rank == 0:
            torch.save({"mat": mat, "raised": raised}, out_file)
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_across_two_gloo_ranks(tmp_path):
    out = tmp_path / "mat.pt"
    args = (2, str(tmp_path / "pg"), str(out))
    # forks of this process: what is under test is the sum, not how the processes start
    mp.start_processes(_all_reduce_worker, args=args, nprocs=2, start_method="fork")
    result = torch.load(out)
    assert result["mat"].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert "labels [3]" in result["raised"]  # found on rank 1, raised on rank 0 too
