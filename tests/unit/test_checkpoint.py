import errno
import os
import pickle
import random

import numpy as np
import pytest
import torch

from segkit.errors import StorageError
from segkit.io import checkpoint as ck


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


def _draws() -> tuple:
    """The next numbers of every generator a checkpoint restores (gaussians included: both
    python and numpy cache the second value of a pair)."""
    return (
        random.random(),
        random.gauss(0.0, 1.0),
        np.random.rand(3).tolist(),
        float(np.random.randn()),
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed + 1)
    torch.manual_seed(seed + 2)


def test_checkpoint_is_plain_data_and_round_trips_bit_exactly(tmp_path):
    _seed(1)
    random.gauss(0.0, 1.0)  # leave a cached gaussian in python's and numpy's generators
    np.random.randn(1)
    model = {
        "w": torch.randn(4, 3),
        "half": torch.randn(5, dtype=torch.bfloat16),
        "n": torch.arange(3),
        "flag": torch.tensor([True, False]),
    }
    history = [{"epoch": 1, "train_loss": 0.1 + 0.2, "miou": None}]
    ckpt = {"model": model, "config": {"model": {}}, "history": history, "rng": ck.rng_state()}
    assert ckpt["rng"]["numpy"]["has_gauss"] == 1 and ckpt["rng"]["python"]["gauss_next"]
    expected = _draws()
    path = tmp_path / "last.pt"
    ck.save_atomic(ckpt, path)
    # plain torch.load with weights_only=True and no allow-list at all reads it
    raw = torch.load(path, weights_only=True)
    for key, tensor in model.items():
        assert raw["model"][key].dtype == tensor.dtype and torch.equal(raw["model"][key], tensor)
    assert raw["history"] == history and raw["history"][0]["train_loss"] == 0.1 + 0.2
    _seed(99)
    ck.set_rng_state(ck.load(path)["rng"])
    assert _draws() == expected


def test_save_refuses_what_would_need_unpickling_and_writes_nothing(tmp_path):
    path = tmp_path / "last.pt"
    bad = {"model": {}, "config": {}, "metrics": {"miou": np.float64(0.5)}}
    with pytest.raises(TypeError, match=r"checkpoint\['metrics'\]\['miou'\] is a numpy\.float64"):
        ck.save_atomic(bad, path)
    assert not path.exists()


def test_previous_format_loads_as_data_and_restores_its_rng(tmp_path):
    """The format before plain RNG states: python's state a tuple, numpy's a tuple holding a
    uint32 array (what ``random.getstate()`` / ``np.random.get_state()`` return)."""
    _seed(5)
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state()}
    old_rng["torch"] = torch.get_rng_state()
    expected = _draws()
    path = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {"model": {}}, "rng": old_rng}, path)
    with pytest.raises(pickle.UnpicklingError):  # really not plain data
        torch.load(path, weights_only=True)
    loaded = ck.load(path)
    assert isinstance(loaded["rng"]["numpy"]["key"], list)
    ck.check_plain(loaded)  # upgraded in memory: saving it again writes the plain format
    _seed(99)
    ck.set_rng_state(loaded["rng"])
    assert _draws() == expected


def test_a_failed_write_leaves_the_previous_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    ck.save_atomic({"model": {"w": torch.ones(3)}, "config": {}, "epoch": 1}, path)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StorageError) as e:
        ck.save_atomic({"model": {"w": torch.zeros(1000)}, "config": {}, "epoch": 2}, path)
    monkeypatch.undo()
    message = str(e.value)
    assert "No space left on device" in message and str(path.parent) in message
    assert "the file needs about 0.0 MB" in message and "resume=auto" in message
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left
    assert ck.load(path)["epoch"] == 1


def test_resume_auto_chooses_by_training_progress_not_file_time(tmp_path):
    """Calibration rewrites best.pt at the end of a run: the newest file, yet behind last.pt.
    Mid-epoch checkpoints (interrupt, periodic) are ahead of the last.pt of their epoch."""
    folder = tmp_path / "run" / ck.CKPT_DIR

    def write(name: str, epoch: int, step: int, epoch_step: int = 0, mtime: int = 0) -> None:
        state = {**_ckpt(1.0), "epoch": epoch, "step": step, "epoch_step": epoch_step}
        ck.save_atomic(state, folder / name)
        os.utime(folder / name, (mtime, mtime))

    write(ck.LAST, 2, 12, mtime=10)
    write(ck.BEST, 1, 6, mtime=20)  # newest: rewritten by calibration
    assert ck.resolve_resume("auto", tmp_path / "run") == folder / ck.LAST
    write(ck.BEST, 2, 12, mtime=30)  # best is the last epoch: last.pt still wins the tie
    assert ck.resolve_resume("auto", tmp_path / "run") == folder / ck.LAST
    write(ck.INTERRUPT, 2, 14, epoch_step=2, mtime=5)  # oldest file, furthest progress
    write(ck.PERIODIC, 2, 13, epoch_step=1, mtime=40)
    assert ck.resolve_resume("auto", tmp_path / "run") == folder / ck.INTERRUPT
