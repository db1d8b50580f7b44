"""segkit.dist in one process: the sampler that shards the evaluation set across ranks
(multi-process training: tests/e2e/test_distributed.py)."""

from __future__ import annotations

from segkit import dist


def test_shard_sampler_covers_every_index_once():
    shards = [list(dist.ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
    assert [len(dist.ShardSampler(7, r, 3)) for r in range(3)] == [3, 2, 2]
