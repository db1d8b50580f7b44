"""Calibration of the class priors (segkit.evaluation.logit_bias, calibrate.enabled): the fitted
biases against hand-computed thresholds, the pixels collected, the wrapper, and a calibrated run
(eval.py and scripts/calibrate.py on it: tests/e2e/test_calibrate_cli.py)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import pytest
import torch
from torch import nn

from segkit import precision
from segkit.config.checks import check_train_config
from segkit.errors import CheckpointError, ConfigError
from segkit.evaluation.logit_bias import (
    LogitBias,
    check_biases,
    collect,
    fit_bias,
    spread_indices,
    with_bias,
)
from segkit.io import checkpoint as ck
from segkit.run import dataset_factory, train_rank
from tests.conftest import CALIBRATED, TINY, compose_train, load_script


# --------------------------------------------------------------------------- fitting
def test_fit_bias_matches_the_labelled_share_at_the_hand_computed_threshold():
    """Class 1's logit runs from -1 to 1 over 1000 pixels (class 0's is 0); 25% of the labels
    are 1. Predicting 1 on exactly the top 25% needs b0 - b1 = the 75% quantile = 0.5."""
    scores = torch.linspace(-1, 1, 1000)
    logits = torch.stack([torch.zeros(1000), scores], 1)
    labels = torch.zeros(1000, dtype=torch.long)
    labels[torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:250]] = 1
    bias = fit_bias(logits, labels, 2)
    assert float(bias[0] - bias[1]) == pytest.approx(0.5, abs=0.01)
    assert float(bias.sum()) == pytest.approx(0.0, abs=1e-6)  # only differences count
    predicted = torch.bincount((logits + bias).argmax(1), minlength=2)
    assert abs(int(predicted[1]) - 250) <= 3  # within TOLERANCE (1%)
    # without the bias, class 1 took half the pixels: twice its share
    assert int(logits.argmax(1).sum()) == 500


def test_fit_bias_shrinks_an_over_predicted_class_and_leaves_absent_classes_at_zero():
    """Three classes with label shares 60/30/10%; the logits favour class 2 by +1.5 (what a
    large class weight does); class 3 never occurs in the labels."""
    gen = torch.Generator().manual_seed(1)
    labels = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), 20000, True, generator=gen)
    logits = torch.randn(20000, 4, generator=gen) + 2.0 * nn.functional.one_hot(labels, 4)
    logits[:, 2] += 1.5
    logits[:, 3] -= 3.0
    before = torch.bincount(logits.argmax(1), minlength=4).float() / 20000
    assert before[2] > 0.25  # over-predicted 2.5x
    bias = fit_bias(logits, labels, 4)
    after = torch.bincount((logits + bias).argmax(1), minlength=4).float() / 20000
    assert after[:3].tolist() == pytest.approx([0.6, 0.3, 0.1], rel=0.02)
    assert bias[3] == 0 and bias[2] < bias[0] - 1.0
    assert float(bias[:3].mean()) == pytest.approx(0.0, abs=1e-6)


class _ValueModel(nn.Module):
    """Logits whose argmax is channel 0 of the image divided by 10 (images carry the labels);
    one trainable weight (1.0), as a real model has."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        classes = torch.arange(3, dtype=torch.float32)[None, :, None, None]
        out = -((x[:, :1].float() / 10 - classes) ** 2) * self.scale
        return {"out": out, "aux": x[:, :1].float()}


def test_collect_keeps_labelled_pixels_at_the_original_size_with_their_logits():
    masks = [torch.randint(0, 3, (6, 5), dtype=torch.uint8) for _ in range(3)]
    masks[1][:, :3] = 255  # ignored pixels are never drawn
    images = torch.stack([(m.clamp_max(2) * 10).expand(3, 6, 5) for m in masks]).to(torch.uint8)
    logits, labels = collect(
        _ValueModel(), [(images, masks)], 3, 255, device=torch.device("cpu"), pixels_per_image=12
    )
    assert logits.shape == (12 + 12 + 12, 3) and labels.shape == (36,)
    assert torch.equal(logits.argmax(1), labels)  # each logit row is its own pixel's
    assert int((labels == 255).sum()) == 0
    assert not logits.requires_grad  # no autograd graph: it would hold every batch's activations
    few, _ = collect(
        _ValueModel(), [(images, masks)], 3, 255, device=torch.device("cpu"), pixels_per_image=100
    )
    assert len(few) == 30 + 12 + 30  # every labelled pixel when an image has fewer


def test_logit_bias_adds_to_the_logits_only():
    model = LogitBias(_ValueModel(), [1.0, -2.0, 0.5])
    x = torch.full((2, 3, 4, 4), 10, dtype=torch.uint8)
    raw, out = _ValueModel()(x), model(x)
    assert torch.equal(out["out"], raw["out"] + torch.tensor([1.0, -2.0, 0.5])[None, :, None, None])
    assert torch.equal(out["aux"], raw["aux"])


