"""General features the CamVid recipes use: class-balanced crops, rare-class copy-paste,
validation at another input
size and at the original label resolution, EMA of the weights, the training-time budget, the
recipe's evaluation modes, channels-last on the CPU (train.py and eval.py on them:
tests/e2e/test_recipe_features_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segkit import precision
from segkit.config.checks import check_train_config
from segkit.data.arguments import check_augment
from segkit.data.augment import Context, get_random_data
from segkit.data.base import SegmentationDataset
from segkit.data.transforms import class_balanced_offset, copy_paste
from segkit.engine import time_budget as budget
from segkit.engine.ema import ModelEMA
from segkit.errors import ConfigError, DataError
from segkit.io import checkpoint as ck
from segkit.run import build_trainer, dataset_factory, train_rank
from segkit.run.models import checkpoint_input_shape
from tests.conftest import TINY, compose_train


# --------------------------------------------------------------------------- class-balanced crops
def _rare_pixel_scene() -> tuple[np.ndarray, np.ndarray]:
    """100x200 picture of class 0 with one 2x2 patch of class 7 near the right edge."""
    mask = np.zeros((100, 200), np.uint8)
    mask[10:12, 190:192] = 7
    mask[50:, :] = 255  # ignore: never a class to centre on
    image = np.zeros((100, 200, 3), np.uint8)
    return image, mask


def test_class_balanced_offset_keeps_a_pixel_of_a_uniformly_drawn_class():
    _, mask = _rare_pixel_scene()
    rng = np.random.default_rng(0)
    held_rare = 0
    for _ in range(400):
        dy, dx = class_balanced_offset(mask, (40, 40), rng, ignore_index=255)
        # a valid paste offset for a larger picture: the canvas lies inside it
        assert 40 - 100 <= dy <= 0 and 40 - 200 <= dx <= 0
        crop = mask[-dy : -dy + 40, -dx : -dx + 40]
        assert (crop != 255).any()  # a class pixel (0 or 7) is always inside
        held_rare += bool((crop == 7).any())
    # class 7 is drawn half of the time (2 classes present), plus chance hits of class-0 draws
    assert 0.45 < held_rare / 400 < 0.75
    assert class_balanced_offset(np.full((5, 5), 255, np.uint8), (4, 4), rng) is None


def test_class_crop_raises_how_often_a_rare_class_is_seen():
    image, mask = _rare_pixel_scene()

    def rare_fraction(class_crop: float) -> float:
        rng, hits = np.random.default_rng(1), 0
        for _ in range(300):
            _, m = get_random_data(
                image, mask, (40, 40), rng, jitter=0.0, scale=(5.0, 5.0), flip=0.5,
                class_crop=class_crop, hue=0, sat=0, val=0,
            )  # fmt: skip
            hits += bool((m == 7).any())
        return hits / 300

    assert rare_fraction(0.0) < 0.1  # a random 40x40 window of 200x100 rarely holds it
    assert rare_fraction(1.0) > 0.45


def test_class_crop_zero_keeps_the_augmentation_stream():
    """class_crop=0 draws no extra random numbers: old recipes give the same samples."""
    image = np.random.default_rng(3).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    mask = np.random.default_rng(4).integers(0, 3, (50, 60), dtype=np.uint8)
    no_hsv = dict(hue=0, sat=0, val=0)  # draws its 3 numbers last, changes nothing
    a = get_random_data(image, mask, (32, 32), np.random.default_rng(9), class_crop=0, **no_hsv)
    rng = np.random.default_rng(9)  # the draws of the code before class_crop existed
    from segkit.data.transforms import hflip_pair, paste, random_size, resize_pair

    nh, nw = random_size(rng, (50, 60), (32, 32), 0.3, (0.25, 2.0))
    im, m = resize_pair(image, mask, (nh, nw))
    if rng.uniform() < 0.5:
        im, m = hflip_pair(im, m)
    dx, dy = int(rng.random() * (32 - nw)), int(rng.random() * (32 - nh))
    b = paste(im, m, (32, 32), (dy, dx), 255)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_class_crop_out_of_range_names_the_step():
    cfg = compose_train(*TINY, "dataset.augment.train.crop.class_balanced=1.5")
    with pytest.raises(DataError, match=r"dataset\.augment\.train\.crop \(RandomCrop\): class_bal"):
        dataset_factory(cfg.dataset)(split="train", train=True)


# --------------------------------------------------------------------------- copy-paste
def _donor_scene(h: int = 6, w: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """An h x w donor: class 2 in the 2nd eighth of the columns, class 3 in the last, rest 0;
    its image is 100 + the column index in every channel."""
    mask, k = np.zeros((h, w), np.uint8), w // 8
    mask[:, k : 2 * k] = 2
    mask[:, w - k :] = 3
    image = np.broadcast_to(100 + np.arange(w, dtype=np.uint8)[None, :, None], (h, w, 3))
    return np.ascontiguousarray(image), mask


def test_copy_paste_replaces_the_chosen_class_pixels_at_the_same_place_or_mirrored():
    image, mask = np.zeros((6, 8, 3), np.uint8), np.ones((6, 8), np.uint8)
    donor, donor_mask = _donor_scene()
    seen = set()
    for seed in range(20):
        out, out_mask = copy_paste(image, mask, donor, donor_mask, [2], np.random.default_rng(seed))
        column = 1 if out_mask[0, 1] == 2 else 6  # the donor's column 1, or mirrored: 8-1-1
        expected_mask = np.ones((6, 8), np.uint8)
        expected_mask[:, column] = 2  # class 3 is not in the list: not pasted
        assert np.array_equal(out_mask, expected_mask)
        expected_image = np.zeros((6, 8, 3), np.uint8)
        expected_image[:, column] = 101  # the donor's pixel of column 1, whichever side
        assert np.array_equal(out, expected_image)
        seen.add(column)
    assert seen == {1, 6}  # both orientations occur
    assert not image.any() and (mask == 1).all()  # the inputs are not modified


def test_copy_paste_resizes_a_donor_of_another_size():
    image, mask = np.zeros((6, 8, 3), np.uint8), np.zeros((6, 8), np.uint8)
    donor, donor_mask = _donor_scene(12, 16)  # class 2 in columns 2-3: column 1 at 6x8
    _, out_mask = copy_paste(image, mask, donor, donor_mask, [2, 3], np.random.default_rng(0))
    assert set(np.unique(out_mask)) == {0, 2, 3}
    assert (out_mask == 2).sum() == 6 and (out_mask == 3).sum() == 6  # one column each


def _two_sample_dataset(tmp_path: Path, **augment) -> SegmentationDataset:
    """Sample 0: all class 1; sample 1: the `_donor_scene` (classes 0, 2, 3), 6x8 PNGs."""
    files = []
    scenes = [(np.zeros((6, 8, 3), np.uint8), np.ones((6, 8), np.uint8)), _donor_scene()]
    for i, (image, mask) in enumerate(scenes):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / f"{i}_mask.png")
        files.append((tmp_path / f"{i}.png", tmp_path / f"{i}_mask.png"))
    return SegmentationDataset(
        files, train=True, num_classes=4, input_shape=(6, 8), augment=augment
    )


def _paste(ds: SegmentationDataset, image, mask, rng) -> tuple[np.ndarray, np.ndarray]:
    """The train list's copy_paste step alone on sample 0's raw pair."""
    step = dict(ds.pipelines["train"].steps)["copy_paste"]
    return step(image, mask, Context(rng, (6, 8), 255, lambda r: ds.donor(0, r)))


def test_dataset_pastes_another_samples_classes_with_probability_copy_paste(tmp_path):
    ds = _two_sample_dataset(tmp_path, copy_paste=1.0, paste_classes=[2])
    image, mask = ds.load_raw(0)
    out, out_mask = _paste(ds, image, mask, np.random.default_rng(0))
    assert set(np.unique(out_mask)) == {1, 2} and (out_mask == 2).sum() == 6  # from sample 1
    assert (out[out_mask == 2] == 101).all() and not out[out_mask == 1].any()
    # half of the training samples: about half of them hold class 2 after the full pipeline
    whole = {"scale": [1, 1], "jitter": 0}  # each sample is the whole 6x8 picture (or mirror)
    half = _two_sample_dataset(tmp_path, copy_paste=0.5, paste_classes=[2], **whole)
    with_paste = 0
    for epoch in range(200):
        half.set_epoch(epoch)
        with_paste += bool((half[0][1] == 2).any())
    assert 0.38 < with_paste / 200 < 0.62
    # validation samples are never pasted into
    ds.train = False
    assert not (ds[0][1] == 2).any()


def test_copy_paste_zero_draws_no_random_numbers(tmp_path):
    """copy_paste=0 leaves the sample and the stream alone: old recipes give the same samples."""
    ds = _two_sample_dataset(tmp_path)
    image, mask = ds.load_raw(0)
    rng = np.random.default_rng(5)
    out, out_mask = _paste(ds, image, mask, rng)
    assert out is image and out_mask is mask
    assert rng.random() == np.random.default_rng(5).random()


def test_copy_paste_unreadable_donor_is_named_or_skipped(tmp_path):
    ds = _two_sample_dataset(tmp_path, copy_paste=1.0, paste_classes=[2])
    (tmp_path / "1.png").write_bytes(b"not a png")
    image, mask = ds.load_raw(0)
    with pytest.raises(DataError, match=r"copy-paste donor sample 1 \(.*1\.png.*of sample 0"):
        _paste(ds, image, mask, np.random.default_rng(0))
    ds.on_bad_sample = "skip"  # the donor is reported when it is loaded as a sample itself
    out, out_mask = _paste(ds, image, mask, np.random.default_rng(0))
    assert out is image and out_mask is mask


def test_copy_paste_bad_values_name_the_key(tmp_path):
    cfg = compose_train(*TINY, "dataset.augment.train.copy_paste.p=1.5")
    with pytest.raises(DataError, match=r"train\.copy_paste \(CopyPaste\): p must be in \[0, 1\]"):
        dataset_factory(cfg.dataset)(split="train", train=True)
    with pytest.raises(DataError, match="needs the classes to paste"):
        _two_sample_dataset(tmp_path, copy_paste=0.5)
    with pytest.raises(DataError, match=r"paste_classes holds \[4\].*0\.\.3"):
        _two_sample_dataset(tmp_path, copy_paste=0.5, paste_classes=[2, 4])
    with pytest.raises(DataError, match=r"holds \['pole'\].*nor class names \(class_0, class_1"):
        _two_sample_dataset(tmp_path, copy_paste=0.5, paste_classes=["pole"])
    with pytest.raises(DataError, match="paste_classes must be a list of class ids or names"):
        _two_sample_dataset(tmp_path, copy_paste=0.5, paste_classes=[2.5])


def test_paste_classes_takes_class_names():
    names = ["Sky", "Pole", "SignSymbol", "Car"]
    params = check_augment(
        {"copy_paste": 0.5, "paste_classes": ["pole", 3, "SIGNSYMBOL", "0"]}, names
    )
    assert params["paste_classes"] == (1, 3, 2, 0)
    assert check_augment(None, names)["paste_classes"] == ()
    assert check_augment({"paste_classes": "Car"}, names)["paste_classes"] == (3,)  # one, bare
    assert check_augment({"paste_classes": 2}, names)["paste_classes"] == (2,)


# --------------------------------------------------------------------------- validation size
def test_val_input_shape_builds_eval_splits_at_that_size():
    cfg = compose_train(*TINY, "dataset.input_shape=[24,24]", "dataset.val_input_shape=[40,48]")
    make = dataset_factory(cfg.dataset)
    train_ds, val_ds = make(split="train", train=True), make(split="val", train=False)
    assert train_ds[0][0].shape == (3, 24, 24)
    assert val_ds[0][0].shape == (3, 40, 48) and val_ds[0][1].shape == (40, 48)
    stored = {"config": {"dataset": {"input_shape": [24, 24], "val_input_shape": [40, 48]}}}
    assert checkpoint_input_shape(stored) == (40, 48)
    assert checkpoint_input_shape({"config": {"dataset": {"input_shape": [24, 24]}}}) == (24, 24)


def test_eval_precision_defaults_to_the_runs_own(monkeypatch):
    from segkit import precision
    from segkit.run.evaluation import eval_precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision, "_warned_emulated", True)  # the warning has its own test
    cpu = torch.device("cpu")
    run = {"config": {"trainer": {"precision": "bf16"}}}
    assert eval_precision(None, run, cpu) == "bf16"
    assert eval_precision("fp32", run, cpu) == "fp32"  # chosen on the command line
    assert eval_precision(None, {"config": {}}, cpu) == "fp32"  # e.g. a weights file
    assert eval_precision(None, {"config": {"trainer": {"precision": "fp16"}}}, cpu) == "fp32"
    assert eval_precision("auto", run, cpu) == "fp32"
    assert eval_precision(None, {"config": {"trainer": {"precision": "auto"}}}, cpu) == "fp32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert eval_precision("auto", run, cpu) == "bf16"  # auto: resolved on the evaluating machine


def test_eval_modes_default_to_the_recipes_own():
    from omegaconf import OmegaConf

    from segkit.run.evaluation import eval_modes

    def cli(modes=None, scales=None):
        return OmegaConf.create(
            {"ckpt": "r.pt", "eval": {"modes": modes, "tta": {"scales": scales}}}
        )

    recipe = {"config": {"eval": {"modes": ["whole+flip+ms"], "tta": {"scales": [0.5, 2]}}}}
    assert eval_modes(cli(), recipe) == (["whole+flip+ms"], (0.5, 2.0))
    assert eval_modes(cli(["slide"], [1.5]), recipe) == (["slide"], (1.5,))  # the command line
    assert eval_modes(cli(), {"config": {}}) == (["whole"], (0.75, 1.0, 1.25))  # older runs
    bad = {"config": {"eval": {"modes": ["whole+flop"]}}}
    with pytest.raises(ConfigError, match=r"eval.modes in r\.pt: evaluation mode 'whole\+flop'"):
        eval_modes(cli(), bad)
    with pytest.raises(ConfigError, match=r"eval.tta.scales in r\.pt: .* found \[0\]"):
        eval_modes(cli(), {"config": {"eval": {"tta": {"scales": [0]}}}})
    with pytest.raises(ConfigError, match=r"eval.modes in r\.pt: expected a list .* found 5"):
        eval_modes(cli(), {"config": {"eval": {"modes": 5}}})
    for override, match in (
        ("eval.modes=[whole+ms+ms]", r"eval\.modes: evaluation mode 'whole\+ms\+ms'"),
        ("eval.modes=whole", r"eval\.modes=whole: expected a list .* eval\.modes=\[whole\]"),
        ("eval.tta.scales=[]", r"eval\.tta\.scales: expected a list of positive numbers"),
    ):
        with pytest.raises(ConfigError, match=match):
            check_train_config(compose_train(*TINY, override))


def test_channels_last_on_the_cpu_only_when_asked():
    from segkit.run.building import compile_and_wrap

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [precision.use_channels_last(s, cpu) for s in ("auto", True, False)] == [0, 1, 0]
    assert [precision.use_channels_last(s, cuda) for s in ("auto", True, False)] == [1, 1, 0]
    for setting, expected in (("auto", False), ("true", True)):
        cfg = compose_train(*TINY, f"trainer.channels_last={setting}")
        model = compile_and_wrap(nn.Conv2d(3, 4, 3), cfg, _cpu(), False)
        assert model.weight.is_contiguous(memory_format=torch.channels_last) == expected
    with pytest.raises(ConfigError, match="trainer.channels_last='yes'"):
        check_train_config(compose_train(*TINY, "trainer.channels_last=yes"))


def _cpu():
    from segkit import dist

    return dist.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


# --------------------------------------------------------------------------- EMA
def test_ema_update_matches_hand_computed_average():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    ema = ModelEMA(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked.fill_(5)
    ema.update(model)  # n=0: d = min(0.9, 1/10) = 0.1
    expect = 0.1 * w0 + 0.9 * (w0 + 1.0)
    assert torch.allclose(ema.module[0].weight, expect)
    assert int(ema.module[1].num_batches_tracked) == 5  # integer buffers are copied
    ema.update(model)  # n=1: d = min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.module[0].weight, d * expect + (1 - d) * (w0 + 1.0))
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="ema_decay"):
        ModelEMA(model, 1.0)


def test_ema_checkpoints_deploy_the_average_and_resume_exactly(tmp_path):
    """Also with a loss that draws from torch's generator at every step (Lovasz on a random
    sample of pixels, loss.max_pixels): the resumed run ends with the same weights."""
    ema = [
        *TINY,  # 2 epochs of 6 steps: the crash in epoch 2 resumes from epoch 1's last.pt
        "trainer.ema_decay=0.9",
        "loss=ce_lovasz",
        "loss.max_pixels=50",
        "loss._target_=tests.faults.FailingCELovasz",
    ]
    straight = tmp_path / "straight"
    train_rank(compose_train(*ema, "+loss.fail_at_step=null"), straight)
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="injected failure"):
        train_rank(compose_train(*ema, "+loss.fail_at_step=9"), crashed)
    train_rank(compose_train(*ema, "+loss.fail_at_step=null", "resume=auto"), crashed)
    a = ck.load(straight / "checkpoints" / "last.pt")
    b = ck.load(crashed / "checkpoints" / "last.pt")
    assert a["ema_updates"] == b["ema_updates"] == a["step"] == 12
    for key in ("model", "train_model"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    differ = [n for n, t in a["model"].items() if t.is_floating_point()]
    assert any(not torch.equal(a["model"][n], a["train_model"][n]) for n in differ)
    # what validation scored is the average: re-scoring "model" gives the stored mIoU
    trainer, _ = build_trainer(compose_train(*TINY), _cpu())
    trainer.bare_model.load_state_dict(a["model"])
    assert trainer.validate(1)["miou"] == pytest.approx(a["metrics"]["miou"], abs=1e-9)
    # best.safetensors (what users deploy) holds the averaged weights of best.pt
    from segkit.io.weights_file import read_weights_file

    best = ck.load(straight / "checkpoints" / "best.pt")
    weights = read_weights_file(straight / "checkpoints" / "best.safetensors")["model"]
    assert all(torch.equal(weights[n], best["model"][n]) for n in weights)


# --------------------------------------------------------------------------- time budget
def test_budget_arithmetic():
    def plan(left_after: float, epoch_s: float, val_s: float, done: int, cap: int = 50, **kw):
        kw = {"val_every": 1, "validated": False, **kw}
        return budget.plan_epochs(
            100.0, 100.0 - left_after, epoch_s, val_s, done=done, cap=cap, **kw
        )

    assert plan(90.0, 10.0, 0.0, 1) == 10  # 1 done + 9 more fit
    assert plan(90.0, 10.0, 0.0, 1, cap=5) == 5  # capped by max_epochs
    assert plan(-5.0, 10.0, 0.0, 1) == 1  # already over: stop now
    assert plan(5.0, 10.0, 0.0, 9) == 9  # the next one would overrun
    # 90 s left, epochs of 10 s, validations of 5 s, each epoch validated: the current one's
    # validation (5) + 5 x (10 + 5) = 80; 6 more would need 95
    assert plan(90.0, 10.0, 5.0, 1) == 6
    assert plan(90.0, 10.0, 5.0, 1, validated=True) == 7  # this one's is spent: 6 x 15 = 90
    # validated every 4th epoch and at the end: after epoch 4 (due, not yet run) 3 more
    # epochs need 5 (epoch 4) + 30 + 5 (epoch 7) = 40; 4 more need 5 + 40 + 5 (epoch 8) = 50
    assert plan(45.0, 10.0, 5.0, 4, val_every=4) == 7
    assert budget.validations_left(4, 4, 4, False) == 2  # epochs 4 and 8
    assert budget.validations_left(4, 5, 4, True) == 2  # epochs 8 and 9


class _Clock:
    """A fake perf_counter: each training step costs ``step_s`` seconds, nothing else does."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now


