"""A run whose weights go non-finite ends train.py with exit code 4, one message, and finite
checkpoints (the guards in-process: tests/unit/test_divergence.py)."""

from __future__ import annotations

from segkit.errors import DivergedError
from tests.conftest import run_cli
from tests.unit.test_divergence import RUN, assert_epoch_1_checkpoints_are_finite


def test_weights_driven_to_inf_are_never_saved_and_the_cli_exits_4(tmp_path):
    proc = run_cli(
        "train.py",
        *RUN,
        "optimizer=sgd",
        "optimizer._target_=tests.faults.ExplodingSGD",
        "+optimizer.explode_at_step=9",  # epoch 2: every weight becomes +Inf
        "trainer.max_nonfinite_steps=null",  # only the check before saving can catch it
        cwd=tmp_path,
    )
    assert proc.returncode == DivergedError.exit_code == 4, proc.stderr[-3000:]
    assert "weights hold NaN/Inf after epoch 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert_epoch_1_checkpoints_are_finite(run / "checkpoints")
