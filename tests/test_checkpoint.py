import os

import pytest
import torch

from segkit import checkpoint as ck


def _ckpt(v: float) -> dict:
    return {"model": {"w": torch.tensor([v])}, "config": {"model": {}}, "epoch": int(v)}


def test_save_atomic_roundtrip_and_no_temp_left(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    ck.save_atomic(_ckpt(1.0), path)
    assert ck.load(path)["model"]["w"].item() == 1.0
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_crash_during_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.save_atomic(_ckpt(1.0), path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_atomic(_ckpt(2.0), path)
    monkeypatch.undo()
    assert ck.load(path)["model"]["w"].item() == 1.0


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ck.CheckpointError, match="nope.pt"):
        ck.load(missing)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match=r"bad\.pt is corrupt"):
        ck.load(bad)
    foreign = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(ck.CheckpointError, match="init_from"):
        ck.load(foreign)


def test_resolve_resume(tmp_path):
    run = tmp_path / "run"
    assert ck.resolve_resume(None, run) is None
    assert ck.resolve_resume("auto", run) is None  # nothing there yet: fresh start
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.resolve_resume(str(run), run)
    last = run / ck.CKPT_DIR / ck.LAST
    ck.save_atomic(_ckpt(3.0), last)
    assert ck.resolve_resume(str(run), tmp_path) == last  # a run directory
    assert ck.resolve_resume(str(last), tmp_path) == last  # a file
    assert ck.resolve_resume("auto", run) == last


def test_resume_auto_skips_a_corrupt_newer_file_but_never_starts_fresh(tmp_path):
    run = tmp_path / "run"
    best = run / ck.CKPT_DIR / ck.BEST
    ck.save_atomic(_ckpt(1.0), best)
    last = run / ck.CKPT_DIR / ck.LAST
    last.write_bytes(b"garbage")
    os.utime(best, (1, 1))  # older
    assert ck.resolve_resume("auto", run) == best
    best.write_bytes(b"garbage too")
    with pytest.raises(ck.CheckpointError, match="no loadable checkpoint"):
        ck.resolve_resume("auto", run)


def test_rng_state_roundtrip():
    state = ck.rng_state()
    a = torch.rand(3)
    ck.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)
