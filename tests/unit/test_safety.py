"""A checkpoint from someone else cannot run code: every load path reads files as data, a
stored model config may only name segkit's models, and weights travel as safetensors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from segkit.dist import DistInfo
from segkit.errors import CheckpointError
from segkit.io import checkpoint as ck
from segkit.io.allowlist import check_dataset_target, check_model_target
from segkit.io.partial_load import UnsafeCheckpointError
from segkit.io.weights_file import export_weights
from segkit.run import build_model, train_rank
from segkit.run.models import load_model
from tests.conftest import TINY, compose_train
from tests.crafted import RISK

ONE = [*TINY, "trainer.max_epochs=1", "dataset.check=off"]


def test_a_training_checkpoint_is_plain_data(tiny_run):
    path = tiny_run / "checkpoints" / "last.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    raw = torch.load(path, weights_only=True)  # no allow-list needed
    assert len(raw["rng"]["python"]["state"]) == 625 and len(raw["rng"]["numpy"]["key"]) == 624


def test_the_crafted_checkpoint_runs_its_command_when_unpickled(crafted):
    path, marker = crafted
    torch.load(path, weights_only=False)  # what segkit did before: the test's payload works
    assert marker.is_file()


def test_resume_refuses_it(crafted, tmp_path):
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match=RISK):
        train_rank(compose_train(*ONE, f"resume={path}"), tmp_path / "resumed")
    assert not marker.exists()


def test_resume_auto_stops_at_it_rather_than_skipping_to_an_older_file(tiny_run, crafted, tmp_path):
    path, marker = crafted
    run_dir = tmp_path / "run"
    (run_dir / ck.CKPT_DIR).mkdir(parents=True)
    best = run_dir / ck.CKPT_DIR / ck.BEST
    best.write_bytes((tiny_run / "checkpoints" / "best.pt").read_bytes())
    os.utime(best, (1, 1))  # older than the crafted last.pt
    (run_dir / ck.CKPT_DIR / ck.LAST).write_bytes(path.read_bytes())
    with pytest.raises(UnsafeCheckpointError, match=RISK):
        ck.resolve_resume("auto", run_dir)
    assert not marker.exists()


def test_init_from_refuses_it(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match=RISK):
        build_model(compose_train(*ONE, f"model.init_from={path}"), DistInfo())
    assert not marker.exists()


def test_load_model_refuses_it(crafted):  # what predict and feature_maps use
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match=RISK):
        load_model(path)
    assert not marker.exists()


def _with_model_config(tiny_run: Path, tmp_path: Path, model_cfg: dict) -> Path:
    ckpt = ck.load(tiny_run / "checkpoints" / "last.pt")
    ckpt["config"]["model"] = model_cfg
    path = tmp_path / "ckpt.pt"
    ck.save_atomic(ckpt, path)  # plain data: loads with weights_only=True
    return path


@pytest.mark.parametrize(
    "target",
    [
        "os.mkdir",
        "builtins.print",
        "segkit.models.backbones.os.mkdir",  # segkit's prefix, but resolves to os.mkdir
        "segkit.models.unet.torch.load",
        "segkit.models.__builtins__",
    ],
)
def test_model_target_outside_segkit_models_is_refused_before_building(
    tiny_run, tmp_path, capsys, target
):
    made = tmp_path / "made_by_the_target"
    path = _with_model_config(tiny_run, tmp_path, {"_target_": target, "_args_": [str(made)]})
    with pytest.raises(CheckpointError, match=re.escape(f"model._target_={target!r}")):
        load_model(path)
    assert not made.exists() and str(made) not in capsys.readouterr().out


def test_nested_targets_are_checked_too(tiny_run, tmp_path):
    stored = ck.load(tiny_run / "checkpoints" / "last.pt")["config"]["model"]
    made = tmp_path / "made_by_the_target"
    evil = {**stored, "norm": {"_target_": "os.mkdir", "path": str(made)}}
    with pytest.raises(CheckpointError, match=r"model\.norm\._target_='os\.mkdir'"):
        load_model(_with_model_config(tiny_run, tmp_path, evil))
    assert not made.exists()
    check_model_target({**stored, "act": {"_target_": "torch.nn.ReLU"}})  # torch.nn layers
    with pytest.raises(CheckpointError, match="torch.nn.ReLU"):  # ... but not as the model
        check_model_target({"_target_": "torch.nn.ReLU"})


def test_a_stored_dataset_target_is_checked_too(tiny_run):  # eval.py builds the stored dataset
    stored = ck.load(tiny_run / "checkpoints" / "last.pt")["config"]["dataset"]
    check_dataset_target(stored)  # segkit's demo dataset
    with pytest.raises(CheckpointError, match=r"dataset\._target_='os\.system'.*dataset=NAME"):
        check_dataset_target({**stored, "_target_": "os.system"})


def test_weights_file_loads_into_a_fresh_model_with_identical_outputs(tiny_run, tmp_path):
    source = tiny_run / "checkpoints" / "last.pt"
    stored = ck.load(source)
    out = export_weights(stored, tmp_path / "w.safetensors")
    with safe_open(str(out), framework="pt") as f:  # weights and metadata, nothing else
        assert set(f.keys()) == set(stored["model"])
        meta = f.metadata()
    assert json.loads(meta["labels"]) == stored["labels"]
    assert json.loads(meta["config"]) == stored["config"]
    model, info = load_model(out)
    assert info["class_names"] == stored["class_names"] and info["palette"] == stored["palette"]
    assert info["labels"]["mean"] == stored["labels"]["mean"]
    assert info["config"]["dataset"]["input_shape"] == [32, 32]
    for key, tensor in stored["model"].items():
        assert torch.equal(model.state_dict()[key], tensor), key
    reference, _ = load_model(source)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(x)["out"], reference(x)["out"])
    fresh = build_model(compose_train(*ONE, f"model.init_from={out}"), DistInfo())
    for key, tensor in stored["model"].items():
        assert torch.equal(fresh.state_dict()[key], tensor), key


def test_a_safetensors_file_without_segkit_metadata_is_weights_only(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="init_from"):
        load_model(path)
