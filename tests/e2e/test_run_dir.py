"""A run directory belongs to one run (a live run keeps it, an earlier run's work is refused or
moved aside with overwrite=true), and a sweep checks every job before the first one starts."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tests.conftest import TINY, run_cli, start_cli

QUICK = [*TINY, "dataset.check=off", "trainer.limit_val_batches=1"]


def _files(folder: Path, skip: str = "") -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), but those under ``skip``."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in files
        if not skip or p.relative_to(folder).parts[0] != skip
    }


def _start_held(run_dir: Path, gate: Path, cwd: Path, output: Path):
    """``train.py`` into ``run_dir`` with overwrite=true, held live at training step 1 until
    ``gate`` exists (tests.faults.GatedCrossEntropy); what it prints goes to ``output``."""
    args = [
        *QUICK, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "loss._target_=tests.faults.GatedCrossEntropy", f"+loss.gate={gate}",
        f"hydra.run.dir={run_dir}", "overwrite=true",
    ]  # fmt: skip
    return start_cli("train.py", *args, cwd=cwd, output=output)


def _wait_for(path: Path, proc, output: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, output.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_a_run_dir_belongs_to_one_run(tiny_run, tmp_path):
    """A finished run (a copy of the session's tiny_run): a new run there stops and changes no
    byte; overwrite=true moves it into replaced/<date>/ and starts over. While that new run is
    live, a third run into the directory stops at once, touches nothing, and the live run
    finishes normally with only its own rows in metrics.csv."""
    run_dir = tmp_path / "exp1"
    shutil.copytree(tiny_run, run_dir)
    finished = _files(run_dir)

    again = run_cli("train.py", *QUICK, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 7, again.stderr[-3000:]
    assert "holds an earlier run (finished, best val mIoU" in again.stderr
    assert "resume=auto" in again.stderr and "overwrite=true" in again.stderr
    assert again.stderr.count("segkit: error:") == 1 and "Traceback" not in again.stderr
    assert _files(run_dir) == finished  # best.pt, status.json, ... byte for byte

    gate, output = tmp_path / "gate", tmp_path / "live.out"
    live = _start_held(run_dir, gate, tmp_path, output)
    try:
        _wait_for(Path(f"{gate}.reached"), live, output)
        # the live run's TensorBoard writer may flush on its own timer: its events are left out
        held = _files(run_dir, skip="tb")
        second = run_cli("train.py", *QUICK, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert live.poll() is None  # it stopped while the other run was still in its step 1
        assert second.returncode == 7, second.stderr[-3000:]
        assert f"belongs to a run that is still going: pid {live.pid} on " in second.stderr
        assert "command: " in second.stderr and "hydra.run.dir=" in second.stderr
        assert second.stderr.count("segkit: error:") == 1 and "Traceback" not in second.stderr
        assert _files(run_dir, skip="tb") == held  # not even Hydra's .hydra/ or train.log
    finally:
        gate.touch()
        live.wait(timeout=300)
    out = output.read_text()
    assert live.returncode == 0, out[-3000:]
    assert "the earlier run's files are now in" in out
    assert f"  {run_dir / 'checkpoints' / 'best.pt'}\n" in out  # the file list at the end...
    assert f"  {run_dir / 'replaced'}/" not in out  # ...is the new run's

    replaced = list((run_dir / "replaced").iterdir())
    assert len(replaced) == 1 and replaced[0].name.startswith(time.strftime("%Y-%m-%d"))
    assert _files(replaced[0]) == finished  # the earlier run, whole and unchanged
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished" and status["pid"] == live.pid
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 1  # header + the one epoch of the new run
    new_best = (run_dir / "checkpoints" / "best.pt").read_bytes()
    assert new_best != finished["checkpoints/best.pt"]


def test_a_sweep_with_a_bad_value_in_a_later_job_stops_before_the_first_job(tmp_path):
    sweep = tmp_path / "s"
    proc = run_cli(
        "train.py", "-m", *QUICK, "trainer.max_epochs=1", "optimizer.lr=0.001,abc",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "1 of the 2 jobs of this sweep" in proc.stderr and "no job was started" in out
    assert "job 1 (optimizer.lr=abc): optimizer.lr='abc': expected a number" in proc.stderr
    assert "job 0" not in proc.stderr
    assert out.count("segkit: error:") == 1 and "Traceback" not in out
    assert not sweep.exists()  # job 0 did not train: nothing was written
