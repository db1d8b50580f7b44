"""The ``logger`` group: composing one or several loggers, the install check before any work,
the Tracker handing every record to every logger, unsent records, run ids in the checkpoint.
The MLflow client with its server down: tests/integration/test_mlflow_offline.py; the real
servers and runs: tests/e2e/test_loggers.py."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from segkit.data.base import LabelSpace
from segkit.errors import ConfigError
from segkit.io import checkpoint as ck
from segkit.reporting.figures import SampleCollector
from segkit.reporting.tracker import Tracker
from segkit.reporting.unsent import read_unsent
from segkit.run.building import check_loggers, flat_params
from tests.conftest import compose_train

PALETTE = ((0, 0, 0), (255, 0, 0), (0, 255, 0))
LABELS = LabelSpace(3, 255, ("background", "circle", "square"), PALETTE, (0.5,) * 3, (0.25,) * 3)


# --------------------------------------------------------------------------- config group
def test_one_logger_or_several_compose_and_pass_the_checks():
    assert list(compose_train().logger) == ["tensorboard"]  # the default, as before
    assert list(compose_train("logger=mlflow").logger) == ["mlflow"]
    several = compose_train("logger=[tensorboard,mlflow,wandb]", "logger.mlflow.log_model=true")
    assert list(several.logger) == ["tensorboard", "mlflow", "wandb"]
    assert several.logger.mlflow.log_model is True
    check_loggers(several)


def test_a_missing_package_stops_with_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError) as e:
        check_loggers(compose_train("logger=[tensorboard,wandb]"))
    assert e.value.exit_code == 2
    message = "logger.wandb: the wandb package is not installed; install it with "
    assert message + '`pip install -e ".[wandb]"`' in str(e.value)


def test_an_unknown_logger_key_names_the_key_and_the_arguments():
    cfg = compose_train("logger=mlflow", "+logger.mlflow.trackinguri=http://x")
    with pytest.raises(ConfigError, match=r"logger\.mlflow\.trackinguri: MLflowLogger has no"):
        check_loggers(cfg)


def test_params_are_the_flat_resolved_config():
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": 1,
        "a.c": [1, 2],
        "d": None,
    }


# --------------------------------------------------------------------------- Tracker fan-out
class Recorder:
    """A logger that records every call (the interface, nothing else)."""

    name, run_id = "recorder", "r-1"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, method: str):
        return lambda *args: self.calls.append((method, *args)) or []


def _metrics() -> dict:
    confusion = torch.tensor([[3, 1, 0], [1, 4, 2], [0, 1, 7]])
    per_class = {k: [0.6, 4 / 7, 0.7] for k in ("iou", "recall", "precision", "dice")}
    means = {"miou": 0.6238, "mpa": 0.6, "mdice": 0.6, "fwiou": 0.6, "pixel_acc": 0.7}
    return {"loss": 0.5, "confusion": confusion, **means, **per_class}


def test_the_tracker_hands_every_record_to_every_logger(tmp_path, caplog):
    a, b = Recorder(), Recorder()
    t = Tracker(tmp_path, LABELS, loggers=[a, b])
    t.log_scalars(3, {"train/loss": 1.5})
    t.log_val(6, 1, _metrics(), SampleCollector(0))
    t.log_epoch(dict(epoch=1, step=6, lr=0.1, train_loss=1.2, iou=[0.6, 4 / 7, 0.7]))
    a.close = lambda finished: [f"2 metric values not sent (finished={finished})"]
    with caplog.at_level(logging.WARNING, logger="segkit"):
        t.finish(
            {"seed": 1}, {"best_miou": 0.6, "steps": 6}, artifacts=[tmp_path / "w.safetensors"]
        )
    t.close()  # the failure path after an interrupt or a finish: the runs end once
    assert t.run_ids() == {"recorder": "r-1"}
    assert a.calls == b.calls[:-1] and b.calls[-1] == ("close", True)  # the same records
    scalars = {
        k: (step, v)
        for m, step, d in (c for c in a.calls if c[0] == "log_scalars")
        for k, v in d.items()
    }
    assert scalars["train/loss"] == (3, 1.5) and scalars["val/mIoU"] == (6, 0.6238)
    assert scalars["val_iou/circle"] == (6, 4 / 7) and scalars["train/loss_epoch"] == (6, 1.2)
    table = next(c for c in a.calls if c[0] == "log_table")
    assert table == (
        "log_table",
        "val/per_class_iou",
        ["class", "iou"],
        [["background", 0.6], ["circle", 4 / 7], ["square", 0.7]],
        6,
    )
    image = next(c for c in a.calls if c[0] == "log_image")
    assert image[1] == "val/confusion" and image[2].dtype == np.uint8 and image[2].shape[2] == 3
    assert ("log_artifact", tmp_path / "w.safetensors") in a.calls
    assert "recorder: 2 metric values not sent (finished=True)" in caplog.text
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "result.json").is_file()


def test_without_figures_the_tracker_draws_nothing_and_keeps_the_numbers(tmp_path):
    rec = Recorder()
    t = Tracker(tmp_path, LABELS, loggers=[rec], figures=False)
    assert not t.wants_samples  # the loop keeps no validation pictures for it
    t.log_val(6, 1, _metrics(), SampleCollector(2))
    t.log_epoch(dict(epoch=1, step=6, lr=0.1, train_loss=1.2, iou=[0.6, 4 / 7, 0.7]))
    files = t.finish({"seed": 1}, {"best_miou": 0.6, "steps": 6})
    methods = {c[0] for c in rec.calls}
    assert "log_image" not in methods and {"log_scalars", "log_table"} <= methods
    assert [f.name for f in files] == ["metrics.txt"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["metrics.txt"]
    assert "circle" in (tmp_path / "plots" / "metrics.txt").read_text()


# --------------------------------------------------------------------------- MLflow, no server
def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path, caplog):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"kind": "params", "params": {}}) + '\n{"kind": "metr')
    assert read_unsent(path) == [{"kind": "params", "params": {}}]
    assert "line 2 is incomplete" in caplog.text


# --------------------------------------------------------------------------- checkpoint
def test_every_checkpoint_carries_the_loggers_run_ids(tmp_path):
    writer = ck.CheckpointWriter(tmp_path)
    writer.extra = {"tracking": {"mlflow": "abc123", "wandb": "x9"}}
    path = writer.save("last.pt", lambda: {"model": {}, "config": {}, "step": 3})
    loaded = torch.load(path, weights_only=True)  # plain data: loads without running code
    assert loaded["tracking"] == {"mlflow": "abc123", "wandb": "x9"} and loaded["step"] == 3


def test_a_multirun_job_belongs_to_its_sweep_folder(tmp_path):
    from segkit.run.building import sweep_group

    job = tmp_path / "multiruns" / "2026-12-07" / "3"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    assert sweep_group(job) == str(job.parent)
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")
    assert sweep_group(job) is None and sweep_group(tmp_path) is None
