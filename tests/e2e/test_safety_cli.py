"""The command-line tools on a checkpoint from someone else: eval.py refuses a crafted file or a
stored dataset target outside segkit with one message, export_weights.py + eval.py score the
safetensors file, convert_checkpoint.py needs --trust (in-process: tests/unit/test_safety.py)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from segkit.dist import DistInfo
from segkit.io import checkpoint as ck
from segkit.io.partial_load import UnsafeCheckpointError
from segkit.run import build_model
from tests.conftest import compose_train, run_cli
from tests.crafted import EXIT, RISK
from tests.unit.test_safety import ONE


def test_eval_cli_refuses_it_with_one_message(crafted, tmp_path):
    path, marker = crafted
    proc = run_cli("eval.py", f"ckpt={path}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert proc.returncode == EXIT != 0, proc.stderr[-2000:]
    assert re.search(RISK, proc.stderr) and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_export_script_then_eval_cli_on_the_weights_file(tiny_run, tmp_path):
    out = tmp_path / "best.safetensors"
    best = tiny_run / "checkpoints" / "best.pt"
    proc = run_cli("scripts/export_weights.py", str(best), str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and "segkit.models.UNet" in proc.stdout
    eval_dir = tmp_path / "eval"
    proc = run_cli(
        "eval.py", f"ckpt={out}", "loader.num_workers=0", f"hydra.run.dir={eval_dir}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    # the val images are 32x32, the training size: eval scores what validation scored
    assert metrics["miou"] == pytest.approx(ck.load(best)["metrics"]["miou"], abs=1e-9)


def test_convert_needs_trust_and_then_gives_a_loadable_file(tmp_path):
    model = build_model(compose_train(*ONE), DistInfo())
    pickled, out = tmp_path / "whole_model.pth", tmp_path / "converted.pt"
    torch.save(model, pickled)  # the notes' torch.save(model)
    with pytest.raises(UnsafeCheckpointError, match=r"convert_checkpoint\.py .*--trust"):
        build_model(compose_train(*ONE, f"model.init_from={pickled}"), DistInfo())
    proc = run_cli("scripts/convert_checkpoint.py", str(pickled), str(out), cwd=tmp_path)
    assert proc.returncode == EXIT != 0 and not out.exists()
    assert "arbitrary code" in proc.stderr and "--trust" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("scripts/convert_checkpoint.py", str(pickled), str(out), "--trust", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert isinstance(torch.load(out, weights_only=True), dict)
    loaded = build_model(compose_train(*ONE, f"model.init_from={out}"), DistInfo())
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_eval_cli_refuses_a_stored_dataset_target_outside_segkit(tiny_run, tmp_path):
    ckpt = ck.load(tiny_run / "checkpoints" / "last.pt")
    made = tmp_path / "made"
    ckpt["config"]["dataset"] = {"_target_": "os.mkdir", "_partial_": False, "path": str(made)}
    path = tmp_path / "ds.pt"
    ck.save_atomic(ckpt, path)
    proc = run_cli("eval.py", f"ckpt={path}", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert proc.returncode == EXIT and "os.mkdir" in proc.stderr
    assert not made.exists() and "Traceback" not in proc.stderr