def _timed_trainer(monkeypatch, clock: _Clock, *overrides: str):
    import segkit.engine.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod.time, "perf_counter", clock)
    trainer, _ = build_trainer(compose_train(*TINY, *overrides), _cpu())
    step = trainer.train_step

    def timed_step(group):
        step(group)
        clock.now += clock.step_s

    trainer.train_step = timed_step
    return trainer


def test_max_time_plans_the_epochs_and_ends_the_schedule_on_time(monkeypatch):
    # 6 steps per epoch at 1 s: 6 s per epoch; 0.5 min = 30 s -> 1 + floor(24 / 6) = 5 epochs
    over = ["trainer.max_epochs=50", "trainer.max_time_min=0.5", "trainer.val_every=100"]
    trainer = _timed_trainer(monkeypatch, _Clock(1.0), *over, "scheduler.eta_min=0")
    state = trainer.fit()
    assert state.planned_epochs == 5 and state.epoch == 5 and state.step == 30
    assert trainer.scheduler.total_steps == 30
    assert trainer.lr == pytest.approx(0.0, abs=1e-12)  # annealed exactly at the last step
    # the first is validated to measure a validation; the last is validated
    assert [h["epoch"] for h in state.history if "miou" in h] == [1, 5]
    assert state.elapsed_s == pytest.approx(30.0)


