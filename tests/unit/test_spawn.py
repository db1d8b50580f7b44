"""segkit.engine.spawn in one process: how the launcher of ``launch.devices=N`` waits for its
ranks (real processes, forked here; the ranks themselves: tests/e2e/test_distributed.py and
tests/e2e/test_interrupts.py)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from segkit.engine import spawn

FORK = multiprocessing.get_context("fork")


def _rank(code: int, delay_s: float, note: Path) -> None:
    """A rank that ends with ``code`` after ``delay_s``, having written ``note`` (its status)."""
    time.sleep(delay_s)
    note.write_text("written")
    os._exit(code)


def _start(*ranks: tuple[int, float], folder: Path) -> list:
    procs = [
        FORK.Process(target=_rank, args=(code, delay, folder / f"rank{i}"))
        for i, (code, delay) in enumerate(ranks)
    ]
    for p in procs:
        p.start()
    return procs


@pytest.fixture
def ended():
    procs: list = []
    yield procs
    for p in procs:
        p.kill()
        p.join()


@pytest.mark.parametrize("received", [[], ["SIGTERM"]])
def test_a_rank_that_stopped_first_leaves_the_others_time_to_save(tmp_path, ended, received):
    """Rank 1 stops at once (exit 143), rank 0 takes a second longer to write its status:
    the launcher waits for it rather than ending it mid-write (torch's join would)."""
    ended += _start((143, 1.0), (143, 0.0), folder=tmp_path)
    spawn._wait_for_the_ranks(ended, received)
    assert [p.exitcode for p in ended] == [143, 143]
    assert (tmp_path / "rank0").read_text() == "written"


def test_a_failed_rank_is_reported_at_once(tmp_path, ended):
    """A rank that fails (not a stop) ends the wait while the others still run: the launcher
    then stops them (they would wait in a collective for the failed one)."""
    ended += _start((0, 30.0), (1, 0.0), folder=tmp_path)
    start = time.monotonic()
    spawn._wait_for_the_ranks(ended, [])
    assert time.monotonic() - start < 10
    assert ended[0].exitcode is None and ended[1].exitcode == 1


def test_ranks_that_finish_end_the_wait(tmp_path, ended):
    ended += _start((0, 0.2), (0, 0.0), folder=tmp_path)
    spawn._wait_for_the_ranks(ended, [])
    assert [p.exitcode for p in ended] == [0, 0]