@pytest.mark.parametrize(
    "bad",
    [
        [1.0, 2.0, 3.0],  # one list: not a mapping of modes
        {"whole": [1.0, 2.0]},
        {"whole": [1.0, float("nan"), 0.0]},
        {"whole": [True, 0.0, 0.0]},
        {},
    ],
)
def test_a_malformed_stored_bias_is_a_checkpoint_error(bad):
    with pytest.raises(CheckpointError, match=r"best\.pt: logit_bias must map evaluation modes"):
        check_biases(bad, 3, "best.pt")


def test_a_stored_bias_for_an_unknown_mode_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="evaluation mode 'sideways'"):
        check_biases({"sideways": [0.0, 0.0, 0.0]}, 3, "best.pt")


def test_each_mode_gets_only_its_own_biases(caplog):
    biases = {"whole": [1.0, 0.0, 0.0], "whole+flip+ms": [0.0, 0.0, 2.0]}
    model = _ValueModel()
    tta = with_bias(model, biases, "whole+flip+ms")
    assert isinstance(tta, LogitBias) and tta.bias.tolist() == [0.0, 0.0, 2.0]
    assert with_bias(model, biases, "whole").bias.tolist() == [1.0, 0.0, 0.0]
    assert with_bias(model, biases, "slide") is model  # not calibrated in that mode: raw
    assert "no logit biases for mode slide (calibrated: whole, whole+flip+ms)" in caplog.text
    assert with_bias(model, {}, "whole") is model


# --------------------------------------------------------------------------- a calibrated run
# calibrated_run: CALIBRATED trained once per session (tests/conftest.py)


def _events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_the_sweep_table_shows_the_calibrated_score_only_when_a_job_has_one(tmp_path):
    from segkit.reporting.sweep_summary import write_summary

    row = dict(job=0, overrides="seed=1", status="completed", best_miou=0.5, best_epoch=3)
    row.update(duration_s=9.0, error="")
    plain = write_summary(tmp_path, [row])
    assert "calibrated" not in plain and "calibrated" not in (tmp_path / "summary.csv").read_text()
    table = write_summary(tmp_path, [{**row, "job": 1, "calibrated_miou": 0.5321}, row])
    header, _, raw, calibrated = [  # sorted by job
        [c.strip() for c in ln.split("|")[1:-1]] for ln in table.split("\n")
    ]
    assert header[3:5] == ["best_miou", "calibrated_miou"]
    assert (calibrated[0], calibrated[4], raw[0], raw[4]) == ("1", "0.5321", "0", "-")
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0].split(",")[3:5] == ["best_miou", "calibrated_miou"]
    assert lines[1].split(",")[4] == "" and lines[2].split(",")[4] == "0.5321"


def test_a_calibrated_run_stores_the_biases_everywhere_it_deploys(calibrated_run):
    best_path = calibrated_run / "checkpoints" / "best.pt"
    best = ck.load(best_path)
    biases, record = best["logit_bias"], best["calibration"]
    assert list(biases) == ["whole", "whole+flip"]
    assert all(len(b) == 5 and all(map(math.isfinite, b)) and any(b) for b in biases.values())
    assert biases["whole"] != biases["whole+flip"]
    cfg = compose_train(*CALIBRATED)
    train = dataset_factory(cfg.dataset)(split="train", train=False)
    labelled = sum(int((train.load_raw(i)[1] < 5).sum()) for i in range(len(train)))
    assert record["pixels"] == labelled < 24 * 32 * 32  # every labelled train pixel
    # the raw score is what training-time validation measured on the same weights
    assert record["val_miou_raw"] == pytest.approx(best["metrics"]["miou"], abs=1e-9)
    result = json.loads((calibrated_run / "result.json").read_text())
    assert result["calibrated_val_miou"] == pytest.approx(record["val_miou"], abs=1e-12)
    acc = _events(calibrated_run)  # TensorBoard: one point at the last step, an HParams metric
    scalars = acc.Scalars("val/calibrated_mIoU")
    assert [(e.step, e.value) for e in scalars] == [
        (result["steps"], pytest.approx(record["val_miou"], abs=1e-6))
    ]
    from tensorboard.plugins.hparams import metadata

    content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    metric_infos = metadata.parse_experiment_plugin_data(content).metric_infos
    assert "val/calibrated_mIoU" in {m.name.tag for m in metric_infos}
    assert "logit_bias" not in ck.load(calibrated_run / "checkpoints" / "last.pt")  # resumes raw
    from segkit.io.weights_file import read_weights_file

    weights = calibrated_run / "checkpoints" / "best.safetensors"
    assert read_weights_file(weights)["logit_bias"] == biases
    # predict runs the mode it is asked for with that mode's biases (from either file)
    predict = load_script("predict")
    for path in (best_path, weights):
        model, *_ = predict.load(str(path), "whole+flip")
        assert isinstance(model, LogitBias)
        assert model.bias.tolist() == pytest.approx(biases["whole+flip"])
    assert not isinstance(predict.load(str(best_path), "slide")[0], LogitBias)


