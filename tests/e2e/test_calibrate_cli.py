"""eval.py and scripts/calibrate.py on a calibrated run, the way users run them: eval.py
reproduces the calibrated and the raw scores, the script writes a new checkpoint and leaves its
input alone (the calibration in-process: tests/unit/test_calibrate.py)."""

from __future__ import annotations

import json

import pytest

from segkit.io import checkpoint as ck
from tests.conftest import run_cli


def test_eval_reproduces_the_calibrated_and_the_raw_scores(calibrated_run, tmp_path):
    best = calibrated_run / "checkpoints" / "best.pt"
    record = ck.load(best)["calibration"]
    scores = {}
    for flag in ("true", "false"):
        out = tmp_path / flag
        proc = run_cli(
            "eval.py", f"ckpt={best}", f"logit_bias={flag}", "loader.num_workers=0",
            f"hydra.run.dir={out}", cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        scores[flag] = json.loads((out / "metrics.json").read_text())
    assert scores["true"]["logit_bias"] is True and scores["false"]["logit_bias"] is False
    calibrated, raw = scores["true"]["modes"], scores["false"]["modes"]
    assert calibrated["whole"]["miou"] == pytest.approx(record["val_miou"], abs=1e-9)
    assert raw["whole"]["miou"] == pytest.approx(record["val_miou_raw"], abs=1e-9)
    assert calibrated["whole+flip"] != raw["whole+flip"]
    bad = run_cli("eval.py", f"ckpt={best}", "logit_bias=maybe", cwd=tmp_path)
    assert bad.returncode == 2 and "logit_bias='maybe': expected true or false" in bad.stderr


def test_calibrate_script_writes_a_new_checkpoint_and_leaves_the_input(tiny_run, tmp_path):
    best = tiny_run / "checkpoints" / "best.pt"  # TINY: 32x32 images, the training size
    before = best.read_bytes()
    out = tmp_path / "calibrated.pt"
    proc = run_cli(
        "scripts/calibrate.py", str(best), str(out), "--num-workers=0", "--precision=fp32",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert best.read_bytes() == before
    stored = ck.load(out)
    assert list(stored["logit_bias"]) == ["whole"] and "val mIoU" in proc.stdout
    assert stored["calibration"]["val_miou_raw"] == pytest.approx(
        ck.load(best)["metrics"]["miou"], abs=1e-9
    )
    # its argument errors (OUT = CKPT, --precision=fp64): tests/unit/test_calibrate.py
    # a checkpoint whose stored biases were tampered with is refused with one message
    stored["logit_bias"] = {"whole": [0.0]}
    ck.save_atomic(stored, out)
    bad = run_cli("eval.py", f"ckpt={out}", "loader.num_workers=0", cwd=tmp_path)
    assert bad.returncode == 2 and "logit_bias must map evaluation modes" in bad.stderr
    assert "Traceback" not in bad.stderr