def test_max_time_replans_when_epochs_get_slower(monkeypatch, caplog):
    clock = _Clock(1.0)
    over = ["trainer.max_epochs=50", "trainer.max_time_min=0.5", "trainer.val_every=100"]
    trainer = _timed_trainer(monkeypatch, clock, *over, "scheduler.eta_min=0")
    epoch = trainer.train_one_epoch

    def slower(e):  # after the first epoch, steps cost 2 s
        clock.step_s = 1.0 if e == 0 else 2.0
        return epoch(e)

    trainer.train_one_epoch = slower
    caplog.set_level("INFO")
    state = trainer.fit()
    # after 1 epoch (6 s): 5 planned; after 2 (18 s, 9 s each): 2 + floor(12 / 9) = 3;
    # after 3 (30 s): no time left -> 3, validated, and the schedule ended with it
    assert state.epoch == 3 and state.planned_epochs == 3 and state.step == 18
    assert [h["epoch"] for h in state.history if "miou" in h] == [1, 3]
    assert trainer.scheduler.total_steps == 18 and trainer.lr == pytest.approx(0.0, abs=1e-12)
    assert "planning 5 epochs" in caplog.text and "planning 3 epochs" in caplog.text


def _clocked(monkeypatch, step_s: float, val_s: float) -> _Clock:
    """Every Trainer made from now on runs on a fake clock: a training step costs ``step_s``
    seconds, a validation ``val_s``, nothing else any time."""
    import segkit.engine.trainer as trainer_mod

    clock = _Clock(step_s)
    monkeypatch.setattr(trainer_mod.time, "perf_counter", clock)
    step, validate = trainer_mod.Trainer.train_step, trainer_mod.Trainer.validate

    def timed_step(self, group):
        step(self, group)
        clock.now += clock.step_s

    def timed_validate(self, epoch):
        clock.now += val_s
        return validate(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", timed_step)
    monkeypatch.setattr(trainer_mod.Trainer, "validate", timed_validate)
    return clock


@pytest.mark.parametrize(
    ("val_s", "val_every", "epochs", "validated"),
    [
        (3.0, 1, 3, [1, 2, 3]),  # epochs of 6 + 3 s: 3 fit in 30 s (4 would take 36)
        (8.0, 1, 2, [1, 2]),  # validating costs more than training: 2 x (6 + 8) = 28
        (4.0, 3, 3, [1, 3]),  # every 3rd: 6 + 4 (measured) + 6 + 6 + 4 = 26; a 4th: 36
    ],
)
def test_max_time_plans_with_validation_from_the_first_epoch(
    monkeypatch, caplog, val_s, val_every, epochs, validated
):
    """With steady speeds the first plan is the final one: it counts validation from the
    start (one is measured after the first epoch) and reserves each one still due, so the
    schedule anneals over the planned epochs and the run ends within the budget."""
    _clocked(monkeypatch, 1.0, val_s)
    over = ["trainer.max_epochs=50", "trainer.max_time_min=0.5", f"trainer.val_every={val_every}"]
    trainer, _ = build_trainer(compose_train(*TINY, *over, "scheduler.eta_min=0"), _cpu())
    caplog.set_level("INFO")
    state = trainer.fit()
    assert caplog.text.count("planning") == 1, caplog.text  # never re-planned
    assert state.epoch == state.planned_epochs == epochs and state.step == 6 * epochs
    assert [h["epoch"] for h in state.history if "miou" in h] == validated
    assert state.elapsed_s <= 30.0
    assert trainer.scheduler.total_steps == state.step
    assert trainer.lr == pytest.approx(0.0, abs=1e-12)  # annealed at the last planned step


def test_resuming_a_finished_time_budget_run_changes_nothing(monkeypatch, tmp_path):
    _clocked(monkeypatch, 1.0, 1.0)
    over = ["trainer.max_epochs=50", "trainer.max_time_min=0.1", "trainer.limit_train_batches=2"]
    over += ["dataset.check=off"]  # epochs of 2 + 1 s: 2 fit in 6 s
    run = tmp_path / "run"
    train_rank(compose_train(*TINY, *over), run)
    assert json.loads((run / "result.json").read_text())["epochs"] == 2
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    train_rank(compose_train(*TINY, *over, "resume=auto"), run)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert sorted(after) == sorted(before)  # no second event file
    assert [str(p.relative_to(run)) for p in before if before[p] != after[p]] == []
