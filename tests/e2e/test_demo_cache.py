"""The demo dataset cache under concurrency: three processes that build it at once build it once
(the dataset in-process: tests/unit/test_demo.py)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from segkit.data import make_demo_dataset
from tests.unit.test_demo import SMALL


def _build(root: str) -> str:
    return str(make_demo_dataset(root, **SMALL))


def test_concurrent_creators_build_once(tmp_path):
    with mp.get_context("fork").Pool(3) as pool:
        paths = pool.map(_build, [str(tmp_path)] * 3)
    assert len(set(paths)) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    built = Path(paths[0]) / "VOC2007/JPEGImages/000000.jpg"
    mtime = built.stat().st_mtime_ns
    make_demo_dataset(tmp_path, **SMALL)
    assert built.stat().st_mtime_ns == mtime  # not rebuilt