def test_trainer_calibrate_must_be_a_boolean():
    with pytest.raises(ConfigError, match="calibrate.enabled"):
        check_train_config(compose_train(*TINY, "calibrate.enabled=sometimes"))


@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [(10, 4, [0, 3, 6, 9]), (367, 3, [0, 183, 366]), (9, 1, [0]), (5, 5, None), (5, None, None)],
)
def test_spread_indices_picks_evenly_spaced_images(n, k, expected):
    assert spread_indices(n, k) == expected


def test_spread_indices_never_repeats_an_image():
    for n in range(2, 60):
        for k in range(2, n):
            picked = spread_indices(n, k)
            assert len(set(picked)) == k and picked == sorted(picked) and picked[-1] == n - 1


def test_calibrate_images_fits_on_that_many_train_images(calibrated_run, tmp_path):
    """max_images=2: the first and the last train image, every labelled pixel of both."""
    from segkit.run.calibration import calibrate_checkpoint

    out = tmp_path / "two.pt"
    best = calibrated_run / "checkpoints" / "best.pt"
    record = calibrate_checkpoint(best, torch.device("cpu"), out=out, num_workers=0, max_images=2)
    train = dataset_factory(compose_train(*CALIBRATED).dataset)(split="train", train=False)
    labelled = [int((train.load_raw(i)[1] < 5).sum()) for i in (0, len(train) - 1)]
    assert record["images"] == 2 and record["pixels"] == sum(labelled)
    assert ck.load(out)["calibration"]["images"] == 2
    assert ck.load(best)["calibration"]["images"] == len(train)  # the run fitted on all


def test_calibrate_images_and_max_images_must_be_positive(capsys):
    with pytest.raises(ConfigError, match="calibrate.max_images"):
        check_train_config(compose_train(*TINY, "calibrate.max_images=0"))
    with pytest.raises(SystemExit) as exit_info:
        load_script("calibrate").parse_args(["a.pt", "b.pt", "--max-images", "0"])
    assert exit_info.value.code == 2 and "--max-images must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["best.pt", "best.pt"], "OUT must differ from CKPT"),
        (["best.pt", "out.pt", "--precision=fp64"], "invalid choice: 'fp64'"),
    ],
)
def test_calibrate_script_refuses_bad_arguments(args, message, capsys):
    """scripts/calibrate.py's argument errors: exit 2 and argparse's message (what the script
    runs first; the script itself: tests/e2e/test_calibrate_cli.py)."""
    with pytest.raises(SystemExit) as exit_info:
        load_script("calibrate").parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_calibrate_precision_replaces_the_runs_autocast(
    calibrated_run, tmp_path, monkeypatch, caplog
):
    """precision= (scripts/calibrate.py --precision) overrides the run's fp32: the fit and the
    val score run under bf16 autocast, and on a CPU that emulates bf16 the warning names
    --precision, the option this script has."""
    from segkit.run.calibration import calibrate_checkpoint

    seen = []
    amp_dtype = precision.amp_dtype
    monkeypatch.setattr(precision, "amp_dtype", lambda p: seen.append(p) or amp_dtype(p))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision, "_warned_emulated", False)
    best = calibrated_run / "checkpoints" / "best.pt"
    with caplog.at_level("WARNING", logger="segkit"):
        calibrate_checkpoint(best, torch.device("cpu"), out=tmp_path / "a.pt", num_workers=0,
                             max_images=1)  # fmt: skip
        assert seen == ["fp32"] and "emulates" not in caplog.text  # the run's own
        calibrate_checkpoint(best, torch.device("cpu"), out=tmp_path / "b.pt", num_workers=0,
                             max_images=1, precision="bf16")  # fmt: skip
    assert seen == ["fp32", "bf16"]
    assert "--precision=bf16 on a CPU without native bf16" in caplog.text
    assert "set --precision=auto" in caplog.text


def test_resume_auto_of_a_finished_calibrated_run_changes_nothing(calibrated_run, tmp_path):
    """best.pt is rewritten by calibration after last.pt: resume=auto must still see the run
    as finished (it resumes by progress, not by file time) and leave every file as it was."""
    run = tmp_path / "run"
    shutil.copytree(calibrated_run, run)
    best = run / "checkpoints" / "best.pt"
    os.utime(best, (time.time() + 60, time.time() + 60))  # the newest file, whatever the clock
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    train_rank(compose_train(*CALIBRATED, "resume=auto"), run)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert sorted(after) == sorted(before)  # no new event file, checkpoint or output
    changed = [str(p.relative_to(run)) for p in before if before[p] != after[p]]
    assert changed == [], changed
